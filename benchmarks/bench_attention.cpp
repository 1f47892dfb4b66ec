// CPU attention over the KV cache at MiMo-7B's shape (32 query heads, 8 KV heads, head_dim 128),
// for each KV element type.
//
//   bench_attention [--threads N] [--isa scalar|avx2|avx512] [--reps R] [--quick]
//
// decode   one query row at context 512, 4k, 16k and 32k: time of one layer's attention (median of
//          R calls) and the GB/s of keys and values it reads. Each call reads another layer of a
//          cache of several layers (at least 512 MiB in all), so the figures are for memory, not
//          for a cache that stays in L3 between calls. The memory read bandwidth measured in the
//          same run is printed for comparison. "old" is the scalar fp32 attention this library had
//          before (kept here as the baseline; 512 and 4k only, it is slow).
// prefill  512 and 4096 prompt tokens in chunks of 256 rows, as a session appends them: the time
//          for one layer (median of R/3 runs) and the useful GFLOP/s (4 * head_dim flops per query
//          head and visible key).
// A checksum of the outputs is printed so runs of different ISAs or threads can be compared
// (identical across thread counts; types differ by their rounding).
#include <mimo/backend/cpu/cpu.hpp>
#include <mimo/backend/cpu/bandwidth.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_args.hpp"

namespace {

using mimo::cpu::Isa;
using mimo::cpu::KvType;

constexpr int64_t kHeads = 32, kKvHeads = 8, kHeadDim = 128;
const mimo::AttentionShape kShape{kHeads, kKvHeads, kHeadDim, 1e6};

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "bench_attention: %s\n", what.c_str());
  std::exit(1);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Buffer {
  mimo::detail::AlignedBuffer<float> data;
  mimo::Rows rows;
  Buffer(int64_t n, int64_t width) {
    if (!data.reserve(static_cast<uint64_t>(n * width), "rows")) fail("out of memory");
    rows = {data.data(), n, width, width};
  }
};

void fill(const mimo::Rows& r, std::mt19937& rng) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int64_t i = 0; i < r.count; ++i) {
    for (int64_t c = 0; c < r.width; ++c) r.row(i)[c] = g(rng);
  }
}

uint64_t checksum(const mimo::Rows& r) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t i = 0; i < r.count; ++i) {
    for (int64_t c = 0; c < r.width; ++c) {
      uint32_t bits;
      std::memcpy(&bits, r.row(i) + c, 4);
      h = (h ^ bits) * 1099511628211ull;
    }
  }
  return h;
}

// Fills entries [0, n) of every layer with random keys and values, a chunk at a time.
void fill_cache(mimo::cpu::KvCache& kv, int64_t n, std::mt19937& rng) {
  const int64_t chunk = 256;
  Buffer k(chunk, kKvHeads * kHeadDim), v(chunk, kKvHeads * kHeadDim);
  fill(k.rows, rng);
  fill(v.rows, rng);
  for (int64_t layer = 0; layer < kv.layers; ++layer) {
    for (int64_t first = 0; first < n; first += chunk) {
      const int64_t m = std::min(chunk, n - first);
      kv.store(layer, first, k.rows.slice(0, m), v.rows.slice(0, m));
    }
  }
}

// The attention of this library before the SIMD kernels (fp32 cache [head][entry][d], scalar
// loops), kept as the baseline of the table.
void old_attention(mimo::cpu::ThreadPool& pool, const float* keys, const float* values, int64_t capacity,
                   int64_t length, const float* q, float* out, float* scratch) {
  const int64_t kvh = kKvHeads, d = kHeadDim, group = kHeads / kKvHeads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  pool.run([&](int t, int nt) {
    float* scores = scratch + static_cast<int64_t>(t) * group * capacity;
    for (int64_t h = kvh * t / nt; h < kvh * (t + 1) / nt; ++h) {
      const int64_t entries = length + 1;
      const float* kh = keys + h * capacity * d;
      const float* vh = values + h * capacity * d;
      for (int64_t g = 0; g < group; ++g) {
        const float* qh = q + (h * group + g) * d;
        float* s = scores + g * capacity;
        float mx = -INFINITY;
        for (int64_t j = 0; j < entries; ++j) {
          float dot = 0.0f;
          for (int64_t c = 0; c < d; ++c) dot += qh[c] * kh[j * d + c];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < entries; ++j) {
          s[j] = std::exp(s[j] - mx);
          sum += s[j];
        }
        float* o = out + (h * group + g) * d;
        std::fill(o, o + d, 0.0f);
        for (int64_t j = 0; j < entries; ++j) {
          const float p = s[j] / sum;
          for (int64_t c = 0; c < d; ++c) o[c] += p * vh[j * d + c];
        }
      }
    }
  });
}

struct Options {
  int threads = 0;
  Isa isa = mimo::cpu::detect_isa();
  int reps = 15;
  bool quick = false;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(a + " needs a value");
      return argv[++i];
    };
    if (a == "--threads") o.threads = static_cast<int>(bench::integer("bench_attention", a, value().c_str(), 0, 1024));
    else if (a == "--reps") o.reps = static_cast<int>(bench::integer("bench_attention", a, value().c_str(), 3, 100000));
    else if (a == "--quick") o.quick = true;
    else if (a == "--isa") {
      const std::string v = value();
      o.isa = v == "scalar" ? Isa::scalar : v == "avx2" ? Isa::avx2 : v == "avx512" ? Isa::avx512 : o.isa;
      if (!mimo::cpu::isa_supported(o.isa)) fail("this machine cannot run " + v);
    } else {
      fail("unknown option " + a + " (--threads N, --isa scalar|avx2|avx512, --reps R, --quick)");
    }
  }
  auto pool = mimo::cpu::ThreadPool::create(o.threads);
  if (!pool) fail(pool.error().describe());
  const auto bandwidth = mimo::cpu::measure_read_bandwidth(**pool, 512ull << 20);
  std::printf("attention at MiMo-7B shape (%lld heads, %lld KV heads, head_dim %lld), %d threads, %s; memory read %.1f GB/s\n\n",
              static_cast<long long>(kHeads), static_cast<long long>(kKvHeads), static_cast<long long>(kHeadDim),
              (*pool)->size(), std::string(mimo::cpu::to_string(o.isa)).c_str(), bandwidth ? *bandwidth : 0.0);

  const std::vector<int64_t> contexts = o.quick ? std::vector<int64_t>{512, 4096} : std::vector<int64_t>{512, 4096, 16384, 32768};
  const KvType types[] = {KvType::f32, KvType::f16, KvType::bf16, KvType::i8};
  std::mt19937 rng(1);

  std::printf("decode: one row, one layer (median of %d)\n", o.reps);
  std::printf("%-8s %-6s %12s %10s %10s %18s\n", "context", "kv", "ms/layer", "GB/s", "of mem", "checksum");
  for (int64_t ctx : contexts) {
    for (KvType type : types) {
      const int64_t capacity = ctx + 1;
      mimo::cpu::KvCache probe;
      if (!probe.allocate(type, 1, kKvHeads, kHeadDim, capacity)) fail("out of memory");
      const uint64_t layer_bytes = probe.bytes();
      const int64_t layers = std::max<int64_t>(1, static_cast<int64_t>((512ull << 20) / layer_bytes));
      probe = {};
      auto c = mimo::Cpu::make_context({.pool = *pool, .isa = o.isa, .kv_cache = type}, kShape, capacity, 64);
      if (!c) fail(c.error().describe());
      mimo::cpu::KvCache kv;
      if (auto s = mimo::Cpu::make_kv_cache(*c, kv, layers, kShape, capacity); !s) fail(s.error().describe());
      fill_cache(kv, ctx, rng);
      Buffer q(1, kHeads * kHeadDim), k(1, kKvHeads * kHeadDim), v(1, kKvHeads * kHeadDim), out(1, kHeads * kHeadDim);
      fill(q.rows, rng);
      fill(k.rows, rng);
      fill(v.rows, rng);
      std::vector<double> times;
      for (int r = 0; r < o.reps + 2; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        mimo::Cpu::attention(*c, kv, r % layers, ctx, q.rows, k.rows, v.rows, kShape, out.rows);
        if (r >= 2) times.push_back(seconds_since(t0));
      }
      const double t = median(times);
      const double bytes = static_cast<double>(2 * kv.part_bytes + kv.scale_bytes) * kKvHeads * static_cast<double>(ctx + 1) / mimo::cpu::kKvBlock;
      const double gbs = bytes / t / 1e9;
      std::printf("%-8lld %-6s %12.3f %10.1f %9.0f%% %18llx\n", static_cast<long long>(ctx),
                  std::string(mimo::cpu::to_string(type)).c_str(), t * 1e3, gbs,
                  bandwidth ? 100.0 * gbs / *bandwidth : 0.0, static_cast<unsigned long long>(checksum(out.rows)));
    }
    if (ctx <= 4096) {  // the old kernel
      const int64_t capacity = ctx + 1;
      const int64_t layers = std::max<int64_t>(1, static_cast<int64_t>((512ull << 20) / (2ull * kKvHeads * capacity * kHeadDim * 4)));
      mimo::detail::AlignedBuffer<float> keys, values, scratch;
      const uint64_t n = static_cast<uint64_t>(layers) * kKvHeads * capacity * kHeadDim;
      if (!keys.reserve(n, "k") || !values.reserve(n, "v") ||
          !scratch.reserve(static_cast<uint64_t>((*pool)->size()) * 4 * capacity, "s"))
        fail("out of memory");
      std::normal_distribution<float> g(0.0f, 1.0f);
      for (uint64_t i = 0; i < n; ++i) keys.data()[i] = values.data()[i] = g(rng);
      Buffer q(1, kHeads * kHeadDim), out(1, kHeads * kHeadDim);
      fill(q.rows, rng);
      std::vector<double> times;
      for (int r = 0; r < std::max(3, o.reps / 3) + 1; ++r) {
        const int64_t layer = r % layers;
        const uint64_t off = static_cast<uint64_t>(layer) * kKvHeads * capacity * kHeadDim;
        const auto t0 = std::chrono::steady_clock::now();
        old_attention(**pool, keys.data() + off, values.data() + off, capacity, ctx, q.rows.data, out.rows.data,
                      scratch.data());
        if (r >= 1) times.push_back(seconds_since(t0));
      }
      const double t = median(times);
      const double gbs = 2.0 * kKvHeads * static_cast<double>(ctx + 1) * kHeadDim * 4 / t / 1e9;
      std::printf("%-8lld %-6s %12.3f %10.1f %9.0f%% %18s\n", static_cast<long long>(ctx), "old", t * 1e3, gbs,
                  bandwidth ? 100.0 * gbs / *bandwidth : 0.0, "(f32 scalar)");
    }
  }

  std::printf("\nprefill: prompt in chunks of 256 rows, one layer (median of %d)\n", std::max(3, o.reps / 3));
  std::printf("%-8s %-6s %12s %10s %18s\n", "tokens", "kv", "ms/layer", "GFLOP/s", "checksum");
  for (int64_t tokens : {int64_t{512}, int64_t{4096}}) {
    for (KvType type : types) {
      auto c = mimo::Cpu::make_context({.pool = *pool, .isa = o.isa, .kv_cache = type}, kShape, tokens, 256);
      if (!c) fail(c.error().describe());
      mimo::cpu::KvCache kv;
      if (auto s = mimo::Cpu::make_kv_cache(*c, kv, 1, kShape, tokens); !s) fail(s.error().describe());
      const int64_t chunk = 256;
      Buffer q(chunk, kHeads * kHeadDim), k(chunk, kKvHeads * kHeadDim), v(chunk, kKvHeads * kHeadDim),
          out(chunk, kHeads * kHeadDim);
      fill(q.rows, rng);
      fill(k.rows, rng);
      fill(v.rows, rng);
      std::vector<double> times;
      for (int r = 0; r < std::max(3, o.reps / 3); ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t first = 0; first < tokens; first += chunk) {
          const int64_t m = std::min(chunk, tokens - first);
          mimo::Cpu::attention(*c, kv, 0, first, q.rows.slice(0, m), k.rows.slice(0, m), v.rows.slice(0, m), kShape,
                               out.rows.slice(0, m));
        }
        times.push_back(seconds_since(t0));
      }
      const double t = median(times);
      const double pairs = static_cast<double>(tokens) * static_cast<double>(tokens + 1) / 2.0;
      const double flops = 4.0 * kHeadDim * kHeads * pairs;
      std::printf("%-8lld %-6s %12.2f %10.1f %18llx\n", static_cast<long long>(tokens),
                  std::string(mimo::cpu::to_string(type)).c_str(), t * 1e3, flops / t / 1e9,
                  static_cast<unsigned long long>(checksum(out.rows)));
    }
  }
  return 0;
}
