#!/usr/bin/env bash
# mimo and llama.cpp on the same machine, the same weights and the same thread count: prefill and
# decode tokens/s at bf16, 8-bit and 4-bit, as one table.
#
#   benchmarks/llama_cpp/compare.sh --model DIR [--work DIR] [--threads 2] [--prompt 512] [--gen 16] [--repeat 3] [--reuse]
#
# DIR is a bf16 mimo checkpoint (`build/mimo synth --preset 7b --out DIR`). Needs the build
# (build/mimo, build/benchmarks/export_gguf), npm, git, cmake, ninja and about 45 GB of disk under the
# work directory (default /tmp/mimo-llama-cpp) for the GGUF and quantized copies.
#
# llama.cpp's source comes from the npm registry (node-llama-cpp ships a git bundle of the
# llama.cpp release it binds; the registry is what this project's machines can reach) and is
# built here for this CPU (GGML_NATIVE). The weights are exported once (export_gguf) and
# quantized by each engine's own tool: llama-quantize to Q8_0, Q4_0 and Q4_K_M, `mimo quantize`
# to q8 and q4. llama-bench and `mimo bench` then run one after the other per precision, so both
# see the same machine state; each reports medians (mimo) or means (llama-bench) over --repeat runs.
# With --reuse, a benchmark whose output is already in the work directory is not run again (to
# finish an interrupted comparison or redraw its table).
set -euo pipefail

model="" work=/tmp/mimo-llama-cpp threads=2 prompt=512 gen=16 repeat=3 reuse=0
node_llama_cpp=3.22.1  # llama.cpp of 2026-09-28
while [ $# -gt 0 ]; do
  if [ "$1" = --reuse ]; then reuse=1; shift; continue; fi
  case "$1" in
    --model) model=$2 ;; --work) work=$2 ;; --threads) threads=$2 ;; --prompt) prompt=$2 ;;
    --gen) gen=$2 ;; --repeat) repeat=$2 ;;
    *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
[ -n "$model" ] || { echo "compare.sh: --model DIR (a bf16 mimo checkpoint) is required" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
mimo=$root/build/mimo
for f in "$mimo" "$root/build/benchmarks/export_gguf"; do
  [ -x "$f" ] || { echo "compare.sh: $f is missing; build the project first" >&2; exit 2; }
done
mkdir -p "$work"
log=$work/log.txt
: > "$log"
step() { echo "compare.sh: $*" >&2; }

llama=$work/llama.cpp
if [ ! -x "$llama/build/bin/llama-bench" ]; then
  step "fetching llama.cpp (node-llama-cpp@$node_llama_cpp from npm) and building it"
  (cd "$work" && rm -rf package node-llama-cpp-*.tgz && npm pack -q "node-llama-cpp@$node_llama_cpp" >> "$log" &&
     tar xzf "node-llama-cpp-$node_llama_cpp.tgz" package/llama/gitRelease.bundle)
  rm -rf "$llama" && git clone -q "$work/package/llama/gitRelease.bundle" "$llama" 2>> "$log"
  cmake -S "$llama" -B "$llama/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >> "$log"
  ninja -C "$llama/build" llama-bench llama-quantize >> "$log"
fi
bin=$llama/build/bin

gguf=$work/gguf
mkdir -p "$gguf"
if [ ! -f "$gguf/bf16.gguf" ]; then
  step "exporting $model to GGUF"
  "$root/build/benchmarks/export_gguf" --model "$model" --tokenizer "$root/assets/tokenizer/tokenizer.json" \
    --out "$gguf/bf16.gguf" >> "$log"
fi
for type in Q8_0 Q4_0 Q4_K_M; do
  if [ ! -f "$gguf/$type.gguf" ]; then
    step "llama-quantize $type"
    "$bin/llama-quantize" "$gguf/bf16.gguf" "$gguf/$type.gguf" "$type" "$threads" >> "$log" 2>&1
  fi
done
for type in q8 q4; do
  if [ ! -f "$work/mimo-$type/config.json" ]; then
    step "mimo quantize $type"
    "$mimo" quantize --in "$model" --out "$work/mimo-$type" --type "$type" >> "$log" 2>&1
  fi
done

# llama-bench's tokens/s (mean) of a test such as pp512 or tg16, from its CSV output.
llama_rate() {
  awk -F, -v test="$2" 'NR == 1 { for (i = 1; i <= NF; i++) { gsub(/"/, "", $i); col[$i] = i } next }
    { p = $col["n_prompt"]; g = $col["n_gen"]; gsub(/"/, "", p); gsub(/"/, "", g); t = $col["avg_ts"]; gsub(/"/, "", t)
      if ((test == "pp" && g == 0) || (test == "tg" && p == 0)) printf "%.2f", t }' "$1"
}
# "1.77x": $1 / $2.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
# A row of `mimo bench`'s table: the value after the first "|" cell that starts with $2.
mimo_value() { awk -F'|' -v key="$2" 'index($2, " " key) == 1 { v = $3; gsub(/^ +| +$/, "", v); print v; exit }' "$1"; }

row() {  # precision, GGUF name, mimo checkpoint
  if [ "$reuse" = 0 ] || [ ! -s "$work/llama-$2.csv" ]; then
    step "llama-bench $2"
    "$bin/llama-bench" -m "$gguf/$2.gguf" -t "$threads" -p "$prompt" -n "$gen" -r "$repeat" -o csv > "$work/llama-$2.csv" 2>> "$log"
  fi
  local out
  out=$work/mimo-$(basename "$3").txt
  if [ "$reuse" = 1 ] && [ -s "$out" ]; then benched[$3]=1; fi
  if [ -z "${benched[$3]:-}" ]; then  # once per checkpoint: mimo q4 meets both Q4_0 and Q4_K_M
    step "mimo bench $3"
    "$mimo" bench --model "$3" --prompt "$prompt" --gen "$gen" --repeat "$repeat" --threads "$threads" > "$out" 2>> "$log"
    benched[$3]=1
  fi
  local mimo_pp mimo_tg bw
  mimo_pp=$(mimo_value "$out" "prefill (" | awk '{print $1}')
  mimo_tg=$(mimo_value "$out" "decode (" | awk '{print $1}')
  bw=$(mimo_value "$out" "measured read bandwidth" | awk '{print $1}')
  local l_pp l_tg
  l_pp=$(llama_rate "$work/llama-$2.csv" pp)
  l_tg=$(llama_rate "$work/llama-$2.csv" tg)
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$l_pp" "$mimo_pp" "$(ratio "$mimo_pp" "$l_pp")" \
    "$l_tg" "$mimo_tg" "$(ratio "$mimo_tg" "$l_tg")" "$bw" >> "$work/table.md"
}

declare -A benched
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
  echo "$cpu, $threads threads; prompt $prompt tokens, $gen decoded, $repeat repetitions"
  echo
  echo "| weights | llama.cpp type | llama.cpp prefill | mimo prefill | mimo / llama.cpp | llama.cpp decode | mimo decode | mimo / llama.cpp | bandwidth probe (GB/s) |"
  echo "|---|---|---|---|---|---|---|---|---|"
} > "$work/table.md"
row bf16 bf16 "$model"
row 8-bit Q8_0 "$work/mimo-q8"
row 4-bit Q4_0 "$work/mimo-q4"
row 4-bit Q4_K_M "$work/mimo-q4"
cat "$work/table.md"
