// Replays saved fuzz inputs through the fuzz harnesses themselves (tests/fuzz/fuzz_*.cpp, which
// build with any compiler): every input that once crashed or broke a promise
// (tests/fuzz/regressions/<target>-<what>) and every seed (tests/fuzz/corpus/<target>/). In the
// sanitizer build of CI this catches out-of-bounds reads and undefined behaviour too; here the
// harnesses' checks (FUZZ_CHECK) become doctest CHECKs that name the input.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#define FUZZ_CHECK(cond) CHECK_MESSAGE(static_cast<bool>(cond), #cond)

#define LLVMFuzzerTestOneInput fuzz_safetensors
#include "fuzz/fuzz_safetensors.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_config
#include "fuzz/fuzz_config.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_checkpoint_index
#include "fuzz/fuzz_checkpoint_index.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_tokenizer_json
#include "fuzz/fuzz_tokenizer_json.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_tokenizer_encode
#define LLVMFuzzerInitialize fuzz_tokenizer_encode_init
#include "fuzz/fuzz_tokenizer_encode.cpp"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize
#define LLVMFuzzerTestOneInput fuzz_tokenizer_decode
#define LLVMFuzzerInitialize fuzz_tokenizer_decode_init
#include "fuzz/fuzz_tokenizer_decode.cpp"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize
#define LLVMFuzzerTestOneInput fuzz_chat
#define LLVMFuzzerInitialize fuzz_chat_init
#include "fuzz/fuzz_chat.cpp"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize
#define LLVMFuzzerTestOneInput fuzz_session_restore
#define LLVMFuzzerInitialize fuzz_session_restore_init
#include "fuzz/fuzz_session_restore.cpp"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize
#define LLVMFuzzerTestOneInput fuzz_sampler
#include "fuzz/fuzz_sampler.cpp"
#undef LLVMFuzzerTestOneInput

namespace {

using Harness = int (*)(const uint8_t*, size_t);

struct Target {
  const char* name;  // the fuzz target without "fuzz_": names the corpus directory and the prefix of regressions
  Harness run;
};

const Target kTargets[] = {
    {"safetensors", fuzz_safetensors},         {"config", fuzz_config},
    {"checkpoint_index", fuzz_checkpoint_index}, {"tokenizer_json", fuzz_tokenizer_json},
    {"tokenizer_encode", fuzz_tokenizer_encode}, {"tokenizer_decode", fuzz_tokenizer_decode},
    {"chat", fuzz_chat},                       {"session_restore", fuzz_session_restore},
    {"sampler", fuzz_sampler},
};

const std::filesystem::path kFuzzDir = std::filesystem::path(MIMO_SOURCE_DIR) / "tests" / "fuzz";

std::vector<uint8_t> read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

size_t replay(const Target& target, const std::filesystem::path& file) {
  INFO("input: ", file.string());
  const std::vector<uint8_t> bytes = read_all(file);
  CHECK(target.run(bytes.data(), bytes.size()) == 0);
  return 1;
}

}  // namespace

TEST_CASE("fuzz regressions: every input that once failed passes its harness") {
  size_t count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kFuzzDir / "regressions")) {
    if (!entry.is_regular_file() || entry.path().filename() == "README.md") continue;
    const std::string name = entry.path().filename().string();
    const Target* target = nullptr;
    for (const Target& t : kTargets) {
      if (name.starts_with(std::string(t.name) + "-")) target = &t;
    }
    REQUIRE_MESSAGE(target != nullptr, "no fuzz target for regression input ", name, " (name it <target>-<what>)");
    count += replay(*target, entry.path());
  }
  MESSAGE(count, " regression inputs replayed");
  CHECK(count > 0);
}

TEST_CASE("fuzz seeds: every seed of every target passes its harness") {
  for (const Target& target : kTargets) {
    size_t count = 0;
    for (const auto& entry : std::filesystem::directory_iterator(kFuzzDir / "corpus" / target.name)) {
      if (entry.is_regular_file()) count += replay(target, entry.path());
    }
    CHECK_MESSAGE(count > 0, "no seeds for ", target.name);
  }
}
