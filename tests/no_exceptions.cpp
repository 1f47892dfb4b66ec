// Built with -fno-exceptions, as game engines (Unreal, Godot) build: every public header must
// compile, and loading, running and failing must work without exceptions.
#include <mimo/mimo.hpp>
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
  const auto dir = std::filesystem::temp_directory_path() / ("mimo-noexc-" + std::to_string(::getpid()));
  mimo::ModelConfig c = mimo::synth::preset_tiny();
  c.vocab_size = 256;
  c.bos_token_id = 254;
  c.eos_token_id = {255};
  check(mimo::synth::write_checkpoint(dir, c).has_value(), "synth");

  auto missing = mimo::Model<mimo::Cpu>::load(dir / "absent");
  check(!missing.has_value() && missing.error().code() == mimo::Errc::io, "missing directory is an error value");

  auto model = mimo::Model<mimo::Cpu>::load(dir);
  check(model.has_value(), "load");
  if (model) {
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
  std::printf("%s\n", failures ? "no_exceptions: FAILED" : "no_exceptions: ok");
  return failures ? 1 : 0;
}
