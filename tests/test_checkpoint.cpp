// Loading checkpoints and running sessions on bad input: each failure is an error value whose
// message names the file and the tensor or key, and nothing crashes. Also: sharded loading,
// progress and cancellation, memory estimates.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <string>

#include <mimo/detail/mapped_file.hpp>
#include <mimo/mimo.hpp>

#include "support.hpp"

namespace {

using mimo::Errc;

// A checkpoint whose tensors are listed by synth, after `mutate` edits the list; data are zeros.
void write_with(const std::filesystem::path& dir, const mimo::ModelConfig& c,
                const std::function<void(std::vector<mimo::io::TensorSpec>&)>& mutate) {
  std::filesystem::create_directories(dir);
  test::write_text(dir / "config.json", c.to_json());
  std::vector<mimo::io::TensorSpec> specs;
  for (const auto& t : mimo::synth::tensor_list(c, mimo::DType::bf16)) specs.push_back(t.spec);
  mutate(specs);
  auto w = mimo::io::SafetensorsWriter::create(dir / "model.safetensors", specs);
  REQUIRE(w.has_value());
  std::vector<unsigned char> zeros(1 << 16, 0);
  for (const auto& s : specs) {
    for (uint64_t left = s.nbytes(); left > 0;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, zeros.size()));
      REQUIRE(w->write(zeros.data(), n).has_value());
      left -= n;
    }
  }
  REQUIRE(w->finish().has_value());
}

void expect_load_error(const std::filesystem::path& dir, Errc code, std::initializer_list<std::string> needles) {
  auto m = mimo::Model<mimo::Cpu>::load(dir);
  REQUIRE_FALSE(m.has_value());
  CHECK(m.error().code() == code);
  for (const auto& n : needles) {
    CHECK_MESSAGE(m.error().message().find(n) != std::string::npos, "message: ", m.error().message(), " lacks: ", n);
  }
}

std::string replace(std::string s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  REQUIRE_MESSAGE(at != std::string::npos, "no '", from, "' in text");
  return s.replace(at, from.size(), to);
}

}  // namespace

TEST_CASE("checkpoint: a sharded checkpoint loads and equals the single-file one") {
  const auto c = test::small_config();
  test::TempDir one, three;
  test::synthesize(one.path(), c, 5, 1);
  test::synthesize(three.path(), c, 5, 3);
  CHECK(std::filesystem::exists(three / "model.safetensors.index.json"));
  CHECK(std::filesystem::exists(three / "model-00003-of-00003.safetensors"));
  auto a = mimo::Model<mimo::Cpu>::load(one.path());
  auto b = mimo::Model<mimo::Cpu>::load(three.path());
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  CHECK(a->checkpoint().files().size() == 1);
  CHECK(b->checkpoint().files().size() == 3);
  const auto tokens = test::random_tokens(9, c.vocab_size, 1);
  auto sa = a->new_session({.context = 16});
  auto sb = b->new_session({.context = 16});
  REQUIRE(sa.has_value());
  REQUIRE(sb.has_value());
  auto la = sa->append(tokens);
  REQUIRE(la.has_value());
  const std::vector<float> first(la->last().begin(), la->last().end());
  auto lb = sb->append(tokens);
  REQUIRE(lb.has_value());
  CHECK(std::equal(first.begin(), first.end(), lb->last().begin()));
}

TEST_CASE("checkpoint: missing files") {
  test::TempDir dir;
  expect_load_error(dir / "nope", Errc::io, {"nope", "not a directory"});
  expect_load_error(dir.path(), Errc::io, {"config.json", "no such file"});
  test::write_text(dir / "config.json", test::small_config().to_json());
  expect_load_error(dir.path(), Errc::io, {"model.safetensors"});
}

TEST_CASE("checkpoint: shards that are missing, truncated, misplaced or outside the directory") {
  const auto c = test::small_config();
  {
    test::TempDir dir;
    test::synthesize(dir.path(), c, 1, 3);
    std::filesystem::remove(dir / "model-00002-of-00003.safetensors");
    expect_load_error(dir.path(), Errc::io, {"model-00002-of-00003.safetensors", "missing", "holds '"});
  }
  {
    test::TempDir dir;
    test::synthesize(dir.path(), c, 1, 3);
    const auto shard = dir / "model-00003-of-00003.safetensors";
    auto bytes = test::read_bytes(shard);
    bytes.resize(bytes.size() - 100);
    test::write_bytes(shard, bytes);
    expect_load_error(dir.path(), Errc::parse, {"model-00003-of-00003.safetensors", "past the end"});
    bytes.resize(5);
    test::write_bytes(shard, bytes);
    expect_load_error(dir.path(), Errc::parse, {"model-00003-of-00003.safetensors", "too short"});
  }
  {
    test::TempDir dir;
    test::synthesize(dir.path(), c, 1, 2);
    const auto index = dir / "model.safetensors.index.json";
    // The index claims lm_head lives in the first shard, but it is in the second.
    test::write_text(index, replace(test::read_text(index), "\"lm_head.weight\": \"model-00002-of-00002.safetensors\"",
                                    "\"lm_head.weight\": \"model-00001-of-00002.safetensors\""));
    expect_load_error(dir.path(), Errc::invalid_checkpoint, {"lm_head.weight", "model-00001-of-00002.safetensors"});
    test::write_text(index, replace(test::read_text(index), "\"lm_head.weight\": \"model-00001-of-00002.safetensors\"",
                                    "\"lm_head.weight\": \"../model-00001-of-00002.safetensors\""));
    expect_load_error(dir.path(), Errc::invalid_checkpoint, {"not a plain file name"});
    test::write_text(index, "{\"weight_map\": 3}");
    expect_load_error(dir.path(), Errc::invalid_checkpoint, {"weight_map", "expected an object"});
    test::write_text(index, "{\"weight_map\": {");
    expect_load_error(dir.path(), Errc::parse, {"model.safetensors.index.json", "invalid JSON"});
  }
}

TEST_CASE("checkpoint: tensors of the wrong dtype or shape, or missing") {
  const auto c = test::small_config();
  {
    test::TempDir dir;
    write_with(dir.path(), c, [](auto& specs) {
      for (auto& s : specs) {
        if (s.name == "model.layers.1.mlp.up_proj.weight") s.dtype = mimo::DType::i32;
      }
    });
    expect_load_error(dir.path(), Errc::invalid_checkpoint, {"model.layers.1.mlp.up_proj.weight", "I32", "BF16"});
  }
  {
    test::TempDir dir;
    write_with(dir.path(), c, [](auto& specs) {
      for (auto& s : specs) {
        if (s.name == "model.layers.0.self_attn.k_proj.weight") s.shape = {32, 65};
      }
    });
    expect_load_error(dir.path(), Errc::invalid_checkpoint,
                      {"model.layers.0.self_attn.k_proj.weight", "[32, 65]", "expected [32, 64]"});
  }
  {
    test::TempDir dir;
    write_with(dir.path(), c, [](auto& specs) {
      std::erase_if(specs, [](const auto& s) { return s.name == "model.mtp_layers.0.input_proj.weight"; });
    });
    expect_load_error(dir.path(), Errc::invalid_checkpoint, {"missing tensor 'model.mtp_layers.0.input_proj.weight'"});
  }
  {
    test::TempDir dir;
    write_with(dir.path(), c, [](auto& specs) {
      std::erase_if(specs, [](const auto& s) { return s.name == "model.layers.0.self_attn.q_proj.bias"; });
    });
    expect_load_error(dir.path(), Errc::invalid_checkpoint, {"model.layers.0.self_attn.q_proj.bias"});
  }
}

TEST_CASE("checkpoint: malformed or missing config keys") {
  const auto c = test::small_config();
  test::TempDir dir;
  test::synthesize(dir.path(), c, 1);
  const std::string good = test::read_text(dir / "config.json");
  struct Bad {
    std::string from, to;
    Errc code;
    std::vector<std::string> needles;
  };
  const Bad bad[] = {
      {"\"hidden_size\": 64,", "", Errc::invalid_checkpoint, {"config.json", "missing key 'hidden_size'"}},
      {"\"hidden_size\": 64,", "\"hidden_size\": \"64\",", Errc::invalid_checkpoint, {"'hidden_size'", "expected an integer"}},
      {"\"hidden_size\": 64,", "\"hidden_size\": -4,", Errc::invalid_checkpoint, {"'hidden_size'", "out of range"}},
      {"\"hidden_size\": 64,", "\"hidden_size\": 64.5,", Errc::invalid_checkpoint, {"'hidden_size'"}},
      {"\"num_key_value_heads\": 2,", "\"num_key_value_heads\": 3,", Errc::invalid_checkpoint, {"'num_key_value_heads'", "does not divide"}},
      {"\"rope_theta\": 640000,", "\"rope_theta\": \"big\",", Errc::invalid_checkpoint, {"'rope_theta'"}},
      {"\"hidden_act\": \"silu\",", "\"hidden_act\": \"gelu\",", Errc::invalid_checkpoint, {"'hidden_act'", "gelu"}},
      {"\"vocab_size\": 512", "\"vocab_size\": 512, \"rope_scaling\": {\"type\": \"yarn\"}", Errc::invalid_checkpoint, {"rope_scaling"}},
      {"\"model_type\": \"mimo\",", "\"model_type\": \"llama\",", Errc::invalid_checkpoint, {"'model_type'", "llama"}},
      {"\"eos_token_id\": 511,", "\"eos_token_id\": 99999,", Errc::invalid_checkpoint, {"'eos_token_id'"}},
      {"{", "[", Errc::parse, {"config.json"}},
      {"\"vocab_size\": 512\n}", "\"vocab_size\": 512\n", Errc::parse, {"config.json", "invalid JSON"}},
  };
  for (const auto& b : bad) {
    CAPTURE(b.to);
    test::write_text(dir / "config.json", replace(good, b.from, b.to));
    auto m = mimo::Model<mimo::Cpu>::load(dir.path());
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error().code() == b.code);
    for (const auto& n : b.needles) {
      CHECK_MESSAGE(m.error().message().find(n) != std::string::npos, "message: ", m.error().message(), " lacks: ", n);
    }
  }
  // eos_token_id may be a list; head_dim may be absent (hidden_size / heads).
  test::write_text(dir / "config.json", replace(replace(good, "\"eos_token_id\": 511,", "\"eos_token_id\": [511, 510],"),
                                                "\"head_dim\": 16,", ""));
  auto m = mimo::Model<mimo::Cpu>::load(dir.path());
  REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().describe()));
  CHECK(m->config().eos_token_id == std::vector<int64_t>{511, 510});
  CHECK(m->config().head_dim == 16);
}

TEST_CASE("session: bad token ids, full context, bad options") {
  const auto c = test::small_config();
  test::TempDir dir;
  test::synthesize(dir.path(), c, 1);
  auto model = mimo::Model<mimo::Cpu>::load(dir.path());
  REQUIRE(model.has_value());
  auto s = model->new_session({.context = 8});
  REQUIRE(s.has_value());
  CHECK(s->capacity() == 8);

  auto bad = s->append({1, 2, 512});
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().code() == Errc::invalid_argument);
  CHECK(bad.error().message().find("token id 512 at index 2") != std::string::npos);
  CHECK_FALSE(s->append({-1}).has_value());
  CHECK(s->size() == 0);

  REQUIRE(s->append({1, 2, 3, 4, 5, 6}).has_value());
  const std::vector<float> before(s->logits().last().begin(), s->logits().last().end());
  auto full = s->append({1, 2, 3});
  REQUIRE_FALSE(full.has_value());
  CHECK(full.error().code() == Errc::context_full);
  CHECK(full.error().message().find("holds 6 of 8") != std::string::npos);
  CHECK(s->size() == 6);
  // Still usable: two more tokens fit exactly.
  REQUIRE(s->append({7, 8}).has_value());
  CHECK(s->size() == 8);
  CHECK(s->append({1}).error().code() == Errc::context_full);

  auto too_long = model->new_session({.context = c.max_position_embeddings + 1});
  REQUIRE_FALSE(too_long.has_value());
  CHECK(too_long.error().message().find("max_position_embeddings") != std::string::npos);
  CHECK_FALSE(model->new_session({.context = 0}).has_value());
  CHECK_FALSE(model->new_session({.context = 8, .batch = 0}).has_value());

  // MTP batches are validated too.
  auto t = model->new_session({.context = 8});
  REQUIRE(t.has_value());
  REQUIRE(t->append({1, 2, 3}, {.hidden = mimo::OutputRows::all}).has_value());
  const int32_t rows[] = {0, 5};
  const int32_t toks[] = {2, 3};
  const int64_t pos[] = {0, 1};
  auto m = t->mtp_forward({.step = 0, .source_rows = rows, .tokens = toks, .positions = pos});
  REQUIRE_FALSE(m.has_value());
  CHECK(m.error().message().find("source row 5") != std::string::npos);
  const int32_t bad_tokens[] = {2, 9999};
  const int32_t good_rows[] = {0, 1};
  CHECK_FALSE(t->mtp_forward({.step = 0, .source_rows = good_rows, .tokens = bad_tokens, .positions = pos}).has_value());
  CHECK_FALSE(t->mtp_forward({.step = 1, .source_rows = good_rows, .tokens = toks, .positions = pos}).has_value());
}

TEST_CASE("session: a cancelled append changes nothing") {
  const auto c = test::small_config(512, 64, 4);
  test::TempDir dir;
  test::synthesize(dir.path(), c, 1);
  auto model = mimo::Model<mimo::Cpu>::load(dir.path());
  REQUIRE(model.has_value());
  auto s = model->new_session({.context = 64, .batch = 4});
  REQUIRE(s.has_value());
  REQUIRE(s->append({1, 2, 3}).has_value());
  const std::vector<float> before(s->logits().last().begin(), s->logits().last().end());
  std::atomic<bool> cancel{true};
  auto r = s->append(test::random_tokens(20, c.vocab_size, 2), {.cancel = &cancel});
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code() == Errc::cancelled);
  CHECK(s->size() == 3);
  cancel = false;
  auto again = s->append({4});
  REQUIRE(again.has_value());
  auto fresh = model->new_session({.context = 64});
  REQUIRE(fresh.has_value());
  auto ref = fresh->append({1, 2, 3, 4});
  REQUIRE(ref.has_value());
  CHECK(std::equal(ref->last().begin(), ref->last().end(), s->logits().last().begin()));
}

TEST_CASE("load: progress is reported and can cancel; memory is estimated before loading") {
  const auto c = test::small_config();
  test::TempDir dir;
  test::synthesize(dir.path(), c, 1);
  int calls = 0;
  double last = -1.0;
  bool monotonic = true;
  auto m = mimo::Model<mimo::Cpu>::load(dir.path(), {.on_progress = [&](const mimo::LoadProgress& p) {
                                                       ++calls;
                                                       monotonic = monotonic && p.fraction >= last;
                                                       last = p.fraction;
                                                       return true;
                                                     }});
  REQUIRE(m.has_value());
  CHECK(calls > 2);
  CHECK(monotonic);
  CHECK(last == doctest::Approx(1.0));

  auto cancelled = mimo::Model<mimo::Cpu>::load(dir.path(), {.on_progress = [](const mimo::LoadProgress& p) {
                                                               return p.stage != std::string_view("preparing layers");
                                                             }});
  REQUIRE_FALSE(cancelled.has_value());
  CHECK(cancelled.error().code() == Errc::cancelled);

  auto e = mimo::Model<mimo::Cpu>::estimate_memory(dir.path(), {.context = 1000});
  REQUIRE(e.has_value());
  uint64_t bytes = 0;
  for (const auto& t : mimo::synth::tensor_list(c, mimo::DType::bf16)) bytes += t.spec.nbytes();
  CHECK(e->weights == bytes);
  // The default cache holds f16 entries; f32 twice that, i8 a byte plus a 4-byte scale per entry.
  CHECK(e->kv_cache == 2ull * c.num_hidden_layers * c.kv_dim() * 1000 * 2);
  auto f32 = mimo::Model<mimo::Cpu>::estimate_memory(dir.path(), {.context = 1000, .backend = {.kv_cache = mimo::cpu::KvType::f32}});
  REQUIRE(f32.has_value());
  CHECK(f32->kv_cache == 2ull * c.num_hidden_layers * c.kv_dim() * 1000 * sizeof(float));
  auto i8 = mimo::Model<mimo::Cpu>::estimate_memory(dir.path(), {.context = 1000, .backend = {.kv_cache = mimo::cpu::KvType::i8}});
  REQUIRE(i8.has_value());
  CHECK(i8->kv_cache == 2ull * c.num_hidden_layers * c.num_key_value_heads * 1000 * (c.head_dim + 4));
  CHECK(e->total() > e->weights + e->kv_cache);
  CHECK(m->estimate({.context = 1000}).kv_cache == e->kv_cache);
  CHECK_FALSE(mimo::Model<mimo::Cpu>::estimate_memory(dir / "missing").has_value());
}

TEST_CASE("checkpoint: preload reads stretches cached in small pages back into huge pages") {
  // 80 MiB of tensor data (past the 64 MiB below which preload leaves a file alone).
  test::TempDir dir;
  write_with(dir.path(), test::small_config(),
             [](std::vector<mimo::io::TensorSpec>& s) { s.push_back({"padding", mimo::DType::bf16, {40 << 20}}); });
  const std::string file = (dir / "model.safetensors").string();
  {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    ::fsync(fd);  // dirty pages would stay cached
    ::close(fd);
  }
  // Cache the file in huge pages, then 8 MiB of it in small ones: evicted and read back a page at a
  // time without read-ahead, as after the kernel evicted part of a cached file.
  mimo::detail::MappedFile::drop_cached_pages(file);
  constexpr uint64_t kFrom = 16ull << 20, kTo = 24ull << 20;
  auto cached_small = [&]() -> mimo::Expected<std::vector<std::pair<uint64_t, uint64_t>>> {
    auto m = mimo::detail::MappedFile::open(file, true);
    REQUIRE(m.has_value());
    const auto* p = reinterpret_cast<const volatile unsigned char*>(m->data());
    unsigned sink = 0;
    for (uint64_t off = 0; off < m->size(); off += 4096) sink += p[off];
    (void)sink;
    if (m->huge_mapped_bytes() < m->size() / 2) return mimo::Error(Errc::unsupported, "no huge pages for this file");
    return m->small_page_ranges();
  };
  auto fresh = cached_small();
  if (!fresh) {
    MESSAGE("skipped: " << fresh.error().describe());
    return;
  }
  CHECK(fresh->empty());
  mimo::detail::MappedFile::drop_cached_pages(file, kFrom, kTo - kFrom);
  {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
    std::vector<char> page(4096);
    uint64_t read = 0;
    for (uint64_t off = kFrom; off < kTo; off += page.size()) {
      read += static_cast<uint64_t>(std::max<ssize_t>(0, ::pread(fd, page.data(), page.size(), static_cast<off_t>(off))));
    }
    CHECK(read == kTo - kFrom);
    ::close(fd);
  }
  auto fragmented = cached_small();
  REQUIRE(fragmented.has_value());
  REQUIRE(fragmented->size() == 1);
  CHECK((*fragmented)[0] == std::pair<uint64_t, uint64_t>{kFrom, kTo});

  // Preload finds the stretch and reads it again.
  auto ck = mimo::Checkpoint::open(dir.path(), {}, true);
  REQUIRE(ck.has_value());
  REQUIRE(ck->preload(true, [](uint64_t, uint64_t) { return true; }).has_value());
  auto after = ck->files()[0]->mapping().small_page_ranges();
  REQUIRE(after.has_value());
  CHECK(after->empty());
}
