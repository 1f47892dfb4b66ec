#!/usr/bin/env bash
# One-shot check of the CUDA backend on a machine with an NVIDIA GPU, in well under 10 minutes. On
# an H200 (2026-12-04, --no-build): tests 6 s, synthesizing MiMo-7B 31 s, benchmark 50 s; the
# build takes 2-3 minutes on 2 cores:
#   1. installs what is missing (cmake, ninja, Eigen, simdjson, doctest) when apt-get can,
#   2. builds the CUDA targets only (tests, benchmark, the mimo tool for `synth`),
#   3. runs the CUDA tests (every op against the CPU backend, the tiny-mimo fixture, generated
#      shapes, sessions, speculative decoding, graphs),
#   4. synthesizes `mimo synth --preset 7b` (15.6 GB, kept for later runs) and runs bench_cuda,
#   5. prints one table: the test results, then the benchmark's.
#
#   tests/gpu/check.sh [--tests-only] [--quick] [--no-build] [--profile]
#   --no-build: use the binaries already in BUILD_DIR (configured with -DMIMO_CUDA=ON and built
#               with the targets mimo_cuda_all and mimo_cli on another machine, e.g. one without
#               a GPU); skips the packages and the build, so the GPU machine needs only ctest.
#               The build holds the build machine's absolute paths (its CTest files, the fixtures
#               directory compiled into the tests): make them valid there, e.g. with symlinks.
#   --profile:  then the time of every kernel of one decode step, read by ncu (Nsight Compute)
#               over a 2-layer model of the 7B shape (tests/gpu/ncu_step.py): after a 200-token
#               prompt with the plain and with the fused kernels, and after a 4096-token prompt
#               with f32 and f16 KV caches (what decode attention costs at that length).
#   environment: BUILD_DIR (default build-gpu), MODEL_DIR (default $TMPDIR/mimo-7b-synth),
#                CUDA_ARCH (default: the GPU's compute capability, e.g. 90), JOBS, PEAK_GBS (4800)
# Exit status: 0 when everything passed, 1 on a failure, 2 when the machine cannot run the check.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$root/build-gpu}
model=${MODEL_DIR:-${TMPDIR:-/tmp}/mimo-7b-synth}
jobs=${JOBS:-$(nproc)}
peak=${PEAK_GBS:-4800}
tests_only=0
quick=0
no_build=0
profile=0
for a in "$@"; do
  case "$a" in
    --tests-only) tests_only=1 ;;
    --quick) quick=1 ;;
    --no-build) no_build=1 ;;
    --profile) profile=1 ;;
    *) echo "usage: $0 [--tests-only] [--quick] [--no-build] [--profile]" >&2; exit 2 ;;
  esac
done

start=$(date +%s)
logs="$build/check-logs"
mkdir -p "$logs"
say() { printf '== [%4ds] %s\n' $(( $(date +%s) - start )) "$*"; }
# Runs a step with its output in a log; on failure prints the log's tail and exits.
run() {
  local name=$1; shift
  if ! "$@" >"$logs/$name.log" 2>&1; then
    say "FAILED: $name (log: $logs/$name.log)"
    tail -n 60 "$logs/$name.log"
    exit 1
  fi
}

# --- the machine ---
if [ -d /usr/local/cuda/bin ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "check.sh: no working nvidia-smi: this machine has no usable NVIDIA GPU" >&2
  exit 2
fi
if [ $no_build -eq 0 ] && ! command -v nvcc >/dev/null 2>&1; then
  echo "check.sh: nvcc not found (install the CUDA Toolkit, or put its bin/ on PATH)" >&2
  exit 2
fi
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | head -n 1)
compiler=""
if [ $no_build -eq 0 ]; then compiler="; $(nvcc --version | tail -n 1)"; fi
say "GPU: $gpu$compiler"
arch=${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')}
case "$arch" in ''|*[!0-9]*) arch=90 ;; esac

if [ $no_build -eq 1 ]; then
  for f in tests/cuda/test_cuda_ops tests/cuda/test_cuda_model benchmarks/bench_cuda mimo CTestTestfile.cmake; do
    if [ ! -e "$build/$f" ]; then
      echo "check.sh: --no-build, but $build/$f is missing (build mimo_cuda_all and mimo_cli there first)" >&2
      exit 2
    fi
  done
  if ! command -v ctest >/dev/null 2>&1; then
    echo "check.sh: ctest not found (install CMake)" >&2
    exit 2
  fi
  say "using the binaries in $build"
else
  # --- packages: install only what is missing ---
  missing=()
  for p in cmake ninja-build g++ libeigen3-dev libsimdjson-dev doctest-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >"$logs/apt.log" 2>&1; then
      echo "check.sh: could not install ${missing[*]} (see $logs/apt.log); install them and run again" >&2
      exit 2
    fi
  fi

  # --- build: the CUDA targets and the mimo tool only ---
  say "configuring $build (CUDA architecture $arch)"
  run configure cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMIMO_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DMIMO_BUILD_EXAMPLES=OFF
  say "building (-j$jobs)"
  run build cmake --build "$build" --target mimo_cuda_all mimo_cli -j "$jobs"
fi

# --- tests ---
say "running the CUDA tests"
ctest --test-dir "$build" -L cuda --output-on-failure --timeout 900 >"$logs/tests.log" 2>&1
tests_status=$?
# A test that finds no usable GPU skips itself, which CTest counts as passed; here that is a
# failure (a driver or runtime mismatch, say).
if grep -qE '\*\*\*Skipped|Not Run' "$logs/tests.log"; then
  say "CUDA tests were skipped: the tests found no usable GPU"
  "$build/tests/cuda/test_cuda_no_exceptions" 2>&1 | head -n 3  # says why
  tests_status=1
fi
if ! grep -qE '^ *[0-9]+/[0-9]+ Test +#' "$logs/tests.log"; then
  say "no CUDA tests ran"
  tests_status=1
fi
test_rows=$(grep -E '^ *[0-9]+/[0-9]+ Test +#[0-9]+: ' "$logs/tests.log" |
  sed -E 's/^ *[0-9]+\/[0-9]+ Test +#[0-9]+: ([^ ]+) [ .*]*(Passed|Failed|Skipped|Not Run|Timeout|Exception)?[^0-9]*([0-9.]+ sec).*/| \1 | \2 | \3 |/')
if [ $tests_status -ne 0 ]; then
  say "CUDA tests FAILED (log: $logs/tests.log); the failures:"
  grep -E 'ERROR|CHECK|REQUIRE|FAILED|Failed|error' "$logs/tests.log" | head -n 60
fi

# --- benchmark on a synthesized MiMo-7B ---
bench_status=0
if [ $tests_only -eq 0 ]; then
  if [ ! -f "$model/config.json" ] || [ ! -f "$model/.complete" ]; then
    free_gb=$(df -Pk "$(dirname "$model")" | awk 'NR==2 {print int($4 / 1048576)}')
    if [ "${free_gb:-0}" -lt 17 ]; then
      echo "check.sh: $(dirname "$model") has ${free_gb} GB free; MiMo-7B needs 16 (set MODEL_DIR)" >&2
      exit 2
    fi
    say "synthesizing MiMo-7B into $model (15.6 GB)"
    rm -rf "$model"
    run synth "$build/mimo" synth --preset 7b --seed 0 --quiet --out "$model"
    touch "$model/.complete"
  fi
  say "benchmark"
  bench_args=(--model "$model" --peak-gbs "$peak")
  if [ $quick -eq 1 ]; then bench_args+=(--decode 64 --reps 1 --prefill 512,4096 --depths 1,3); fi
  "$build/benchmarks/bench_cuda" "${bench_args[@]}" >"$logs/bench.log" 2>&1
  bench_status=$?
  if [ $bench_status -ne 0 ]; then
    say "bench_cuda FAILED (log: $logs/bench.log)"
    tail -n 40 "$logs/bench.log"
  fi
fi

# --- per-kernel times of a decode step ---
profile_status=0
if [ $profile -eq 1 ]; then
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
  if [ -z "$ncu" ]; then
    say "profile skipped: ncu not found"
  else
    say "profile: ncu over one decode step of a 2-layer model of the 7B shape"
    small="$model-2-layers"
    if [ ! -f "$small/.complete" ]; then
      rm -rf "$small"
      run synth-small "$build/mimo" synth --preset 7b --num_hidden_layers 2 --seed 0 --quiet --out "$small"
      touch "$small/.complete"
    fi
    # A 200-token prompt, then 4 decode steps, with the plain kernels and then with the fused
    # ones; a 4096-token prompt and 2 steps with each cache type. ncu leaves the clocks as they
    # are (and runs kernels one at a time: programmatic launches cannot overlap under it).
    : >"$logs/profile.md"
    for variant in plain fused long-f32 long-f16; do
      flags=(--prompt 200 --steps 4)
      case $variant in
        fused) flags+=(--fuse-kernels) ;;
        long-*) flags=(--prompt 4096 --steps 2 --kv-cache "${variant#long-}") ;;
      esac
      "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
        "$build/benchmarks/bench_cuda" --model "$small" "${flags[@]}" \
        >"$logs/ncu-$variant.csv" 2>"$logs/ncu-$variant.log"
      status=$?
      if [ $status -eq 0 ]; then
        { echo "### $variant kernels"; echo; python3 "$root/tests/gpu/ncu_step.py" "$logs/ncu-$variant.csv"; echo; } \
          >>"$logs/profile.md" || status=$?
      fi
      if [ $status -ne 0 ]; then
        say "profile FAILED (logs: $logs/ncu-$variant.log, $logs/ncu-$variant.csv)"
        tail -n 20 "$logs/ncu-$variant.log"
        profile_status=$status
      fi
    done
  fi
fi

# --- the table ---
echo
revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')
if ! git -C "$root" diff --quiet HEAD 2>/dev/null; then revision="$revision with local changes"; fi
echo "## CUDA backend check: $gpu ($revision)"
echo
echo "| test | result | time |"
echo "|---|---|---|"
echo "$test_rows"
if [ $tests_only -eq 0 ] && [ -f "$logs/bench.log" ]; then
  echo
  grep -E '^(mimo CUDA benchmark|model )' "$logs/bench.log"
  echo
  grep -E '^\|' "$logs/bench.log"
fi
if [ $profile -eq 1 ] && [ -f "$logs/profile.md" ]; then
  echo
  cat "$logs/profile.md"
fi
echo
say "done (tests: $([ $tests_status -eq 0 ] && echo passed || echo FAILED), benchmark: $([ $tests_only -eq 1 ] && echo skipped || { [ $bench_status -eq 0 ] && echo ok || echo FAILED; })$([ $profile -eq 1 ] && echo ", profile: $([ $profile_status -eq 0 ] && echo ok || echo FAILED)"))"
[ $tests_status -eq 0 ] && [ $bench_status -eq 0 ] && [ $profile_status -eq 0 ]
