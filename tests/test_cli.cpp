// The mimo command-line tool as users script it: subcommands, flags, output formats, exit codes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>

#include "mimo/backend/cpu/isa.hpp"
#include "support.hpp"

namespace {

struct Run {
  int status;
  std::string out;
  std::string err;
};

// Runs `mimo <args>` through the shell, with optional stdin text.
Run run_mimo(const std::string& args, const std::string& input = "") {
  static int counter = 0;
  const auto base = std::filesystem::temp_directory_path() / ("mimo-cli-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  test::write_text(base.string() + ".in", input);
  const std::string cmd = std::string(MIMO_BINARY_DIR) + "/mimo " + args + " < " + base.string() + ".in > " +
                          base.string() + ".out 2> " + base.string() + ".err";
  const int rc = std::system(cmd.c_str());
  Run r{WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, test::read_text(base.string() + ".out"), test::read_text(base.string() + ".err")};
  for (const char* ext : {".in", ".out", ".err"}) std::filesystem::remove(base.string() + ext);
  return r;
}

std::string last_line(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  const auto at = s.find_last_of('\n');
  return at == std::string::npos ? s : s.substr(at + 1);
}

}  // namespace

TEST_CASE("cli: generate on the embedded default model, text and ids") {
  auto r = run_mimo("generate --prompt \"Hello\" -n 12 --greedy --print-ids");
  REQUIRE_MESSAGE(r.status == 0, r.err);
  const std::string ids = last_line(r.out);
  CHECK(std::count(ids.begin(), ids.end(), ',') == 11);
  CHECK(r.err.find("generated: 12 tokens") != std::string::npos);
  CHECK(r.err.find("prompt: 1 tokens") != std::string::npos);
  // The same ids from the same token ids, and with the drafter off.
  auto again = run_mimo("generate --tokens 9707 -n 12 --greedy --print-ids --quiet --mtp-depth 0");
  REQUIRE(again.status == 0);
  CHECK(last_line(again.out) == ids);
  CHECK(again.err.empty());
  // Sampling with a seed is reproducible.
  auto s1 = run_mimo("generate --prompt Hi -n 10 --temp 0.9 --top-k 40 --top-p 0.9 --min-p 0.01 --repeat-penalty 1.1 --seed 7 --print-ids --quiet");
  auto s2 = run_mimo("generate --prompt Hi -n 10 --temp 0.9 --top-k 40 --top-p 0.9 --min-p 0.01 --repeat-penalty 1.1 --seed 7 --print-ids --quiet");
  REQUIRE(s1.status == 0);
  CHECK(last_line(s1.out) == last_line(s2.out));
}

TEST_CASE("cli: errors name what is wrong and exit with status 1") {
  auto r = run_mimo("generate --prompt hi --bogus 3");
  CHECK(r.status != 0);
  CHECK(r.err.find("unknown option '--bogus'") != std::string::npos);
  r = run_mimo("generate --model /nonexistent --tokens 1 -n 2");
  CHECK(r.status == 1);
  CHECK(r.err.find("/nonexistent") != std::string::npos);
  r = run_mimo("generate --tokens 1,x,3");
  CHECK(r.status == 1);
  CHECK(r.err.find("'x'") != std::string::npos);
  r = run_mimo("generate --tokens 999999999 -n 2");
  CHECK(r.status == 1);
  CHECK(r.err.find("token id 999999999") != std::string::npos);
  r = run_mimo("frobnicate");
  CHECK(r.status == 2);
  r = run_mimo("generate --prompt hi --backend tpu");
  CHECK(r.status == 1);
  // The CUDA backend stores f32, f16 and bf16 caches; a mimo built without CUDA says that instead.
  r = run_mimo("generate --prompt hi --backend cuda --kv-cache i8");
  CHECK(r.status == 1);
  CHECK((r.err.find("--kv-cache i8 is CPU only") != std::string::npos ||
         r.err.find("built without CUDA") != std::string::npos));
  r = run_mimo("generate --prompt hi --kv-cache f8");
  CHECK(r.status == 1);
  CHECK(r.err.find("--kv-cache must be f32, f16, bf16 or i8, not 'f8'") != std::string::npos);
}

TEST_CASE("cli: chat keeps a conversation over several turns") {
  auto r = run_mimo("chat -n 6 --greedy --system \"You are terse.\"", "Hello\nWhat is your name?\n/reset\nAgain\n/quit\n");
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(r.err.find("mimo chat:") != std::string::npos);
  // Three answers, each on its own line(s).
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') >= 3);
}

TEST_CASE("cli: tokenize, synth and logits") {
  auto t = run_mimo("tokenize --tokenizer " + std::string(MIMO_SOURCE_DIR) + "/assets/tokenizer --text \"Hello world\"");
  REQUIRE(t.status == 0);
  CHECK(t.out == "[9707,1879]\n");
  test::TempDir dir;
  auto s = run_mimo("synth --preset tiny --vocab_size 300 --num_hidden_layers 3 --num_nextn_predict_layers 2 --shards 2 --seed 4 --quiet --out " +
                (dir / "m").string());
  REQUIRE_MESSAGE(s.status == 0, s.err);
  CHECK(std::filesystem::exists(dir / "m" / "model.safetensors.index.json"));
  const auto out = dir / "l.f32";
  auto l = run_mimo("logits --model " + (dir / "m").string() + " --tokens 1,2,3,4,5 --mtp-step 1 --out " + out.string());
  REQUIRE_MESSAGE(l.status == 0, l.err);
  CHECK(std::filesystem::file_size(out) == 3 * 300 * sizeof(float));  // [T-1-K, V]
  auto bad = run_mimo("logits --model " + (dir / "m").string() + " --tokens 1,2 --mtp-step 1 --out " + out.string());
  CHECK(bad.status == 1);
  auto preset = run_mimo("synth --preset 13b --out " + (dir / "x").string());
  CHECK(preset.status == 1);
}

TEST_CASE("cli: bench prints its table") {
  auto r = run_mimo("bench --prompt 16 --gen 8 --repeat 1 --threads 1");
  REQUIRE_MESSAGE(r.status == 0, r.err);
  for (const char* row : {"| prefill (16 tokens) |", "| decode (8 tokens, MTP depth 0) |", "| weights read per token |",
                          "| measured read bandwidth |", "| fraction of bandwidth |", "| peak resident memory |",
                          "| logits hash |"}) {
    CHECK_MESSAGE(r.out.find(row) != std::string::npos, "missing row ", row);
  }
  // The same model and prompt give the same logits hash in another run.
  auto again = run_mimo("bench --prompt 16 --gen 8 --repeat 1 --threads 2");
  const auto hash = [](const std::string& s) { return s.substr(s.find("| logits hash |")); };
  CHECK(hash(again.out) == hash(r.out));
}

TEST_CASE("cli: quantize writes a checkpoint that generate runs; --quantize and --kv-cache") {
  test::TempDir dir;
  const std::string model = std::string(MIMO_BINARY_DIR) + "/default-model";
  const std::string q4 = (dir / "q4").string();
  auto q = run_mimo("quantize --in " + model + " --out " + q4 + " --type q4 --quiet");
  REQUIRE_MESSAGE(q.status == 0, q.err);
  CHECK(std::filesystem::exists(dir / "q4" / "tokenizer.json"));
  CHECK(test::read_text(dir / "q4" / "config.json").find("\"quantization_config\"") != std::string::npos);
  const std::string run = " --tokens 9707 -n 8 --greedy --print-ids --quiet --mtp-depth 0";
  auto from_file = run_mimo("generate --model " + q4 + run);
  REQUIRE_MESSAGE(from_file.status == 0, from_file.err);
  CHECK(std::count(from_file.out.begin(), from_file.out.end(), ',') == 7);
  // Quantizing while loading gives the same model, so the same tokens.
  auto on_load = run_mimo("generate --quantize q4" + run);
  REQUIRE_MESSAGE(on_load.status == 0, on_load.err);
  CHECK(last_line(on_load.out) == last_line(from_file.out));
  for (const char* kv : {"f32", "bf16", "i8"}) {
    auto r = run_mimo(std::string("generate --kv-cache ") + kv + run);
    CHECK_MESSAGE(r.status == 0, kv, ": ", r.err);
  }
  // The prefetch hint changes the speed only.
  for (const char* hint : {"nta", "t0"}) {
    auto r = run_mimo("generate --model " + q4 + " --prefetch " + hint + run);
    REQUIRE_MESSAGE(r.status == 0, hint, ": ", r.err);
    CHECK(last_line(r.out) == last_line(from_file.out));
  }
  auto bench = run_mimo("bench --model " + q4 + " --prompt 8 --gen 4 --repeat 1 --threads 1 --kv-cache i8 --prefetch nta");
  REQUIRE_MESSAGE(bench.status == 0, bench.err);
  CHECK(bench.out.find("| weights | q4 (groups of 32) |") != std::string::npos);
  CHECK(bench.out.find("| KV cache | i8 |") != std::string::npos);
  CHECK(bench.out.find("| weight prefetch hint | nta |") != std::string::npos);

  // Prefill's products: every choice runs a prompt long enough for the prefill path, and the
  // bench table names the path this CPU takes for quantized weights under each.
  std::string long_prompt = " --tokens 9707";
  for (int i = 0; i < 23; ++i) long_prompt += "," + std::to_string(100 + 37 * i);
  const mimo::cpu::Isa isa = mimo::cpu::detect_isa();
  const std::string int8_path = mimo::cpu::has_avx512(isa) && mimo::cpu::has_vnni(isa) ? "int8 dot products"
                                : mimo::cpu::has_bf16(isa)                             ? "bf16 dot products"
                                                                                       : "fp32";
  const std::pair<const char*, std::string> paths[] = {
      {"auto", int8_path}, {"int8", int8_path},
      {"bf16", mimo::cpu::has_bf16(isa) ? "bf16 dot products" : "fp32"}, {"fp32", "fp32"}};
  for (const auto& entry : paths) {
    const std::string choice = entry.first, path = entry.second;  // (doctest's CAPTURE cannot take structured bindings under clang)
    CAPTURE(choice);
    auto r = run_mimo("generate --model " + q4 + " --prefill-products " + choice + long_prompt +
                      " -n 4 --greedy --print-ids --quiet --mtp-depth 0");
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK(std::count(r.out.begin(), r.out.end(), ',') == 3);
    auto b = run_mimo("bench --model " + q4 + " --prompt 24 --gen 2 --repeat 1 --threads 1 --prefill-products " + choice);
    REQUIRE_MESSAGE(b.status == 0, b.err);
    CHECK_MESSAGE(b.out.find("| prefill products | " + path + " |") != std::string::npos, b.out);
  }

  // A quantized draft head drafts differently but emits the same tokens as plain decoding.
  const std::string drafting = " --tokens 9707 -n 16 --greedy --print-ids --quiet";
  auto plain = run_mimo("generate --mtp-depth 0" + drafting);
  REQUIRE(plain.status == 0);
  for (const char* options : {"--draft-head q8", "--draft-head q4", "--draft-layers q8", "--draft-head q4 --draft-layers q4",
                              "--draft-vocab 1000", "--draft-vocab 1000 --draft-head q4"}) {
    CAPTURE(options);
    auto drafted = run_mimo(std::string("generate --mtp-depth 2 ") + options + drafting);
    REQUIRE_MESSAGE(drafted.status == 0, drafted.err);
    CHECK(last_line(drafted.out) == last_line(plain.out));
  }

  // Errors name the option.
  const std::pair<std::string, const char*> refusals[] = {
      {"quantize --in " + model + " --out " + (dir / "x").string() + " --type q5", "--type must be q8 or q4"},
      {"quantize --in " + model + " --type q8", "--out is required"},
      {"generate --kv-cache q3" + run, "--kv-cache must be"},
      {"generate --prefetch t1" + run, "--prefetch must be nta or t0"},
      {"generate --prefill-products int4" + run, "--prefill-products must be auto, int8, bf16 or fp32"},
      {"generate --quantize q2" + run, "--quantize must be"},
      {"generate --draft-head q5" + run, "--draft-head must be"},
      {"generate --draft-layers int4" + run, "--draft-layers must be"},
      {"generate --draft-vocab 200000" + run, "draft_vocab 200000 is not in [0, 151680]"},
      {"generate --draft-vocab many" + run, "--draft-vocab"},
  };
  for (const auto& refusal : refusals) {
    CAPTURE(refusal.first);
    auto refused = run_mimo(refusal.first);
    CHECK(refused.status == 1);
    CHECK(refused.err.find(refusal.second) != std::string::npos);
  }
}
