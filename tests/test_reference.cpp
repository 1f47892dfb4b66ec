// The library against the independent double-precision reference in support.hpp, on shapes the
// fixture does not cover: more layers, other head counts and GQA groupings, head_dim 32/64/128,
// sizes that are not multiples of the SIMD width, sharded files, F16 and F32 storage, tied
// embeddings, no attention bias, and several MTP layers chained over steps.
#include <doctest/doctest.h>

#include <numeric>

#include <mimo/mimo.hpp>

#include "support.hpp"

namespace {

struct Case {
  const char* name;
  mimo::ModelConfig config;
  int shards = 1;
  mimo::DType dtype = mimo::DType::bf16;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  out.push_back({"3 layers, 8 heads / 2 KV heads, head_dim 64, q wider than hidden",
                 test::small_config(300, 128, 3, 8, 2, 64, 192, 1)});
  out.push_back({"head_dim 128, no grouping (4/4 heads)", test::small_config(256, 256, 2, 4, 4, 128, 320, 1)});
  out.push_back({"odd sizes: 6/3 heads of 32, hidden 96, ffn 200, vocab 333",
                 test::small_config(333, 96, 2, 6, 3, 32, 200, 1)});
  {
    Case c{"3 shards, F16 storage, 2 MTP layers", test::small_config(320, 64, 2, 4, 1, 16, 96, 2), 3, mimo::DType::f16};
    out.push_back(c);
  }
  {
    Case c{"F32 storage, tied embeddings, no attention bias", test::small_config(200, 64, 1, 2, 1, 32, 80, 0)};
    c.config.tie_word_embeddings = true;
    c.config.attention_bias = false;
    c.dtype = mimo::DType::f32;
    out.push_back(c);
  }
  return out;
}

double tolerance(const test::Mat& reference) {
  double scale = 1.0;
  for (const auto& r : reference) scale = std::max(scale, test::max_abs(r));
  return 1e-4 * scale;
}

}  // namespace

TEST_CASE("generated shapes: main logits and MTP steps match the double-precision reference") {
  for (const Case& c : cases()) {
    const std::string name = c.name;
    CAPTURE(name);
    test::TempDir dir;
    test::synthesize(dir.path(), c.config, /*seed=*/7, c.shards, c.dtype);
    auto ck = mimo::Checkpoint::open(dir.path());
    REQUIRE(ck.has_value());
    CHECK(ck->files().size() == static_cast<size_t>(c.shards));
    test::Reference ref(*ck);

    const auto tokens = test::random_tokens(37, c.config.vocab_size, 3);
    test::Mat ref_logits, ref_hidden;
    ref.forward(tokens, ref_logits, ref_hidden);
    const double tol = tolerance(ref_logits);

    auto model = mimo::Model<mimo::Cpu>::load(dir.path());
    REQUIRE_MESSAGE(model.has_value(), (model ? "" : model.error().describe()));
    // batch 16: chunks of 16, 16 and 5 rows take the streaming path; batch 64: one chunk of 37, GEMM.
    for (int64_t batch : {16, 64}) {
      CAPTURE(batch);
      auto s = model->new_session(
          {.context = 64, .batch = batch, .backend = {.threads = 2, .exact = true, .kv_cache = mimo::cpu::KvType::f32}});
      REQUIRE(s.has_value());
      auto logits = s->append(tokens, {.logits = mimo::OutputRows::all, .hidden = mimo::OutputRows::all});
      REQUIRE(logits.has_value());
      double worst = 0.0;
      for (size_t t = 0; t < tokens.size(); ++t) {
        worst = std::max(worst, test::max_abs_diff(logits->row(static_cast<int64_t>(t)), ref_logits[t]));
        CHECK(test::argmax(logits->row(static_cast<int64_t>(t))) ==
              std::max_element(ref_logits[t].begin(), ref_logits[t].end()) - ref_logits[t].begin());
      }
      MESSAGE("main: max |diff| = ", worst, " (tolerance ", tol, ")");
      CHECK(worst <= tol);

      // MTP steps 0..K (step K reuses the last layer), teacher-forced on the tokens, at most
      // `batch` rows per call.
      const int64_t K = c.config.num_nextn_predict_layers;
      test::Mat prev = ref_hidden;
      for (int64_t k = 0; K > 0 && k <= K; ++k) {
        const int64_t n = static_cast<int64_t>(tokens.size()) - 1 - k;
        std::vector<int32_t> next(tokens.begin() + 1 + k, tokens.end());
        prev.resize(static_cast<size_t>(n));
        test::Mat out, mtp_ref;
        ref.mtp(k, prev, next, out, mtp_ref);
        double mtp_worst = 0.0;
        if (n <= batch) {
          std::vector<int32_t> rows(static_cast<size_t>(n));
          std::iota(rows.begin(), rows.end(), 0);
          std::vector<int64_t> positions(rows.begin(), rows.end());
          auto m = s->mtp_forward({.step = static_cast<int>(k), .source_rows = rows, .tokens = next, .positions = positions});
          REQUIRE_MESSAGE(m.has_value(), (m ? "" : m.error().describe()));
          for (int64_t t = 0; t < n; ++t) mtp_worst = std::max(mtp_worst, test::max_abs_diff(m->row(t), mtp_ref[t]));
          MESSAGE("MTP step ", k, ": max |diff| = ", mtp_worst);
          CHECK(mtp_worst <= tolerance(mtp_ref));
        } else {
          // Too many rows for one MTP batch: the library refuses rather than overrunning scratch.
          std::vector<int32_t> rows(static_cast<size_t>(n), 0);
          std::vector<int64_t> positions(rows.size(), 0);
          CHECK_FALSE(s->mtp_forward({.step = static_cast<int>(k), .source_rows = rows, .tokens = next, .positions = positions})
                          .has_value());
          break;
        }
        prev = out;
      }
    }
  }
}

TEST_CASE("generated shapes: decoding token by token matches the reference at every step") {
  const auto config = test::small_config(300, 128, 2, 8, 2, 64, 160, 1);
  test::TempDir dir;
  test::synthesize(dir.path(), config, 11);
  auto ck = mimo::Checkpoint::open(dir.path());
  REQUIRE(ck.has_value());
  test::Reference ref(*ck);
  const auto tokens = test::random_tokens(20, config.vocab_size, 5);
  test::Mat ref_logits, ref_hidden;
  ref.forward(tokens, ref_logits, ref_hidden);

  auto model = mimo::Model<mimo::Cpu>::load(dir.path());
  REQUIRE(model.has_value());
  for (auto isa : mimo::cpu::kAllIsas) {
    if (!mimo::cpu::isa_supported(isa)) continue;
    CAPTURE(mimo::cpu::to_string(isa));
    auto s = model->new_session(
        {.context = 32, .batch = 8, .backend = {.threads = 2, .isa = isa, .exact = true, .kv_cache = mimo::cpu::KvType::f32}});
    REQUIRE(s.has_value());
    // A 5-token prompt, then single tokens, then a 3-token "verification" batch, then singles.
    size_t t = 0;
    for (size_t n : {5, 1, 1, 3, 1, 1, 8}) {
      auto logits = s->append(std::span<const int32_t>(tokens).subspan(t, n), {.logits = mimo::OutputRows::all});
      REQUIRE(logits.has_value());
      for (size_t i = 0; i < n; ++i) CHECK(test::max_abs_diff(logits->row(static_cast<int64_t>(i)), ref_logits[t + i]) <= tolerance(ref_logits));
      t += n;
    }
    CHECK(t == tokens.size());
  }
}
