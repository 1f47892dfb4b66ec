// The CUDA backend's host code built with -fno-exceptions, as game engines build: loading, running
// and failing work without exceptions. Without a CUDA device it reports itself skipped (77).
#include <mimo/cuda.hpp>
#include <mimo/synth.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include <unistd.h>

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#error "this test must be compiled with -fno-exceptions"
#endif

namespace {
int failures = 0;
void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}
}  // namespace

int main() {
  if (mimo::Cuda::device_count() == 0) {
    std::printf("cuda_no_exceptions: skipped: no usable CUDA device (%s)\n", mimo::Cuda::describe_devices().c_str());
    return 77;
  }
  const auto dir = std::filesystem::temp_directory_path() / ("mimo-cuda-noexc-" + std::to_string(::getpid()));
  mimo::ModelConfig c = mimo::synth::preset_tiny();
  c.vocab_size = 256;
  c.bos_token_id = 254;
  c.eos_token_id = {255};
  check(mimo::synth::write_checkpoint(dir, c).has_value(), "synth");

  auto model = mimo::Model<mimo::Cuda>::load(dir);
  check(model.has_value(), "load");
  if (model) {
    auto bad_device = model->new_session({.context = 16, .backend = {.device = 4096}});
    check(!bad_device.has_value(), "a missing device is an error value");
    auto session = model->new_session({.context = 16});
    check(session.has_value(), "session");
    if (session) {
      auto logits = session->append({1, 2, 3});
      check(logits.has_value() && std::isfinite(logits->last()[0]), "append");
      auto bad = session->append({999});
      check(!bad.has_value() && bad.error().code() == mimo::Errc::invalid_argument, "bad token is an error value");
      auto full = session->append(std::vector<int32_t>(20, 1));
      check(!full.has_value() && full.error().code() == mimo::Errc::context_full, "full context is an error value");
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::printf("%s\n", failures ? "cuda_no_exceptions: FAILED" : "cuda_no_exceptions: ok");
  return failures ? 1 : 0;
}
