// mimo logits --model DIR --tokens 1,2,3 --out FILE [--mtp-step K] [--threads N]
// Writes little-endian float32 logits: [T, V] for the main model at every position, or
// [T-1-K, V] for MTP step K at positions 0..T-2-K (the given tokens are the next tokens).
#include <cstdio>
#include <numeric>
#include <vector>

#include <mimo/mimo.hpp>

#include "args.hpp"
#include "commands.hpp"
#include "cpu_model.hpp"

int cmd_logits(int argc, char** argv) {
  using namespace mimo;
  auto args = cli::Args::parse(argc, argv, {"model", "tokens", "out", "mtp-step", "threads"}, {});
  if (!args) return cli::fail("logits", args.error());
  for (const char* required : {"tokens", "out"}) {
    if (!args->has(required)) {
      return cli::fail("logits", Error(Errc::invalid_argument, std::string("--") + required + " is required"));
    }
  }
  auto tokens = cli::Args::parse_ids("tokens", args->get("tokens"));
  if (!tokens) return cli::fail("logits", tokens.error());
  auto step = args->get_int("mtp-step", -1);
  if (!step) return cli::fail("logits", step.error());
  auto threads = args->get_int("threads", 0);
  if (!threads) return cli::fail("logits", threads.error());
  const std::string dir = args->get("model", cli::default_model_dir(cli::program_path(argv)).string());

  auto model = Model<Cpu>::load(dir);
  if (!model) return cli::fail("logits", model.error());
  const int64_t T = static_cast<int64_t>(tokens->size());
  const int64_t K = *step;
  if (K >= 0 && T < K + 2) {
    return cli::fail("logits", Error(Errc::invalid_argument, "MTP step " + std::to_string(K) + " needs at least " +
                                                                 std::to_string(K + 2) + " tokens"));
  }
  const int64_t batch = std::max<int64_t>(T, 1);
  auto session = model->new_session(
      {.context = std::max<int64_t>(T, 1),
       .batch = batch,
       .backend = {.threads = static_cast<int>(*threads), .exact = true, .kv_cache = mimo::cpu::KvType::f32}});  // reference logits: fp32 throughout
  if (!session) return cli::fail("logits", session.error());

  const bool mtp = K >= 0;
  auto logits = session->append(*tokens, {.logits = mtp ? OutputRows::none : OutputRows::all,
                                          .hidden = mtp ? OutputRows::all : OutputRows::none});
  if (!logits) return cli::fail("logits", logits.error());
  // MTP step k at positions 0..T-2-k: chain the steps teacher-forced on the given tokens.
  for (int64_t k = 0; mtp && k <= K; ++k) {
    const int64_t n = T - 1 - k;
    std::vector<int32_t> rows(static_cast<size_t>(n));
    std::iota(rows.begin(), rows.end(), 0);
    std::vector<int64_t> positions(rows.begin(), rows.end());
    std::vector<int32_t> next(tokens->begin() + 1 + k, tokens->end());
    logits = session->mtp_forward({.step = static_cast<int>(k), .source_rows = rows, .tokens = next,
                                   .positions = positions, .logits = k == K ? OutputRows::all : OutputRows::none});
    if (!logits) return cli::fail("logits", logits.error());
  }
  std::FILE* f = std::fopen(args->get("out").c_str(), "wb");
  if (!f) return cli::fail("logits", Error(Errc::io, args->get("out") + ": cannot create"));
  const size_t count = static_cast<size_t>(logits->rows * logits->vocab);
  const bool good = std::fwrite(logits->data, sizeof(float), count, f) == count;  // x86/ARM: little-endian
  if (std::fclose(f) != 0 || !good) return cli::fail("logits", Error(Errc::io, args->get("out") + ": write failed"));
  return 0;
}
