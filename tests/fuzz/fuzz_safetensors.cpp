// The safetensors header parser on arbitrary bytes, as the whole file and as a prefix of a
// longer file. Whatever it accepts must describe tensors that lie inside the data section, do not
// overlap, and whose byte size matches dtype and shape.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <mimo/io/safetensors.hpp>

#include "fuzz_support.hpp"

namespace {

void check_header(const mimo::io::SafetensorsHeader& h, const std::byte* file, uint64_t available, uint64_t file_size) {
  FUZZ_CHECK(h.data_offset >= 8 && h.data_offset <= file_size);
  FUZZ_CHECK(h.data_offset + h.data_size == file_size);
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const auto& t = h.tensors[i];
    if (i > 0) FUZZ_CHECK(h.tensors[i - 1].name < t.name);
    FUZZ_CHECK(h.find(t.name) == &t);
    FUZZ_CHECK(t.begin <= t.end && t.end <= h.data_size);
    FUZZ_CHECK(t.end - t.begin == t.numel() * mimo::dtype_size(t.dtype));
    if (t.end > t.begin) ranges.emplace_back(t.begin, t.end);
    // Touch the first and last byte where the data is in memory: ASan checks the bounds.
    if (t.end > t.begin && h.data_offset + t.end <= available) {
      volatile std::byte first = file[h.data_offset + t.begin];
      volatile std::byte last = file[h.data_offset + t.end - 1];
      (void)first;
      (void)last;
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) FUZZ_CHECK(ranges[i - 1].second <= ranges[i].first);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto* file = reinterpret_cast<const std::byte*>(data);
  const mimo::io::SafetensorsLimits limits{.max_header_bytes = 1 << 20, .max_tensors = 1 << 12, .max_rank = 8};
  // The whole file in memory.
  if (auto h = mimo::io::parse_safetensors_header(file, size, size, "fuzz.safetensors", limits)) {
    check_header(*h, file, size, size);
  }
  // Only a prefix in memory, of a file that claims to be longer: nothing past `size` is read.
  const uint64_t claimed = size + (size > 0 ? data[0] : 0) * 4096ull;
  if (auto h = mimo::io::parse_safetensors_header(file, size, claimed, "fuzz.safetensors", limits)) {
    check_header(*h, file, size, claimed);
  }
  return 0;
}
