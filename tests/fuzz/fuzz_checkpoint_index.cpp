// model.safetensors.index.json on arbitrary text (io::parse_safetensors_index, the part of
// Checkpoint::open that reads the index). Accepted shard names must be plain file names.
#include <algorithm>
#include <cstdint>
#include <string>

#include <mimo/io/checkpoint.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const simdjson::padded_string text(reinterpret_cast<const char*>(data), size);
  const mimo::io::SafetensorsLimits limits{.max_tensors = 1 << 12, .max_files = 64};
  auto index = mimo::io::parse_safetensors_index(text, "model.safetensors.index.json", limits);
  if (!index) return 0;
  size_t entries = 0;
  FUZZ_CHECK(index->shards.size() <= limits.max_files);
  for (const auto& [shard, names] : index->shards) {
    FUZZ_CHECK(!shard.empty() && shard != "." && shard != "..");
    FUZZ_CHECK(shard.find('/') == std::string::npos && shard.find('\\') == std::string::npos);
    FUZZ_CHECK(std::none_of(shard.begin(), shard.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; }));
    FUZZ_CHECK(!names.empty());
    entries += names.size();
  }
  FUZZ_CHECK(entries <= limits.max_tensors);
  return 0;
}
