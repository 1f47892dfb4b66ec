// mimo quantize --in DIR --out DIR --type {q8,q4} [--group G] [--min] [--head {q8,q4,keep}]
//               [--keep-mtp] [--threads N] [--quiet]
//
// Writes a quantized copy of a checkpoint that the library memory-maps directly: the same
// safetensors files, each projection as int8 or packed int4 codes beside its F16 group scales
// (and minimums with --min), config.json with a "quantization_config" entry, the tokenizer
// files. The format is documented in include/mimo/quant.hpp. Streams: the input is read once,
// block by block, and never held in memory.
//   --group G     columns per scale (a power of two from 32; default 64 for q8, 32 for q4)
//   --min         q4 with a minimum per group (asymmetric) instead of symmetric codes
//   --head T      lm_head's format (default q8; keep: as stored)
//   --keep-mtp    leave the MTP layers as stored (a full-precision drafter)
#include <cstdio>
#include <string>

#include <mimo/quantize.hpp>

#include "args.hpp"
#include "commands.hpp"

namespace {

mimo::Expected<mimo::QuantType> parse_type(const std::string& option, const std::string& v, bool allow_keep) {
  if (v == "q8") return mimo::QuantType::q8;
  if (v == "q4") return mimo::QuantType::q4;
  if (allow_keep && v == "keep") return mimo::QuantType::none;
  return mimo::Error(mimo::Errc::invalid_argument,
                     "--" + option + " must be q8" + std::string(allow_keep ? ", q4 or keep" : " or q4") + ", not '" + v + "'");
}

}  // namespace

int cmd_quantize(int argc, char** argv) {
  using namespace mimo;
  auto args = cli::Args::parse(argc, argv, {"in", "out", "type", "group", "head", "threads"}, {"min", "keep-mtp", "quiet"});
  if (!args) return cli::fail("quantize", args.error());
  for (const char* required : {"in", "out", "type"}) {
    if (!args->has(required)) {
      return cli::fail("quantize", Error(Errc::invalid_argument, std::string("--") + required + " is required"));
    }
  }
  QuantizeOptions o;
  auto type = parse_type("type", args->get("type"), false);
  if (!type) return cli::fail("quantize", type.error());
  o.type = *type;
  auto head = parse_type("head", args->get("head", "q8"), true);
  if (!head) return cli::fail("quantize", head.error());
  o.lm_head = *head;
  auto group = args->get_int("group", 0);
  if (!group) return cli::fail("quantize", group.error());
  if (*group != 0 && !quantizable(*group, *group)) {
    return cli::fail("quantize", Error(Errc::invalid_argument, "--group must be a power of two from 32 to 4096"));
  }
  o.group = *group;
  auto threads = args->get_int("threads", 0);
  if (!threads) return cli::fail("quantize", threads.error());
  if (*threads < 0 || *threads > 1024) return cli::fail("quantize", Error(Errc::invalid_argument, "--threads must be in [0, 1024]"));
  o.threads = static_cast<int>(*threads);
  o.with_min = args->flag("min");
  o.keep_mtp = args->flag("keep-mtp");
  if (o.with_min && o.type != QuantType::q4) {
    return cli::fail("quantize", Error(Errc::invalid_argument, "--min applies to --type q4"));
  }

  const bool quiet = args->flag("quiet");
  int last_percent = -1;
  auto st = write_quantized_checkpoint(args->get("in"), args->get("out"), o, [&](uint64_t done, uint64_t total) {
    const int percent = static_cast<int>(100 * done / (total ? total : 1));
    if (!quiet && percent != last_percent) {
      std::fprintf(stderr, "\rmimo quantize: %3d%% of %.2f GB", percent, static_cast<double>(total) / 1e9);
      last_percent = percent;
    }
    return true;
  });
  if (!quiet) std::fprintf(stderr, "\n");
  if (!st) return cli::fail("quantize", st.error());
  return 0;
}
