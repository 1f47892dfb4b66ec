// Session operations: copy, truncate, save and restore give exactly the logits of a fresh session
// fed the same tokens in the same calls; a corrupted, truncated or foreign state is refused and
// leaves the session usable.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <numeric>
#include <thread>
#include <vector>

#include <mimo/mimo.hpp>

#include "support.hpp"

namespace {

struct Setup {
  test::TempDir dir;
  mimo::ModelConfig config = test::small_config(400, 64, 2, 4, 2, 16, 96, 1);
  mimo::Model<mimo::Cpu> model = load();
  std::vector<int32_t> prefix = test::random_tokens(12, 400, 1);
  std::vector<int32_t> rest = test::random_tokens(7, 400, 2);

  mimo::Model<mimo::Cpu> load() {
    test::synthesize(dir.path(), config, 3);
    auto m = mimo::Model<mimo::Cpu>::load(dir.path());
    REQUIRE(m.has_value());
    return *m;
  }
  mimo::Session<mimo::Cpu> session(int64_t context = 64) {
    auto s = model.new_session({.context = context, .backend = {.threads = 2}});
    REQUIRE(s.has_value());
    return std::move(*s);
  }
  // Logits of every row of `rest` appended to a session that holds `prefix`.
  static std::vector<float> continue_with(mimo::Session<mimo::Cpu>& s, const std::vector<int32_t>& rest) {
    auto l = s.append(rest, {.logits = mimo::OutputRows::all});
    REQUIRE(l.has_value());
    return std::vector<float>(l->data, l->data + l->rows * l->vocab);
  }
};

}  // namespace

TEST_CASE("session: save and restore continue exactly like the original") {
  Setup t;
  auto a = t.session();
  REQUIRE(a.append(t.prefix, {.hidden = mimo::OutputRows::all}).has_value());
  const std::vector<float> last(a.logits().last().begin(), a.logits().last().end());
  std::vector<std::byte> state;
  REQUIRE(a.save(state).has_value());

  auto b = t.session();
  auto r = b.restore(state);
  REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().describe()));
  CHECK(b.size() == a.size());
  CHECK(std::equal(b.tokens().begin(), b.tokens().end(), t.prefix.begin()));
  // The last logits come back, so sampling can continue at once.
  REQUIRE(b.logits().rows == 1);
  CHECK(std::equal(last.begin(), last.end(), b.logits().last().begin()));
  REQUIRE(b.hidden().count == 1);
  CHECK(Setup::continue_with(b, t.rest) == Setup::continue_with(a, t.rest));

  // Through a file, into a session of a different (sufficient) context.
  test::TempDir files;
  auto c = t.session();
  REQUIRE(c.append(t.prefix).has_value());
  REQUIRE(c.save_file(files / "state.bin").has_value());
  auto d = t.session(20);
  REQUIRE(d.restore_file(files / "state.bin").has_value());
  CHECK(Setup::continue_with(d, t.rest) == Setup::continue_with(c, t.rest));
}

TEST_CASE("session: truncate keeps the outputs of the positions it keeps; the last row's selections are saved") {
  Setup t;
  const int32_t count = 7;
  auto a = t.session();
  auto all = a.append(t.prefix, {.logits = mimo::OutputRows::all, .hidden = mimo::OutputRows::all,
                                  .argmax = mimo::OutputRows::all, .top = mimo::OutputRows::all, .top_count = count});
  REQUIRE(all.has_value());
  const std::vector<float> logits(all->data, all->data + all->rows * all->vocab);
  const std::vector<int32_t> argmax(all->argmax.begin(), all->argmax.end());
  const std::vector<int32_t> top_ids(all->top_ids.begin(), all->top_ids.end());
  const std::vector<float> top_logits(all->top_logits.begin(), all->top_logits.end());
  const int64_t V = all->vocab;
  // Keeping 9 of the 12 positions keeps the rows of positions 0..8: the last one is position 8's,
  // the row that predicts the token at 9 (what continuing from here needs).
  REQUIRE(a.truncate(9).has_value());
  const mimo::Logits kept = a.logits();
  REQUIRE(kept.rows == 9);
  CHECK(std::equal(kept.last().begin(), kept.last().end(), logits.begin() + 8 * V));
  CHECK(std::vector<int32_t>(kept.argmax.begin(), kept.argmax.end()) == std::vector<int32_t>(argmax.begin(), argmax.begin() + 9));
  REQUIRE(kept.top_rows() == 9);
  CHECK(std::equal(kept.top_ids_of(8).begin(), kept.top_ids_of(8).end(), top_ids.begin() + 8 * count));
  CHECK(a.hidden().count == 9);
  CHECK(a.hidden_position() == 0);

  // Saved and restored: the last row's logits, argmax id and top selection come back.
  std::vector<std::byte> state;
  REQUIRE(a.save(state).has_value());
  auto b = t.session();
  REQUIRE(b.restore(state).has_value());
  const mimo::Logits restored = b.logits();
  REQUIRE(restored.rows == 1);
  CHECK(std::equal(restored.last().begin(), restored.last().end(), logits.begin() + 8 * V));
  CHECK(std::vector<int32_t>(restored.argmax.begin(), restored.argmax.end()) == std::vector<int32_t>{argmax[8]});
  REQUIRE(restored.top_rows() == 1);
  CHECK(std::equal(restored.top_ids_of(0).begin(), restored.top_ids_of(0).end(), top_ids.begin() + 8 * count));
  CHECK(std::equal(restored.top_logits_of(0).begin(), restored.top_logits_of(0).end(), top_logits.begin() + 8 * count));
  CHECK(Setup::continue_with(b, t.rest) == Setup::continue_with(a, t.rest));

  // A state of version 1 (before the selections were saved) is still read: the same state without
  // that section, its version and checksum rewritten.
  auto c = t.session();
  REQUIRE(c.append(t.prefix, {.hidden = mimo::OutputRows::all}).has_value());
  REQUIRE(c.save(state).has_value());
  // The tail: u64 argmax rows (0), u64 top count (0), u64 MTP steps, a u64 entry count per step
  // (0: no drafting yet), u64 checksum.
  const auto zero = [&](size_t from, size_t n) {
    return std::all_of(state.begin() + static_cast<std::ptrdiff_t>(from), state.begin() + static_cast<std::ptrdiff_t>(from + n),
                       [](std::byte x) { return x == std::byte{0}; });
  };
  size_t section = 0;
  for (uint64_t steps = 0; steps < 8 && section == 0; ++steps) {
    const size_t at = state.size() - 8 - 8 * (steps + 1);
    uint64_t stored = 0;
    std::memcpy(&stored, state.data() + at, 8);
    if (stored == steps && zero(at + 8, 8 * steps) && zero(at - 16, 16)) section = at - 16;
  }
  REQUIRE(section > 0);
  std::vector<std::byte> v1(state.begin(), state.begin() + static_cast<std::ptrdiff_t>(section));
  v1.insert(v1.end(), state.begin() + static_cast<std::ptrdiff_t>(section + 16), state.end() - 8);
  const uint32_t version = 1;
  std::memcpy(v1.data() + 8, &version, 4);
  mimo::detail::RunningHash h;
  h.update(v1.data(), v1.size());
  const uint64_t digest = h.digest();
  v1.resize(v1.size() + 8);
  std::memcpy(v1.data() + v1.size() - 8, &digest, 8);
  auto d = t.session();
  auto r = d.restore(v1);
  REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().describe()));
  CHECK(d.logits().rows == 1);
  CHECK(d.logits().argmax.empty());
  CHECK(Setup::continue_with(d, t.rest) == Setup::continue_with(c, t.rest));

  // A failed (here cancelled) append changes no token and drops the last pass's outputs, which it
  // had begun to overwrite: no hidden row of positions it did not keep is left (or saved).
  {
    auto f = t.session();
    REQUIRE(f.append(t.prefix, {.hidden = mimo::OutputRows::all}).has_value());
    std::atomic<bool> cancel{true};
    auto cancelled = f.append(t.rest, {.hidden = mimo::OutputRows::all, .cancel = &cancel});
    REQUIRE_FALSE(cancelled.has_value());
    CHECK(cancelled.error().code() == mimo::Errc::cancelled);
    CHECK(f.size() == static_cast<int64_t>(t.prefix.size()));
    CHECK(f.hidden().count == 0);
    CHECK(f.logits().rows == 0);
    REQUIRE(f.save(state).has_value());
    auto g = t.session();
    REQUIRE(g.restore(state).has_value());
    CHECK(g.hidden().count == 0);
    CHECK(Setup::continue_with(g, t.rest) == Setup::continue_with(f, t.rest));
  }

  // A pass that began after the position kept leaves no rows behind.
  auto e = t.session();
  REQUIRE(e.append(t.prefix).has_value());
  REQUIRE(e.append(t.rest, {.logits = mimo::OutputRows::all, .argmax = mimo::OutputRows::last}).has_value());
  REQUIRE(e.truncate(static_cast<int64_t>(t.prefix.size())).has_value());
  CHECK(e.logits().rows == 0);
  CHECK(e.logits().argmax.empty());
  CHECK(e.hidden().count == 0);
}

TEST_CASE("session: copy and truncate equal a fresh session fed the same tokens in the same calls") {
  Setup t;
  auto fresh = t.session();
  REQUIRE(fresh.append(t.prefix).has_value());
  const auto expected = Setup::continue_with(fresh, t.rest);

  auto a = t.session();
  REQUIRE(a.append(t.prefix).has_value());
  auto b = a.copy();
  REQUIRE(b.has_value());
  CHECK(Setup::continue_with(*b, t.rest) == expected);
  // The original is unaffected by its copy.
  CHECK(Setup::continue_with(a, t.rest) == expected);

  // Feed junk, roll it back, and continue: same logits.
  auto c = t.session();
  REQUIRE(c.append(t.prefix).has_value());
  REQUIRE(c.append(test::random_tokens(9, 400, 77)).has_value());
  REQUIRE(c.truncate(static_cast<int64_t>(t.prefix.size())).has_value());
  CHECK(Setup::continue_with(c, t.rest) == expected);
}

TEST_CASE("session: MTP caches survive save/restore and copy") {
  Setup t;
  auto a = t.session();
  REQUIRE(a.append(t.prefix, {.hidden = mimo::OutputRows::all}).has_value());
  std::vector<int32_t> rows(t.prefix.size() - 1);
  std::iota(rows.begin(), rows.end(), 0);
  std::vector<int64_t> pos(rows.begin(), rows.end());
  std::vector<int32_t> next(t.prefix.begin() + 1, t.prefix.end());
  REQUIRE(a.mtp_forward({.step = 0, .source_rows = rows, .tokens = next, .positions = pos}).has_value());
  std::vector<std::byte> state;
  REQUIRE(a.save(state).has_value());
  auto b = t.session();
  REQUIRE(b.restore(state).has_value());
  CHECK(b.mtp_size(0) == a.mtp_size(0));
  auto c = a.copy();
  REQUIRE(c.has_value());
  // One more MTP row at the next position gives the same logits in all three.
  REQUIRE(a.append({t.rest[0]}).has_value());
  REQUIRE(b.append({t.rest[0]}).has_value());
  REQUIRE(c->append({t.rest[0]}).has_value());
  const int32_t row0[] = {0};
  const int32_t tok[] = {t.rest[1]};
  const int64_t p[] = {static_cast<int64_t>(t.prefix.size())};
  std::vector<std::vector<float>> out;
  for (auto* s : {&a, &b, &*c}) {
    auto l = s->mtp_forward({.step = 0, .source_rows = row0, .tokens = tok, .positions = p});
    REQUIRE(l.has_value());
    out.emplace_back(l->last().begin(), l->last().end());
  }
  CHECK(out[0] == out[1]);
  CHECK(out[0] == out[2]);
}

TEST_CASE("session: corrupted, truncated or foreign states are refused and the session stays usable") {
  Setup t;
  auto a = t.session();
  REQUIRE(a.append(t.prefix).has_value());
  std::vector<std::byte> state;
  REQUIRE(a.save(state).has_value());

  auto target = t.session();
  REQUIRE(target.append({5, 6, 7}).has_value());
  const std::vector<float> before(target.logits().last().begin(), target.logits().last().end());
  auto unchanged = [&] {
    CHECK(target.size() == 3);
    CHECK(std::equal(before.begin(), before.end(), target.logits().last().begin()));
  };

  for (size_t at : {size_t{0}, size_t{9}, size_t{30}, state.size() / 2, state.size() - 1}) {
    auto bad = state;
    bad[at] = static_cast<std::byte>(static_cast<unsigned char>(bad[at]) ^ 0x40);
    auto r = target.restore(bad);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == mimo::Errc::corrupt_state);
    unchanged();
  }
  for (size_t keep : {size_t{0}, size_t{5}, size_t{40}, state.size() - 9, state.size() - 1}) {
    auto r = target.restore(std::span<const std::byte>(state).first(keep));
    REQUIRE_FALSE(r.has_value());
    unchanged();
  }
  // A state of another model (same shape, other weights).
  {
    test::TempDir other;
    test::synthesize(other.path(), t.config, 99);
    auto m = mimo::Model<mimo::Cpu>::load(other.path());
    REQUIRE(m.has_value());
    auto s = m->new_session({.context = 64});
    REQUIRE(s.has_value());
    auto r = s->restore(state);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message().find("different model") != std::string::npos);
  }
  // Too long for the target's context.
  auto small = t.session(8);
  auto r = small.restore(state);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code() == mimo::Errc::context_full);
  CHECK_FALSE(small.restore_file(t.dir / "missing.bin").has_value());
  // And the target still works.
  REQUIRE(target.append({8}).has_value());
  CHECK(target.size() == 4);
}

TEST_CASE("session: every KV cache type saves, restores, copies and truncates exactly; other formats are refused") {
  Setup t;
  using mimo::cpu::KvType;
  auto session_of = [&](KvType type) {
    auto s = t.model.new_session({.context = 64, .backend = {.threads = 2, .kv_cache = type}});
    REQUIRE(s.has_value());
    return std::move(*s);
  };
  std::vector<std::vector<std::byte>> states;
  for (KvType type : {KvType::f32, KvType::f16, KvType::bf16, KvType::i8}) {
    CAPTURE(mimo::cpu::to_string(type));
    auto fresh = session_of(type);
    REQUIRE(fresh.append(t.prefix).has_value());
    const auto expected = Setup::continue_with(fresh, t.rest);

    auto a = session_of(type);
    REQUIRE(a.append(t.prefix).has_value());
    std::vector<std::byte> state;
    REQUIRE(a.save(state).has_value());
    auto b = session_of(type);
    REQUIRE(b.restore(state).has_value());
    CHECK(Setup::continue_with(b, t.rest) == expected);
    auto c = a.copy();
    REQUIRE(c.has_value());
    CHECK(Setup::continue_with(*c, t.rest) == expected);
    // Junk appended and rolled back leaves stale entries past the length; they are ignored.
    REQUIRE(a.append(test::random_tokens(9, 400, 77)).has_value());
    REQUIRE(a.truncate(static_cast<int64_t>(t.prefix.size())).has_value());
    CHECK(Setup::continue_with(a, t.rest) == expected);
    states.push_back(std::move(state));
  }
  // A state restores only into a session of the same KV type.
  for (size_t i = 0; i < states.size(); ++i) {
    for (size_t j = 0; j < states.size(); ++j) {
      if (i == j) continue;
      auto s = session_of(static_cast<KvType>(j + 1));
      auto r = s.restore(states[i]);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code() == mimo::Errc::corrupt_state);
      CHECK(r.error().message().find("KV cache format") != std::string::npos);
    }
  }
  // The saved KV part is half the f32 size in f16/bf16, about a quarter in i8.
  CHECK(states[1].size() < states[0].size());
  CHECK(states[1].size() == states[2].size());
  CHECK(states[3].size() < states[1].size());
}

TEST_CASE("session: a loaded model with live sessions uses no CPU while idle") {
  // Idle workers sleep on a condition variable instead of spinning, so a game keeps its frame
  // time while the model waits. Process CPU time over 2 s of idleness, after the pools of two
  // sessions (4 workers) have run: under 1% of one core (20 ms); spinning would use 100-400%.
  Setup t;
  auto a = t.session();
  auto b = t.session();
  REQUIRE(a.append(t.prefix).has_value());
  REQUIRE(b.append(t.prefix).has_value());
  auto cpu_seconds = [] {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
  const double before = cpu_seconds();
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double used = cpu_seconds() - before;
  MESSAGE("idle: ", 1e3 * used, " ms of CPU over ", wall, " s (", 100.0 * used / wall, "%)");
  CHECK(used < 0.01 * wall);
  // And the sessions still work afterwards.
  CHECK(a.append(t.rest).has_value());
}
