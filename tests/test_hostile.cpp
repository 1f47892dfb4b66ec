// Crafted hostile files: each must give an error value, quickly and with bounded memory. Every
// case runs under a Budget that measures wall time and the growth of the process's peak resident
// memory (getrusage ru_maxrss); the bounds are generous (seconds, tens of MiB) so that a slow or
// instrumented build never fails them by chance, while a parser that believed a size of 2^63,
// read a gigabyte or allocated per declared entry would exceed them by orders of magnitude.
// Big files are sparse (ftruncate): they cost no disk and no memory unless something reads them.
#include <doctest/doctest.h>

#include <sys/mman.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <mimo/mimo.hpp>
#include <mimo/tokenizer.hpp>

#include "fuzz/seed_formats.hpp"
#include "support.hpp"

namespace {

constexpr uint64_t kMiB = 1ull << 20;
// AddressSanitizer keeps freed memory in a quarantine and maps shadow memory: its peak-RSS figures
// say nothing about the library, so memory budgets are not checked under it (time budgets are).
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif
constexpr uint64_t kGiB = 1ull << 30;

uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;  // Linux reports KiB
}

// Wall time and peak-RSS growth of one hostile case.
class Budget {
 public:
  Budget(double seconds, uint64_t bytes) : seconds_(seconds), bytes_(bytes), rss0_(peak_rss_bytes()) {}
  ~Budget() {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const uint64_t grown = peak_rss_bytes() - rss0_;
    CHECK_MESSAGE(s < seconds_, "took ", s, " s, budget ", seconds_, " s");
    if (!kSanitized) {
      CHECK_MESSAGE(grown < bytes_, "peak resident memory grew by ", grown / kMiB, " MiB, budget ", bytes_ / kMiB, " MiB");
    }
  }
  Budget(const Budget&) = delete;
  Budget& operator=(const Budget&) = delete;

 private:
  double seconds_;
  uint64_t bytes_;
  uint64_t rss0_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

template <class T>
void expect_error(const mimo::Expected<T>& r, mimo::Errc code, std::initializer_list<std::string> needles) {
  REQUIRE_FALSE(r.has_value());
  const std::string& msg = r.error().message();
  CHECK_MESSAGE(r.error().code() == code, "code ", mimo::to_string(r.error().code()), ": ", msg);
  for (const auto& n : needles) CHECK_MESSAGE(msg.find(n) != std::string::npos, "message: ", msg, " lacks: ", n);
}

mimo::Expected<mimo::io::SafetensorsHeader> parse(const std::string& file, const mimo::io::SafetensorsLimits& limits = {}) {
  return mimo::io::parse_safetensors_header(reinterpret_cast<const std::byte*>(file.data()), file.size(), file.size(),
                                            "hostile.safetensors", limits);
}

// A file of `size` bytes that starts with `head` and is a hole after it (no disk, no memory).
void write_sparse(const std::filesystem::path& path, const std::string& head, uint64_t size) {
  test::write_text(path, head);
  std::filesystem::resize_file(path, size);
  REQUIRE(std::filesystem::file_size(path) == size);
}

std::string tensor_entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t begin,
                         uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// A checkpoint directory with a valid config.json for the tiny test model.
void write_config(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  test::write_text(dir / "config.json", test::small_config(64, 32, 1, 2, 1, 16, 48, 0).to_json());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// safetensors

TEST_CASE("hostile: a safetensors header length of 2^63 (and 2^64-1) is refused before any allocation") {
  for (uint64_t declared : {uint64_t{1} << 63, UINT64_MAX, (uint64_t{1} << 63) + 8}) {
    Budget budget(1.0, 16 * kMiB);
    expect_error(parse(seeds::safetensors_file("{}", 0, declared)), mimo::Errc::parse, {"header length", "exceeds the limit"});
  }
  // The same through the mapped-file loader: a 16-byte file that claims an 8 EiB header.
  test::TempDir dir;
  test::write_text(dir / "model.safetensors", seeds::safetensors_file("{}      ", 0, 1ull << 63));
  Budget budget(1.0, 16 * kMiB);
  expect_error(mimo::io::SafetensorsFile::open(dir / "model.safetensors"), mimo::Errc::parse,
               {"model.safetensors", "header length 9223372036854775808"});
}

TEST_CASE("hostile: 10^9 tensors declared") {
  // A file really large enough to hold a header that lists 10^9 tensors (~64 GB, sparse): its
  // header length is refused by the 16 MiB header limit before a byte of it is read.
  test::TempDir dir;
  const uint64_t header_len = 64'000'000'000ull;
  write_sparse(dir / "model.safetensors", seeds::safetensors_file("{\"t0\":", 0, header_len), header_len + 8);
  {
    Budget budget(1.0, 16 * kMiB);
    expect_error(mimo::io::SafetensorsFile::open(dir / "model.safetensors"), mimo::Errc::parse,
                 {"header length 64000000000", "exceeds the limit of 16777216"});
  }
  // Within the header limit, the tensor-count limit stops the parser while it counts, before it
  // stores the entry past the limit (shown with 20,000 entries and a limit of 1,000).
  std::string many = "{";
  for (int i = 0; i < 20000; ++i) {
    many += (i ? "," : "") + tensor_entry("t" + std::to_string(i), "U8", "[1]", static_cast<uint64_t>(i), static_cast<uint64_t>(i) + 1);
  }
  many += "}";
  {
    Budget budget(2.0, 32 * kMiB);
    expect_error(parse(seeds::safetensors_file(many, 20000), {.max_tensors = 1000}), mimo::Errc::parse, {"more than 1000 tensors"});
  }
  // An index whose weight_map lists 20,000 tensors (limit lowered to 1,000), or names 100 shard
  // files (limit lowered to 10): refused from the index alone, before any shard is opened (none
  // of them exists, so reaching them would give another error).
  std::string weight_map, shards;
  for (int i = 0; i < 20000; ++i) weight_map += (i ? "," : "") + std::string("\"t") + std::to_string(i) + "\":\"one.safetensors\"";
  for (int i = 0; i < 100; ++i) shards += (i ? "," : "") + std::string("\"t") + std::to_string(i) + "\":\"s" + std::to_string(i) + "\"";
  write_config(dir.path());
  test::write_text(dir / "model.safetensors.index.json", "{\"weight_map\":{" + weight_map + "}}");
  {
    Budget budget(2.0, 32 * kMiB);
    expect_error(mimo::Checkpoint::open(dir.path(), {.max_tensors = 1000}), mimo::Errc::invalid_checkpoint,
                 {"model.safetensors.index.json", "weight_map has more than 1000 entries"});
  }
  test::write_text(dir / "model.safetensors.index.json", "{\"weight_map\":{" + shards + "}}");
  {
    Budget budget(2.0, 32 * kMiB);
    expect_error(mimo::Checkpoint::open(dir.path(), {.max_files = 10}), mimo::Errc::invalid_checkpoint,
                 {"model.safetensors.index.json", "more than 10 shard files"});
  }
}

TEST_CASE("hostile: the largest header the default limits accept costs bounded memory") {
  // Just under 16 MiB of the densest JSON there is ([1,1,1,...]): the parse itself takes about 13
  // bytes per byte of header, and then the entry is refused. (At the reference implementation's
  // 100 MB limit this costs 1.2 GiB, which is why the default limit is lower.)
  std::string header = "{\"a\":[";
  header.reserve(16 * kMiB);
  while (header.size() < 16 * kMiB - 16) header += "1,";
  header += "1]}";
  const std::string file = seeds::safetensors_file(header, 0);
  header.clear();
  header.shrink_to_fit();
  Budget budget(30.0, 320 * kMiB);
  expect_error(parse(file), mimo::Errc::parse, {"tensor 'a'", "entry is not an object"});
}

TEST_CASE("hostile: a tensor whose shape product overflows 64 bits") {
  Budget budget(1.0, 16 * kMiB);
  // 2^32 * 2^32 * 2 elements: the element count wraps.
  expect_error(parse(seeds::safetensors_file("{" + tensor_entry("w", "F32", "[4294967296,4294967296,2]", 0, 0) + "}", 0)),
               mimo::Errc::parse, {"'w'", "element count of shape overflows 64 bits"});
  // 2^33 * 2^31 U8 elements = 2^64, which wraps to exactly 0 bytes: a naive product would accept
  // the empty data range [0, 0].
  expect_error(parse(seeds::safetensors_file("{" + tensor_entry("w", "U8", "[8589934592,2147483648]", 0, 0) + "}", 0)),
               mimo::Errc::parse, {"'w'", "overflows 64 bits"});
  // 2^62 elements fit, 2^62 * 8 bytes do not.
  expect_error(parse(seeds::safetensors_file("{" + tensor_entry("w", "F64", "[4611686018427387904]", 0, 8) + "}", 8)),
               mimo::Errc::parse, {"'w'", "byte size of shape overflows 64 bits"});
  // A dimension of 2^63 or more, or negative.
  expect_error(parse(seeds::safetensors_file("{" + tensor_entry("w", "F32", "[9223372036854775808]", 0, 0) + "}", 0)),
               mimo::Errc::parse, {"'w'", "non-negative integers"});
  expect_error(parse(seeds::safetensors_file("{" + tensor_entry("w", "F32", "[-1,-4]", 0, 16) + "}", 16)),
               mimo::Errc::parse, {"'w'", "non-negative integers"});
}

TEST_CASE("hostile: data offsets past the end of the file") {
  Budget budget(1.0, 16 * kMiB);
  expect_error(parse(seeds::safetensors_file("{" + tensor_entry("w", "F32", "[4]", 0, 16) + "}", 8)), mimo::Errc::parse,
               {"'w'", "past the end of the data (8 bytes)"});
  // Offsets near 2^64 whose difference is right: the end is checked against the file, not just
  // against the size the shape needs.
  const uint64_t far = UINT64_MAX - 16;
  expect_error(parse(seeds::safetensors_file("{" + tensor_entry("w", "F32", "[4]", far, far + 16) + "}", 16)),
               mimo::Errc::parse, {"'w'", "past the end"});
  expect_error(parse(seeds::safetensors_file("{" + tensor_entry("w", "F32", "[4]", 18446744073709551615ull, 15) + "}", 16)),
               mimo::Errc::parse, {"'w'", "reversed"});
  // Offsets beyond 2^64 are not numbers the parser accepts.
  expect_error(parse(seeds::safetensors_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551616]}})", 16)),
               mimo::Errc::parse, {"hostile.safetensors", "invalid JSON"});

  // A shard cut short after its header was written: the checkpoint refuses it at open, naming
  // the file and the tensor, instead of faulting when the weights are read.
  test::TempDir dir;
  const mimo::ModelConfig c = test::small_config(64, 32, 1, 2, 1, 16, 48, 0);
  test::synthesize(dir.path(), c, 1);
  const auto shard = dir / "model.safetensors";
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) - 100);
  auto ck = mimo::Checkpoint::open(dir.path());
  REQUIRE_FALSE(ck.has_value());
  CHECK(ck.error().message().find("model.safetensors") != std::string::npos);
  CHECK(ck.error().message().find("past the end of the data") != std::string::npos);
}

TEST_CASE("hostile: a file that shrinks after it was mapped is refused by the loader, not a SIGBUS") {
  test::TempDir dir;
  test::synthesize(dir.path(), test::small_config(64, 32, 1, 2, 1, 16, 48, 0), 1);
  auto ck = mimo::Checkpoint::open(dir.path());
  REQUIRE(ck.has_value());
  // Another process truncates the shard between open and preload.
  std::filesystem::resize_file(dir / "model.safetensors", 4096);
  auto st = ck->preload(false, [](uint64_t, uint64_t) { return true; });
  REQUIRE_FALSE(st.has_value());
  CHECK(st.error().code() == mimo::Errc::io);
  CHECK(st.error().message().find("shrank") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json

TEST_CASE("hostile: a tokenizer.json with a merge referring to unknown tokens") {
  REQUIRE(mimo::Tokenizer::from_json(seeds::small_tokenizer_json(false)).has_value());
  Budget budget(1.0, 16 * kMiB);
  // The left, the right or the merged token is missing from the vocabulary.
  expect_error(mimo::Tokenizer::from_json(seeds::small_tokenizer_json(false, R"(["NOT-A-TOKEN","h"])")),
               mimo::Errc::invalid_checkpoint, {"tokenizer.json.model.merges[5]", "'NOT-A-TOKEN'", "not in the vocabulary"});
  expect_error(mimo::Tokenizer::from_json(seeds::small_tokenizer_json(false, R"(["h","\u0000"])")),
               mimo::Errc::invalid_checkpoint, {"merges[5]", "not in the vocabulary"});
  expect_error(mimo::Tokenizer::from_json(seeds::small_tokenizer_json(false, R"(["w","o"])")),
               mimo::Errc::invalid_checkpoint, {"merges[5]", "'wo'", "not in the vocabulary"});
  expect_error(mimo::Tokenizer::from_json(seeds::small_tokenizer_json(true, R"("x y z")")),
               mimo::Errc::invalid_checkpoint, {"merges[5]", "expected \"left right\""});
  expect_error(mimo::Tokenizer::from_json(seeds::small_tokenizer_json(false, R"(["h"])")),
               mimo::Errc::invalid_checkpoint, {"merges[5]", "two strings"});
}

TEST_CASE("hostile: a tokenizer.json padded with tens of megabytes of other fields") {
  // Only model.vocab and model.merges are read on demand; the other fields are parsed into a DOM
  // (about 13 bytes per byte), so their total is limited (a 150 MB field cost 2.2 GiB before).
  std::string junk = "\"junk\":[";
  junk.reserve(24 * kMiB);
  while (junk.size() < 24 * kMiB) junk += "1,";
  junk += "1],";
  std::string json = seeds::small_tokenizer_json(false);
  json.insert(1, junk);
  junk.clear();
  junk.shrink_to_fit();
  // The copy of the input and simdjson's structural index (4 bytes per input byte) remain.
  Budget budget(30.0, 200 * kMiB);
  expect_error(mimo::Tokenizer::from_json(json), mimo::Errc::out_of_memory,
               {"tokenizer.json.junk", "fields other than model.vocab and model.merges exceed"});
}

TEST_CASE("hostile: token ids and counts a tokenizer.json cannot have") {
  Budget budget(2.0, 64 * kMiB);
  std::string json = seeds::small_tokenizer_json(false);
  // An added token with an id of 2^31, one past the id limit, or a negative one.
  const std::string past_limit = std::to_string(mimo::TokenizerLimits::max_token_id + 1);
  for (const std::string& id : {std::string("2147483648"), std::string("-1"), past_limit}) {
    std::string bad = json;
    bad.replace(bad.find("\"id\":261"), 8, "\"id\":" + id);
    expect_error(mimo::Tokenizer::from_json(bad), mimo::Errc::invalid_checkpoint, {"added_tokens[0]", "'id'"});
  }
  // A vocabulary id past the limit.
  std::string bad = json;
  bad.replace(bad.find("\"he\":256"), 8, "\"he\":99999999");
  expect_error(mimo::Tokenizer::from_json(bad), mimo::Errc::invalid_checkpoint,
               {"vocab", "token 'he'", "expected an id in [0, " + std::to_string(mimo::TokenizerLimits::max_token_id) + "]"});
}

// ---------------------------------------------------------------------------------------------
// A 1 GB JSON string

TEST_CASE("hostile: a 1 GB JSON file is refused by its size before it is read") {
  test::TempDir dir;
  const uint64_t size = kGiB + 17;
  const std::string head = "{\"vocab_size\": \"";  // the start of a string that goes on for a gigabyte
  write_sparse(dir / "tokenizer.json", head, size);
  write_sparse(dir / "config.json", head, size);
  write_sparse(dir / "model.safetensors.index.json", head, size);
  write_sparse(dir / "model.safetensors", seeds::safetensors_file(R"({"__metadata__":{"x":")", 0, size - 8), size);
  Budget budget(2.0, 16 * kMiB);
  expect_error(mimo::Tokenizer::load(dir / "tokenizer.json"), mimo::Errc::out_of_memory,
               {"tokenizer.json", "1073741841 bytes", "more than the limit"});
  expect_error(mimo::ModelConfig::load(dir / "config.json"), mimo::Errc::out_of_memory, {"config.json", "more than the limit"});
  expect_error(mimo::io::SafetensorsFile::open(dir / "model.safetensors"), mimo::Errc::parse,
               {"model.safetensors", "exceeds the limit"});
  test::write_text(dir / "config.json", test::small_config(64, 32, 1, 2, 1, 16, 48, 0).to_json());
  expect_error(mimo::Checkpoint::open(dir.path()), mimo::Errc::out_of_memory,
               {"model.safetensors.index.json", "more than the limit"});
}

TEST_CASE("hostile: a 1 GB string in memory is refused by its length before it is copied") {
  // A gigabyte of address space that is never touched (an anonymous mapping costs nothing until
  // a page is read): from_json and encode must refuse it by its length alone.
  const size_t size = static_cast<size_t>(kGiB) + 1;
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  REQUIRE(p != MAP_FAILED);
  const std::string_view huge(static_cast<const char*>(p), size);
  {
    Budget budget(1.0, 16 * kMiB);
    expect_error(mimo::Tokenizer::from_json(huge), mimo::Errc::out_of_memory, {"larger than"});
    auto tok = mimo::Tokenizer::from_json(seeds::small_tokenizer_json(false));
    REQUIRE(tok.has_value());
    expect_error(tok->encode(huge), mimo::Errc::invalid_argument, {"longer than the limit"});
  }
  ::munmap(p, size);
}

TEST_CASE("hostile: JSON strings longer than a lowered limit, at the limit's cost") {
  // 8 MiB of string inside a safetensors header, against a 1 MiB header limit.
  const std::string header = R"({"__metadata__":{"x":")" + std::string(8 * kMiB, 'a') + "\"}}";
  const std::string file = seeds::safetensors_file(header, 0);
  Budget budget(1.0, 8 * kMiB);
  expect_error(parse(file, {.max_header_bytes = kMiB}), mimo::Errc::parse, {"exceeds the limit of 1048576"});
  // A tensor name and a token that long: the name limit of the tokenizer (64 KiB per token).
  const std::string long_token = "\"" + std::string(100000, 'q') + "\":300,";
  std::string json = seeds::small_tokenizer_json(false);
  json.insert(json.find("\"vocab\":{") + 9, long_token);
  expect_error(mimo::Tokenizer::from_json(json), mimo::Errc::out_of_memory, {"is longer than 65536 bytes"});
}

// ---------------------------------------------------------------------------------------------
// Session states that lie about their sizes

namespace {

struct StateSetup {
  test::TempDir dir;
  mimo::Model<mimo::Cpu> model = load();
  static constexpr int64_t context = 16;

  mimo::Model<mimo::Cpu> load() {
    test::synthesize(dir.path(), test::small_config(64, 32, 2, 2, 1, 16, 48, 1), 5);
    auto m = mimo::Model<mimo::Cpu>::load(dir.path());
    REQUIRE(m.has_value());
    return *m;
  }
  mimo::Session<mimo::Cpu> session() {
    auto s = model.new_session({.context = context, .batch = 8, .backend = {.threads = 1}});
    REQUIRE(s.has_value());
    return std::move(*s);
  }
};

void reseal(std::vector<std::byte>& state) {
  mimo::detail::RunningHash h;
  h.update(state.data(), state.size() - 8);
  const uint64_t d = h.digest();
  std::memcpy(state.data() + state.size() - 8, &d, 8);
}

}  // namespace

TEST_CASE("hostile: session states that lie about their sizes") {
  StateSetup t;
  auto source = t.session();
  REQUIRE(source.append({1, 2, 3, 4, 5}, {.hidden = mimo::OutputRows::all}).has_value());
  std::vector<std::byte> good;
  REQUIRE(source.save(good).has_value());

  auto target = t.session();
  REQUIRE(target.append({9, 8}).has_value());
  const std::vector<float> logits(target.logits().last().begin(), target.logits().last().end());
  auto unchanged = [&] {
    CHECK(target.size() == 2);
    CHECK(std::equal(logits.begin(), logits.end(), target.logits().last().begin()));
  };

  // The token count (after magic, version, fingerprint, KV format and the KV shape) claims 2^62,
  // 2^64 - 1, or one more than the context; the checksum is recomputed, as an attacker would.
  const size_t count_at = 8 + 4 + 8 + 4 + 3 * 8;
  uint64_t stored;
  std::memcpy(&stored, good.data() + count_at, 8);
  REQUIRE(stored == 5);
  for (uint64_t lie : {uint64_t{1} << 62, UINT64_MAX, static_cast<uint64_t>(StateSetup::context) + 1}) {
    Budget budget(1.0, 16 * kMiB);
    std::vector<std::byte> bad = good;
    std::memcpy(bad.data() + count_at, &lie, 8);
    reseal(bad);
    auto r = target.restore(bad);
    REQUIRE_FALSE(r.has_value());
    CHECK((r.error().code() == mimo::Errc::context_full || r.error().code() == mimo::Errc::corrupt_state));
    unchanged();
  }
  // Every u64-sized field at every offset: huge, just-too-large and zero values. The state is
  // resealed each time, so only the validation behind the checksum stands between the lie and an
  // allocation or a read past the buffer. Each restore either succeeds or fails without change.
  {
    // Thousands of restores: time only (under AddressSanitizer, freed memory sits in a quarantine).
    Budget budget(60.0, kSanitized ? UINT64_MAX : 64 * kMiB);
    size_t refused = 0, accepted = 0;
    auto victim = t.session();
    REQUIRE(victim.append({9, 8}).has_value());
    for (size_t at = 8; at + 8 <= good.size() - 8; ++at) {
      for (uint64_t lie : {uint64_t{1} << 62, UINT64_MAX, uint64_t{17}, uint64_t{0}, uint64_t{1} << 32}) {
        std::vector<std::byte> bad = good;
        std::memcpy(bad.data() + at, &lie, 8);
        reseal(bad);
        if (victim.restore(bad)) {
          ++accepted;
          CHECK(victim.size() <= victim.capacity());
          CHECK(victim.append({1}).has_value());
          victim = t.session();
          REQUIRE(victim.append({9, 8}).has_value());
        } else {
          ++refused;
          REQUIRE(victim.size() == 2);
        }
      }
    }
    CHECK(victim.append({1}).has_value());
    MESSAGE("lying fields: ", refused, " refused, ", accepted, " accepted (float payloads)");
    CHECK(refused > 0);
  }
  // Cut short anywhere, or extended: refused.
  for (size_t keep : {size_t{0}, size_t{7}, size_t{27}, good.size() / 2, good.size() - 1}) {
    std::vector<std::byte> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(keep));
    if (cut.size() >= 8) reseal(cut);
    CHECK_FALSE(target.restore(cut).has_value());
    unchanged();
  }
  std::vector<std::byte> longer = good;
  longer.insert(longer.end() - 8, std::byte{0});
  reseal(longer);
  CHECK_FALSE(target.restore(longer).has_value());
  unchanged();
  CHECK(target.restore(good).has_value());
  CHECK(target.size() == 5);
}

TEST_CASE("hostile: a context far beyond memory is an error value") {
  // A checkpoint whose config allows 2^30 positions over 8 layers of 2 KV heads of 2048: its KV
  // cache would take 2^48 bytes (256 TiB, more than a 47-bit address space), so reserving it must
  // fail on any machine, and new_session says so instead of crashing. (Sessions reserve their
  // buffers up front and commit pages as they are used; see "What remains" in README.md.)
  test::TempDir dir;
  mimo::ModelConfig c = test::small_config(64, 32, 8, 2, 2, 2048, 48, 0);
  c.max_position_embeddings = int64_t{1} << 30;
  test::synthesize(dir.path(), c, 1);
  auto model = mimo::Model<mimo::Cpu>::load(dir.path());
  REQUIRE(model.has_value());
  const mimo::Cpu::ContextOptions f32{.threads = 1, .kv_cache = mimo::cpu::KvType::f32};
  const auto estimate = model->estimate({.context = c.max_position_embeddings, .backend = f32});
  CHECK(estimate.kv_cache == uint64_t{1} << 48);
  Budget budget(5.0, kSanitized ? UINT64_MAX : 64 * kMiB);
  auto s = model->new_session({.context = c.max_position_embeddings, .backend = f32});
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().code() == mimo::Errc::out_of_memory);
}
