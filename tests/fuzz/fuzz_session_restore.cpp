// Session::restore on arbitrary bytes, into a session of a tiny synthesized model. The first byte
// chooses repairs that let the input get past the outer checks: bit 0 writes this model's
// fingerprint at its offset, bit 1 recomputes the trailing checksum (a corrupted file must be
// refused by the checksum; a hostile one can compute it, so what is behind it must be validated
// too). Checked: a refused state leaves the session exactly as it was and usable; an accepted one
// gives a session that works, saves and restores again.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "fuzz_support.hpp"
#include "session_model.hpp"

namespace {

const fuzz::TinyModel& tiny() {
  static const fuzz::TinyModel model;
  return model;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tiny();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t repairs = data[0];
  std::vector<std::byte> state(reinterpret_cast<const std::byte*>(data + 1), reinterpret_cast<const std::byte*>(data + size));
  if ((repairs & 1) && state.size() >= 28) {
    const uint64_t fingerprint = mimo::detail::model_fingerprint(tiny().model());
    std::memcpy(state.data() + 12, &fingerprint, 8);
  }
  if ((repairs & 2) && state.size() >= 8) {
    mimo::detail::RunningHash h;
    h.update(state.data(), state.size() - 8);
    const uint64_t digest = h.digest();
    std::memcpy(state.data() + state.size() - 8, &digest, 8);
  }

  auto session = tiny().session();
  const int32_t prompt[] = {1, 2, 3};
  FUZZ_CHECK(session.append(prompt).has_value());
  const std::vector<float> logits_before(session.logits().last().begin(), session.logits().last().end());

  auto restored = session.restore(state);
  if (!restored) {
    // Unchanged and usable.
    FUZZ_CHECK(session.size() == 3);
    FUZZ_CHECK(std::equal(session.tokens().begin(), session.tokens().end(), std::begin(prompt)));
    FUZZ_CHECK(session.logits().rows == 1);
    FUZZ_CHECK(std::equal(logits_before.begin(), logits_before.end(), session.logits().last().begin()));
    FUZZ_CHECK(session.append({4}).has_value());
    return 0;
  }
  const int64_t vocab = tiny().model().config().vocab_size;
  FUZZ_CHECK(session.size() >= 0 && session.size() <= session.capacity());
  for (int32_t t : session.tokens()) FUZZ_CHECK(t >= 0 && t < vocab);
  FUZZ_CHECK(session.logits().rows <= 1);
  if (session.size() < session.capacity()) FUZZ_CHECK(session.append({5}).has_value());

  std::vector<std::byte> again;
  FUZZ_CHECK(session.save(again).has_value());
  auto other = tiny().session();
  FUZZ_CHECK(other.restore(again).has_value());
  FUZZ_CHECK(other.size() == session.size());
  return 0;
}
