// Quantized checkpoints end to end (mimo/quantize.hpp, mimo/quant.hpp): what `mimo quantize`
// writes, what LoadOptions::quantize makes in memory, and the logits both give.
//
// The reference is the double-precision model of test::Reference run on the *dequantized*
// weights, written out as an F32 checkpoint: prefill in exact mode widens the codes to fp32
// without rounding, so it must match that reference to float precision; decode products
// quantize activations to int8 blocks (matvec_quant.hpp), so they match it only to the
// activations' rounding. Against the original bf16 model the error is the weights' own.
#include <doctest/doctest.h>

#include <numeric>

#include <mimo/mimo.hpp>
#include <mimo/quantize.hpp>

#include "support.hpp"

namespace {

namespace fs = std::filesystem;
using mimo::QuantType;

struct Format {
  QuantType type;
  bool with_min;
  std::string name() const { return std::string(mimo::to_string(type)) + (with_min ? "+min" : ""); }
};

// Hidden 128, 4 heads of 32, FFN 256: every product's columns are a multiple of the groups.
mimo::ModelConfig config() { return test::small_config(320, 128, 2, 4, 2, 32, 256, 1); }

mimo::QuantizeOptions options(const Format& f, bool keep_mtp = false) {
  mimo::QuantizeOptions o;
  o.type = f.type;
  o.with_min = f.with_min;
  o.keep_mtp = keep_mtp;
  o.threads = 2;
  return o;
}

// An F32 checkpoint holding the exact dequantized values of a quantized one.
void write_dequantized(const fs::path& in, const fs::path& out) {
  auto ck = mimo::Checkpoint::open(in);
  REQUIRE_MESSAGE(ck.has_value(), (ck ? "" : ck.error().describe()));
  REQUIRE(ck->files().size() == 1);
  fs::create_directories(out);
  fs::copy_file(in / "config.json", out / "config.json");
  const auto& file = *ck->files()[0];
  auto is_side = [&](const std::string& name) {
    for (const char* suffix : {"_scale", "_min"}) {
      const std::string s = suffix;
      if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) return true;
    }
    return false;
  };
  std::vector<mimo::io::TensorSpec> specs;
  std::vector<std::vector<float>> values;
  for (const auto& info : file.header().tensors) {
    if (is_side(info.name)) continue;
    std::vector<float> v;
    std::vector<int64_t> shape = info.shape;
    if (info.dtype == mimo::DType::i8 || info.dtype == mimo::DType::u8) {
      const int64_t rows = info.shape[0], cols = info.dtype == mimo::DType::u8 ? 2 * info.shape[1] : info.shape[1];
      auto t = ck->require_linear(info.name, {rows, cols});
      REQUIRE_MESSAGE(t.has_value(), (t ? "" : t.error().describe()));
      REQUIRE(t->quantized());
      v.resize(static_cast<size_t>(rows * cols));
      const int64_t row_bytes = mimo::quant_row_bytes(t->quant, cols), groups = cols / t->group;
      for (int64_t r = 0; r < rows; ++r) {
        mimo::dequantize_row(t->quant, t->data + r * row_bytes, t->scales + r * groups * 2,
                             t->mins ? t->mins + r * groups * 2 : nullptr, cols, t->group, v.data() + r * cols);
      }
      shape = {rows, cols};
    } else {
      auto t = ck->require(info.name, info.shape);
      REQUIRE(t.has_value());
      v.resize(static_cast<size_t>(info.numel()));
      for (uint64_t i = 0; i < info.numel(); ++i) v[i] = mimo::load_float(t->data, t->dtype(), i);
    }
    specs.push_back({info.name, mimo::DType::f32, shape});
    values.push_back(std::move(v));
  }
  auto w = mimo::io::SafetensorsWriter::create(out / "model.safetensors", specs, {{"format", "pt"}});
  REQUIRE(w.has_value());
  for (const auto& v : values) REQUIRE(w->write(reinterpret_cast<const std::byte*>(v.data()), v.size() * 4).has_value());
  REQUIRE(w->finish().has_value());
}

mimo::Session<mimo::Cpu> exact_session(const mimo::Model<mimo::Cpu>& model, int64_t batch = 64) {
  auto s = model.new_session(
      {.context = 64, .batch = batch, .backend = {.threads = 2, .exact = true, .kv_cache = mimo::cpu::KvType::f32}});
  REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().describe()));
  return std::move(*s);
}

std::vector<std::vector<float>> prefill_logits(const mimo::Model<mimo::Cpu>& model, const std::vector<int32_t>& tokens) {
  auto s = exact_session(model);
  auto logits = s.append(tokens, {.logits = mimo::OutputRows::all});
  REQUIRE(logits.has_value());
  std::vector<std::vector<float>> out;
  for (int64_t r = 0; r < logits->rows; ++r) out.emplace_back(logits->row(r).begin(), logits->row(r).end());
  return out;
}

double scale_of(const test::Mat& m) {
  double s = 1.0;
  for (const auto& r : m) s = std::max(s, test::max_abs(r));
  return s;
}

}  // namespace

TEST_CASE("quantize: written checkpoints hold codes and scales, keep embeddings, norms and biases, record the format") {
  test::TempDir dir;
  const fs::path src = dir.path() / "bf16", q4 = dir.path() / "q4", q8 = dir.path() / "q8";
  test::synthesize(src, config(), 3);
  REQUIRE(mimo::write_quantized_checkpoint(src, q4, options({QuantType::q4, true}, /*keep_mtp=*/true)).has_value());
  REQUIRE(mimo::write_quantized_checkpoint(src, q8, options({QuantType::q8, false})).has_value());

  auto ck4 = mimo::Checkpoint::open(q4);
  REQUIRE_MESSAGE(ck4.has_value(), (ck4 ? "" : ck4.error().describe()));
  auto ck8 = mimo::Checkpoint::open(q8);
  REQUIRE(ck8.has_value());
  auto original = mimo::Checkpoint::open(src);
  REQUIRE(original.has_value());
  CHECK(ck4->config().hidden_size == 128);

  auto q = ck4->require_linear("model.layers.1.mlp.down_proj.weight", {128, 256});
  REQUIRE(q.has_value());
  CHECK(q->quant == QuantType::q4);
  CHECK(q->group == 32);
  CHECK(q->mins != nullptr);
  CHECK(q->dtype() == mimo::DType::u8);
  CHECK(q->shape() == std::vector<int64_t>{128, 128});
  // lm_head is q8 by default; the MTP layers stay bf16 with keep_mtp.
  auto head = ck4->require_linear("lm_head.weight", {320, 128});
  REQUIRE(head.has_value());
  CHECK(head->quant == QuantType::q8);
  CHECK(head->group == 64);
  auto mtp = ck4->require_linear("model.mtp_layers.0.mlp.up_proj.weight", {256, 128});
  REQUIRE(mtp.has_value());
  CHECK_FALSE(mtp->quantized());
  CHECK(mtp->dtype() == mimo::DType::bf16);
  auto mtp8 = ck8->require_linear("model.mtp_layers.0.input_proj.weight", {128, 256});
  REQUIRE(mtp8.has_value());
  CHECK(mtp8->quant == QuantType::q8);
  // Embeddings, norms and biases are the original bytes.
  for (const char* name : {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.bias"}) {
    CAPTURE(name);
    const auto a = original->find(name), b = ck4->find(name);
    REQUIRE(a);
    REQUIRE(b);
    CHECK(b.dtype() == a.dtype());
    CHECK(std::memcmp(a.data, b.data, a.nbytes()) == 0);
  }
  // config.json records the format; the quantized files are smaller.
  const std::string cfg = test::read_text(q4 / "config.json");
  CHECK(cfg.find("\"quantization_config\"") != std::string::npos);
  CHECK(cfg.find("\"type\": \"q4\"") != std::string::npos);
  CHECK(fs::file_size(q8 / "model.safetensors") < fs::file_size(src / "model.safetensors") * 2 / 3);
  CHECK(fs::file_size(q4 / "model.safetensors") < fs::file_size(src / "model.safetensors") * 2 / 3);
}

TEST_CASE("quantize: quantizing while loading gives the written checkpoint's model bit for bit") {
  test::TempDir dir;
  const fs::path src = dir.path() / "bf16";
  test::synthesize(src, config(), 5);
  const auto tokens = test::random_tokens(23, 320, 9);
  for (const Format& f : {Format{QuantType::q8, false}, Format{QuantType::q4, false}, Format{QuantType::q4, true}}) {
    CAPTURE(f.name());
    const fs::path out = dir.path() / f.name();
    REQUIRE(mimo::write_quantized_checkpoint(src, out, options(f)).has_value());
    auto from_file = mimo::Model<mimo::Cpu>::load(out);
    REQUIRE_MESSAGE(from_file.has_value(), (from_file ? "" : from_file.error().describe()));
    mimo::LoadOptions lo;
    lo.quantize = options(f);
    std::vector<std::string> stages;
    lo.on_progress = [&](const mimo::LoadProgress& p) {
      if (stages.empty() || stages.back() != p.stage) stages.emplace_back(p.stage);
      return true;
    };
    auto in_memory = mimo::Model<mimo::Cpu>::load(src, lo);
    REQUIRE_MESSAGE(in_memory.has_value(), (in_memory ? "" : in_memory.error().describe()));
    CHECK(std::find(stages.begin(), stages.end(), "quantizing weights") != stages.end());
    // The memory estimate before loading (planned from the shapes), of the loaded models (their
    // bound tensors) and the sizes the writer gave the file's tensors all agree.
    auto planned = mimo::Model<mimo::Cpu>::estimate_memory(src, lo, {.context = 64});
    auto written = mimo::Model<mimo::Cpu>::estimate_memory(out, {.context = 64});
    auto as_stored = mimo::Model<mimo::Cpu>::estimate_memory(src, {.context = 64});
    REQUIRE(planned.has_value());
    REQUIRE(written.has_value());
    REQUIRE(as_stored.has_value());
    CHECK(written->weights == from_file->checkpoint().tensor_bytes());
    CHECK(planned->weights == written->weights);
    CHECK(in_memory->estimate({.context = 64}).weights == planned->weights);
    CHECK(from_file->estimate({.context = 64}).weights == planned->weights);
    CHECK(planned->weights < as_stored->weights * (f.type == QuantType::q8 ? 6 : 4) / 10);
    // Prefill (all rows) and decoding one token at a time, with the default (fast) options.
    for (bool decode : {false, true}) {
      CAPTURE(decode);
      auto a = from_file->new_session({.context = 64, .backend = {.threads = 2}});
      auto b = in_memory->new_session({.context = 64, .backend = {.threads = 2}});
      REQUIRE(a.has_value());
      REQUIRE(b.has_value());
      for (size_t i = 0; i < tokens.size(); i += decode ? 1 : tokens.size()) {
        const size_t n = decode ? 1 : tokens.size();
        const std::span<const int32_t> part(tokens.data() + i, n);
        auto la = a->append(part, {.logits = mimo::OutputRows::all});
        auto lb = b->append(part, {.logits = mimo::OutputRows::all});
        REQUIRE(la.has_value());
        REQUIRE(lb.has_value());
        for (int64_t r = 0; r < la->rows; ++r) {
          const auto ra = la->row(r), rb = lb->row(r);
          REQUIRE(std::equal(ra.begin(), ra.end(), rb.begin(), rb.end()));
        }
      }
    }
  }
  // Cancelling during quantization stops the load with an error.
  mimo::LoadOptions lo;
  lo.quantize = options({QuantType::q4, false});
  lo.on_progress = [](const mimo::LoadProgress& p) { return p.stage != "quantizing weights"; };
  auto cancelled = mimo::Model<mimo::Cpu>::load(src, lo);
  REQUIRE_FALSE(cancelled.has_value());
  CHECK(cancelled.error().code() == mimo::Errc::cancelled);
}

TEST_CASE("quantize: logits against the double reference of the dequantized weights, and against bf16") {
  test::TempDir dir;
  const fs::path src = dir.path() / "bf16";
  test::synthesize(src, config(), 7);
  const auto tokens = test::random_tokens(37, 320, 4);
  auto bf16_model = mimo::Model<mimo::Cpu>::load(src);
  REQUIRE(bf16_model.has_value());
  const auto bf16_logits = prefill_logits(*bf16_model, tokens);

  for (const Format& f : {Format{QuantType::q8, false}, Format{QuantType::q4, false}, Format{QuantType::q4, true}}) {
    CAPTURE(f.name());
    const fs::path out = dir.path() / f.name(), deq = dir.path() / (f.name() + "-dequantized");
    REQUIRE(mimo::write_quantized_checkpoint(src, out, options(f)).has_value());
    write_dequantized(out, deq);
    auto deq_ck = mimo::Checkpoint::open(deq);
    REQUIRE_MESSAGE(deq_ck.has_value(), (deq_ck ? "" : deq_ck.error().describe()));
    test::Reference ref(*deq_ck);
    test::Mat ref_logits, ref_hidden;
    ref.forward(tokens, ref_logits, ref_hidden);
    const double scale = scale_of(ref_logits);

    auto model = mimo::Model<mimo::Cpu>::load(out);
    REQUIRE(model.has_value());
    // Exact prefill widens the codes without rounding: float precision.
    const auto prefill = prefill_logits(*model, tokens);
    double prefill_err = 0.0;
    for (size_t t = 0; t < tokens.size(); ++t) prefill_err = std::max(prefill_err, test::max_abs_diff(prefill[t], ref_logits[t]));
    MESSAGE(f.name(), " exact prefill vs reference of the dequantized weights: ", prefill_err, " (logit scale ", scale, ")");
    CHECK(prefill_err <= 1e-4 * scale);

    // Decoding token by token: activations rounded to int8 blocks.
    auto s = exact_session(*model, 8);
    double decode_err = 0.0;
    int agree = 0;
    for (size_t t = 0; t < tokens.size(); ++t) {
      auto l = s.append({tokens[t]});
      REQUIRE(l.has_value());
      decode_err = std::max(decode_err, test::max_abs_diff(l->row(0), ref_logits[t]));
      agree += test::argmax(l->row(0)) == std::max_element(ref_logits[t].begin(), ref_logits[t].end()) - ref_logits[t].begin();
    }
    MESSAGE(f.name(), " decode vs reference: ", decode_err, ", argmax equal at ", agree, "/", tokens.size());
    CHECK(decode_err <= 3e-2 * scale);  // observed about 1.7%
    CHECK(decode_err > 0.0);  // the int8 activations are really used
    CHECK(agree >= static_cast<int>(tokens.size()) * 8 / 10);

    // Against the bf16 model: the weights' own error, larger for 4 bits.
    double err = 0.0;
    int same_top1 = 0;
    for (size_t t = 0; t < tokens.size(); ++t) {
      for (size_t v = 0; v < bf16_logits[t].size(); ++v) err = std::max(err, std::abs(double(prefill[t][v]) - bf16_logits[t][v]));
      same_top1 += test::argmax(prefill[t]) == test::argmax(bf16_logits[t]);
    }
    MESSAGE(f.name(), " vs bf16: max |diff| = ", err, ", top-1 equal at ", same_top1, "/", tokens.size());
    CHECK(err > 0.0);
    CHECK(err <= (f.type == QuantType::q8 ? 0.05 : 0.5) * scale);
    CHECK(same_top1 >= static_cast<int>(tokens.size()) * (f.type == QuantType::q8 ? 9 : 6) / 10);
  }
}

TEST_CASE("quantize: malformed quantized tensors are refused with the tensor named") {
  test::TempDir dir;
  const fs::path src = dir.path() / "bf16", q = dir.path() / "q8";
  test::synthesize(src, config(), 2);
  REQUIRE(mimo::write_quantized_checkpoint(src, q, options({QuantType::q8, false})).has_value());
  auto ck = mimo::Checkpoint::open(q);
  REQUIRE(ck.has_value());
  // Wrong logical shape for the codes, and a missing scale tensor.
  auto bad = ck->require_linear("model.layers.0.mlp.up_proj.weight", {256, 96});
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().message().find("model.layers.0.mlp.up_proj.weight") != std::string::npos);

  // A checkpoint whose scale tensor was dropped: rewrite the file without it.
  const fs::path broken = dir.path() / "broken";
  fs::create_directories(broken);
  fs::copy_file(q / "config.json", broken / "config.json");
  const auto& file = *ck->files()[0];
  std::vector<mimo::io::TensorSpec> specs;
  std::vector<const mimo::io::TensorInfo*> kept;
  for (const auto& info : file.header().tensors) {
    if (info.name == "model.layers.1.self_attn.o_proj.weight_scale") continue;
    specs.push_back({info.name, info.dtype, info.shape});
    kept.push_back(&info);
  }
  {
    auto w = mimo::io::SafetensorsWriter::create(broken / "model.safetensors", specs, {});
    REQUIRE(w.has_value());
    for (const auto* info : kept) REQUIRE(w->write(file.data(*info), info->end - info->begin).has_value());
    REQUIRE(w->finish().has_value());
  }
  auto model = mimo::Model<mimo::Cpu>::load(broken);
  REQUIRE_FALSE(model.has_value());
  CHECK(model.error().message().find("model.layers.1.self_attn.o_proj.weight_scale") != std::string::npos);
  CHECK(model.error().message().find("missing") != std::string::npos);

  // Options the writer refuses.
  mimo::QuantizeOptions none;
  CHECK_FALSE(mimo::write_quantized_checkpoint(src, dir.path() / "x", none).has_value());
  auto odd = options({QuantType::q4, false});
  odd.group = 48;
  CHECK_FALSE(mimo::write_quantized_checkpoint(src, dir.path() / "y", odd).has_value());
  CHECK_FALSE(mimo::write_quantized_checkpoint(src, src, options({QuantType::q8, false})).has_value());
}

TEST_CASE("quantize: the tiny-mimo fixture quantized while loading, against its float64 logits") {
  simdjson::dom::parser parser;
  simdjson::padded_string text(test::read_text(test::tiny_fixture() / "expected.json"));
  simdjson::dom::element root = parser.parse(text).value_unsafe();
  simdjson::dom::array ids = root["prompt_ids"].get_array().value_unsafe();
  std::vector<int32_t> prompt;
  for (simdjson::dom::element e : ids) prompt.push_back(static_cast<int32_t>(e.get_int64().value_unsafe()));
  REQUIRE(prompt.size() >= 8);
  const auto expected = test::read_f32(test::tiny_fixture() / "logits.f32");
  const int64_t V = 4096;
  REQUIRE(expected.size() == prompt.size() * V);
  // {format, max |error| allowed, top-1 agreement required (of the prompt's positions)}:
  // observed (logits up to 7.5 in magnitude) 0.10 prefill, 0.19 decode, 24/24 (q8); 1.2-1.4,
  // 20-21/24 (q4, symmetric or with minimums). The bounds are about 1.5 times that.
  struct Expect {
    Format f;
    double max_error;
    double agreement;
  };
  for (const Expect& e : {Expect{{QuantType::q8, false}, 0.3, 0.95}, Expect{{QuantType::q4, false}, 2.1, 0.8},
                          Expect{{QuantType::q4, true}, 2.1, 0.8}}) {
    CAPTURE(e.f.name());
    mimo::LoadOptions lo;
    lo.quantize = options(e.f);
    lo.quantize.group = 32;  // the fixture's FFN width, 160, is a multiple of 32 only
    auto model = mimo::Model<mimo::Cpu>::load(test::tiny_fixture(), lo);
    REQUIRE_MESSAGE(model.has_value(), (model ? "" : model.error().describe()));
    // Prefill all rows (exact products over the widened codes), and decode (int8 activations).
    for (bool decode : {false, true}) {
      CAPTURE(decode);
      auto s = exact_session(*model, 64);
      double worst = 0.0;
      int agree = 0;
      for (size_t i = 0; i < prompt.size(); i += decode ? 1 : prompt.size()) {
        const size_t n = decode ? 1 : prompt.size();
        auto l = s.append(std::span<const int32_t>(prompt.data() + i, n), {.logits = mimo::OutputRows::all});
        REQUIRE(l.has_value());
        for (int64_t r = 0; r < l->rows; ++r) {
          const size_t t = i + static_cast<size_t>(r);
          const std::span<const float> want(expected.data() + t * V, V);
          double err = 0.0;
          for (int64_t v = 0; v < V; ++v) err = std::max(err, static_cast<double>(std::abs(l->row(r)[v] - want[v])));
          worst = std::max(worst, err);
          agree += test::argmax(l->row(r)) == test::argmax(want);
        }
      }
      MESSAGE(e.f.name(), std::string(decode ? " decode" : " prefill"), ": max |logit - fixture| = ", worst, ", top-1 equal at ", agree,
              "/", prompt.size());
      CHECK(worst <= e.max_error);
      CHECK(agree >= static_cast<int>(e.agreement * static_cast<double>(prompt.size())));
    }
  }
}
