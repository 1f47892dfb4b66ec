// Each op of the CUDA backend against the CPU backend (the reference implementation of the
// surface), over sweeps of sizes including odd ones, strided rows and aliasing, with a tolerance
// per op on the normalised squared error: exact where both sides do the same fp32 arithmetic
// (gathers, RMSNorm, RoPE), summation-order level for products and attention, bf16-rounding level
// for products with bf16 activations.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "cuda_support.hpp"

using mimo::Cpu;
using mimo::Cuda;
using cuda_test::Contexts;
using cuda_test::DeviceRows;
using cuda_test::HostRows;
using cuda_test::HostTensor;
using cuda_test::nmse;
using cuda_test::random_values;

namespace {

const mimo::AttentionShape kNoAttention{1, 1, 2, 10000.0};

// The value of every float of fresh DeviceRows (0x7f bytes).
float unwritten() {
  float f;
  const uint32_t bits = 0x7f7f7f7fu;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace

TEST_CASE("cuda ops: embed widens bf16 rows exactly") {
  Contexts ctx(kNoAttention, 16);
  for (auto [vocab, width] : {std::pair<int64_t, int64_t>{37, 50}, {1000, 64}, {5, 1}}) {
    CAPTURE(vocab);
    CAPTURE(width);
    const HostTensor table("embed", mimo::DType::bf16, {vocab, width}, random_values(static_cast<size_t>(vocab * width), 1));
    auto cpu_table = Cpu::make_linear(table.view());
    auto gpu_table = Cuda::make_linear(table.view());
    REQUIRE(gpu_table.has_value());
    std::vector<int32_t> tokens = {0, static_cast<int32_t>(vocab - 1), 3 % static_cast<int32_t>(vocab), 0};
    HostRows h(4, width, width + 3);
    DeviceRows d(4, width, width + 3);
    Cpu::embed(ctx.cpu, *cpu_table, tokens, h.rows);
    Cuda::embed(ctx.gpu, *gpu_table, tokens, d.rows);
    ctx.sync();
    CHECK(d.download() == h.download());
  }
}

TEST_CASE("cuda ops: rms_norm, strided and in place") {
  Contexts ctx(kNoAttention, 16);
  // Widths past 2048 and 8192 floats read part of the row twice (registers hold the rest); a row
  // stride that is a multiple of 4 takes the float4 path, one of width + 5 the scalar path.
  for (int64_t rows : {1, 3, 17}) {
    for (int64_t width : {1, 31, 64, 1000, 4096, 10000}) {
      for (int64_t pad : {5, 4}) {
        CAPTURE(rows);
        CAPTURE(width);
        CAPTURE(pad);
        const auto x = random_values(static_cast<size_t>(rows * width), 2, 3.0f);
        const HostTensor w("norm", mimo::DType::bf16, {width}, random_values(static_cast<size_t>(width), 3));
        auto cw = Cpu::make_vector(w.view());
        auto gw = Cuda::make_vector(w.view());
        REQUIRE(gw.has_value());
        HostRows hx(rows, width, width + pad), hy(rows, width);
        DeviceRows dx(rows, width, width + pad), dy(rows, width);
        hx.upload(x);
        dx.upload(x);
        Cpu::rms_norm(ctx.cpu, hx.rows, *cw, 1e-5, hy.rows);
        Cuda::rms_norm(ctx.gpu, dx.rows, *gw, 1e-5, dy.rows);
        Cpu::rms_norm(ctx.cpu, hx.rows, *cw, 1e-5, hx.rows);  // in place
        Cuda::rms_norm(ctx.gpu, dx.rows, *gw, 1e-5, dx.rows);
        ctx.sync();
        CHECK(nmse(dy.download(), hy.download()) < 1e-12);
        CHECK(nmse(dx.download(), hx.download()) < 1e-12);
      }
    }
  }
}

TEST_CASE("cuda ops: linear over GEMV and cuBLASLt paths, bias, accumulate, strides, several ops") {
  struct Path {
    const char* name;
    Cuda::GemmPrecision precision;
    double tolerance;
    bool programmatic;
  };
  for (Path path : {Path{"split_bf16", Cuda::GemmPrecision::split_bf16, 1e-9, false},
                    Path{"bf16", Cuda::GemmPrecision::bf16, 1e-4, false},
                    Path{"split_bf16, programmatic launches", Cuda::GemmPrecision::split_bf16, 1e-9, true}}) {
    CAPTURE(path.name);
    Contexts ctx(kNoAttention, 128, {.precision = path.precision, .programmatic_launch = path.programmatic});
    if (path.programmatic) MESSAGE("programmatic launches active: ", Cuda::programmatic(ctx.gpu));
    for (int64_t rows : {1, 2, 3, 5, 8, 9, 33, 100}) {
      // 4104 columns: the GEMV's main loop (8 loads in flight per lane) and then its remainder.
      for (auto [in, out] : {std::pair<int64_t, int64_t>{64, 13}, {7, 5}, {100, 130}, {256, 64}, {1000, 257}, {4104, 40}}) {
        CAPTURE(rows);
        CAPTURE(in);
        CAPTURE(out);
        // Three products from the same input (like q, k, v), then two more (five: more than one GEMV batch).
        std::vector<HostTensor> weights, biases;
        for (int j = 0; j < 5; ++j) {
          weights.emplace_back("w" + std::to_string(j), mimo::DType::bf16, std::vector<int64_t>{out + j, in},
                               random_values(static_cast<size_t>((out + j) * in), 10 + static_cast<uint32_t>(j), 0.1f));
          biases.emplace_back("b" + std::to_string(j), mimo::DType::bf16, std::vector<int64_t>{out + j},
                              random_values(static_cast<size_t>(out + j), 20 + static_cast<uint32_t>(j)));
        }
        const auto x = random_values(static_cast<size_t>(rows * in), 4);
        // A row stride of in + 1 takes the GEMV's scalar path; in + 4 its vector path where
        // in % 8 == 0, the one with programmatic launches.
        const int64_t x_stride = in + (path.programmatic ? 4 : 1);
        HostRows hx(rows, in, x_stride);
        DeviceRows dx(rows, in, x_stride);
        hx.upload(x);
        dx.upload(x);
        std::vector<Cpu::Linear> cw;
        std::vector<Cuda::Linear> gw;
        std::vector<Cpu::Vector> cb;
        std::vector<Cuda::Vector> gb;
        for (int j = 0; j < 5; ++j) {
          cw.push_back(*Cpu::make_linear(weights[static_cast<size_t>(j)].view()));
          auto g = Cuda::make_linear(weights[static_cast<size_t>(j)].view());
          REQUIRE(g.has_value());
          gw.push_back(std::move(*g));
          cb.push_back(*Cpu::make_vector(biases[static_cast<size_t>(j)].view()));
          auto v = Cuda::make_vector(biases[static_cast<size_t>(j)].view());
          REQUIRE(v.has_value());
          gb.push_back(std::move(*v));
        }
        std::vector<HostRows> hy;
        std::vector<DeviceRows> dy;
        for (int j = 0; j < 5; ++j) {
          const int64_t width = out + j, stride = width + (j % 2 ? 7 : 0);
          hy.emplace_back(rows, width, stride);
          dy.emplace_back(rows, width, stride);
          const auto init = random_values(static_cast<size_t>(rows * width), 30 + static_cast<uint32_t>(j));
          hy.back().upload(init);  // accumulate adds to it
          dy.back().upload(init);
        }
        std::vector<Cpu::LinearOp> cops;
        std::vector<Cuda::LinearOp> gops;
        for (int j = 0; j < 5; ++j) {
          const bool bias = j < 3, accumulate = j >= 3;
          const size_t u = static_cast<size_t>(j);
          cops.push_back({&cw[u], bias ? &cb[u] : nullptr, hy[u].rows, accumulate});
          gops.push_back({&gw[u], bias ? &gb[u] : nullptr, dy[u].rows, accumulate});
        }
        // The CPU backend takes at most four products per call.
        Cpu::linear(ctx.cpu, hx.rows, std::span<const Cpu::LinearOp>(cops).first(3));
        Cpu::linear(ctx.cpu, hx.rows, std::span<const Cpu::LinearOp>(cops).subspan(3));
        Cuda::linear(ctx.gpu, dx.rows, gops);
        ctx.sync();
        const bool exact_path = rows <= 8;  // GEMV: fp32 activations
        for (int j = 0; j < 5; ++j) {
          CAPTURE(j);
          const double e = nmse(dy[static_cast<size_t>(j)].download(), hy[static_cast<size_t>(j)].download());
          CHECK(e < (exact_path ? 1e-10 : path.tolerance));
        }
      }
    }
  }
}

TEST_CASE("cuda ops: F16 and F32 weights are uploaded as bf16") {
  Contexts ctx(kNoAttention, 16);
  const int64_t out = 70, in = 96, rows = 3;
  const auto values = random_values(static_cast<size_t>(out * in), 5, 0.2f);
  const auto x = random_values(static_cast<size_t>(rows * in), 6);
  for (mimo::DType dtype : {mimo::DType::f16, mimo::DType::f32}) {
    CAPTURE(mimo::to_string(dtype));
    const HostTensor stored("w", dtype, {out, in}, values);
    // The reference: the same values rounded as the device rounds them (via f32 for F16).
    std::vector<float> rounded(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      const float f = mimo::load_float(stored.bytes.data(), dtype, i);
      rounded[i] = mimo::bf16_to_f32(mimo::f32_to_bf16(f));
    }
    const HostTensor reference("w", mimo::DType::bf16, {out, in}, rounded);
    auto cw = Cpu::make_linear(reference.view());
    auto gw = Cuda::make_linear(stored.view());
    REQUIRE(gw.has_value());
    HostRows hx(rows, in), hy(rows, out);
    DeviceRows dx(rows, in), dy(rows, out);
    hx.upload(x);
    dx.upload(x);
    Cpu::linear(ctx.cpu, hx.rows, {{&*cw, nullptr, hy.rows}});
    Cuda::linear(ctx.gpu, dx.rows, {{&*gw, nullptr, dy.rows}});
    ctx.sync();
    CHECK(nmse(dy.download(), hy.download()) < 1e-10);
  }
}

TEST_CASE("cuda ops: rope at positions up to 32k") {
  Contexts ctx(kNoAttention, 16);
  for (int64_t head_dim : {2, 16, 64, 128}) {
    for (int64_t heads : {1, 3, 8}) {
      for (double theta : {10000.0, 640000.0}) {
        CAPTURE(head_dim);
        CAPTURE(heads);
        const int64_t rows = 9, width = heads * head_dim;
        std::vector<int64_t> positions = {0, 1, 2, 17, 255, 4096, 12345, 32766, 32767};
        const auto x = random_values(static_cast<size_t>(rows * width), 7);
        HostRows h(rows, width, width + 2);
        DeviceRows d(rows, width, width + 2);
        h.upload(x);
        d.upload(x);
        const mimo::AttentionShape s{heads, heads, head_dim, theta};
        Cpu::rope(ctx.cpu, h.rows, heads, s, positions);
        Cuda::rope(ctx.gpu, d.rows, heads, s, positions);
        ctx.sync();
        CHECK(nmse(d.download(), h.download()) < 1e-12);
      }
    }
  }
}

TEST_CASE("cuda ops: silu_mul, including saturated gates") {
  Contexts ctx(kNoAttention, 16);
  for (auto [rows, width] : {std::pair<int64_t, int64_t>{1, 11008}, {7, 33}, {64, 160}}) {
    auto gate = random_values(static_cast<size_t>(rows * width), 8, 4.0f);
    gate[0] = -100.0f;
    gate[1] = 100.0f;
    const auto up = random_values(static_cast<size_t>(rows * width), 9);
    HostRows hg(rows, width), hu(rows, width, width + 1);
    DeviceRows dg(rows, width), du(rows, width, width + 1);
    hg.upload(gate);
    dg.upload(gate);
    hu.upload(up);
    du.upload(up);
    Cpu::silu_mul(ctx.cpu, hg.rows, hu.rows);
    Cuda::silu_mul(ctx.gpu, dg.rows, du.rows);
    ctx.sync();
    CHECK(nmse(dg.download(), hg.download()) < 1e-12);
  }
}

TEST_CASE("cuda ops: attention, split-K and tiled kernels, grouped heads, after a filled cache, each KV cache type") {
  // With a 16-bit cache both backends round each key and value once, to nearest even (f16
  // saturating at +-65504, never infinity), and attend in fp32 over the widened elements: the
  // same cache bits, and outputs that differ only in summation order, for every type.
  struct Shape {
    int64_t heads, kv_heads, head_dim;
  };
  for (mimo::KvType type : {mimo::KvType::f32, mimo::KvType::f16, mimo::KvType::bf16}) {
    for (Shape sh : {Shape{4, 2, 16}, Shape{8, 1, 64}, Shape{32, 8, 128}, Shape{6, 3, 48}, Shape{16, 16, 256}, Shape{12, 1, 2}}) {
      for (int decode_rows : {0, 8}) {  // 0: every attention goes through the tiled kernel
        CAPTURE(to_string(type));
        CAPTURE(sh.heads);
        CAPTURE(sh.kv_heads);
        CAPTURE(sh.head_dim);
        CAPTURE(decode_rows);
        const int64_t capacity = 1400;
        const mimo::AttentionShape s{sh.heads, sh.kv_heads, sh.head_dim, 10000.0};
        Contexts ctx(s, capacity, {.decode_attention_max_rows = decode_rows, .kv_cache = type});
        Cpu::KvCache ckv;
        Cuda::KvCache gkv;
        cuda_test::require_ok(Cpu::make_kv_cache(ctx.cpu, ckv, 2, s, capacity));
        cuda_test::require_ok(Cuda::make_kv_cache(ctx.gpu, gkv, 2, s, capacity));
        REQUIRE(Cuda::kv_format(gkv) == Cpu::kv_format(ckv));
        const int64_t qw = sh.heads * sh.head_dim, kw = sh.kv_heads * sh.head_dim;
        int64_t length = 0;
        uint32_t seed = 100;
        // Rows appended in turn: a prompt, single tokens, a verification batch, more prompt.
        for (int64_t n : {int64_t{37}, int64_t{1}, int64_t{1}, int64_t{3}, int64_t{8}, int64_t{9}, int64_t{300},
                          int64_t{1}, int64_t{700}, int64_t{2}}) {
          CAPTURE(length);
          CAPTURE(n);
          const auto q = random_values(static_cast<size_t>(n * qw), seed++);
          auto k = random_values(static_cast<size_t>(n * kw), seed++);
          auto v = random_values(static_cast<size_t>(n * kw), seed++);
          if (length == 0) {
            // Values past f16's range and at its edge, f16 subnormals and underflow, and ties of
            // both 16-bit types, rounding down and up to the even neighbour (f16: 2 + 2^-10 to 2,
            // 2 + 3 * 2^-10 to 2 + 2^-8; bf16: 1 + 2^-8 to 1, 1 + 3 * 2^-8 to 1 + 2^-6).
            const float edges[] = {1e5f,         -7e4f,       65519.0f,      65520.0f,   -65504.0f, 3e-6f,
                                   -6e-8f,       1e-9f,       2.0009765625f, 1.00390625f, 2.0029296875f, 1.01171875f};
            std::copy_n(std::begin(edges), std::min<int64_t>(12, kw), v.begin());
            std::copy_n(std::begin(edges) + 5, std::min<int64_t>(7, kw), k.begin());  // keys stay small: scores stay finite
          }
          HostRows hq(n, qw, qw + 4), hk(n, kw), hv(n, kw, kw + 2), ho(n, qw);
          DeviceRows dq(n, qw, qw + 4), dk(n, kw), dv(n, kw, kw + 2), dout(n, qw);
          hq.upload(q);
          dq.upload(q);
          hk.upload(k);
          dk.upload(k);
          hv.upload(v);
          dv.upload(v);
          for (int64_t layer : {int64_t{1}, int64_t{0}}) {
            Cpu::attention(ctx.cpu, ckv, layer, length, hq.rows, hk.rows, hv.rows, s, ho.rows);
            Cuda::attention(ctx.gpu, gkv, layer, length, dq.rows, dk.rows, dv.rows, s, dout.rows);
            ctx.sync();
            CHECK(nmse(dout.download(), ho.download()) < 1e-10);
          }
          length += n;
        }
        // The caches hold the same keys and values (the GPU's read back through kv_save).
        std::vector<std::byte> a, b;
        mimo::detail::ByteWriter wa(a), wb(b);
        cuda_test::require_ok(Cpu::kv_save(ckv, length, wa));
        cuda_test::require_ok(Cuda::kv_save(gkv, length, wb));
        CHECK(b.size() == Cuda::kv_bytes(gkv, length));
        CHECK(b.size() == mimo::kv_state_bytes(type, 2, sh.kv_heads, sh.head_dim, length));
        CHECK(a == b);
        // The first value as the CPU stores it: f16 saturated, not infinite.
        const float first_value = cuda_test::widen_kv_state(b, type)[static_cast<size_t>(length * sh.head_dim)];
        CHECK(first_value == (type == mimo::KvType::f16    ? 65504.0f
                              : type == mimo::KvType::bf16 ? mimo::bf16_to_f32(mimo::f32_to_bf16(1e5f))
                                                           : 1e5f));
      }
    }
  }
}

TEST_CASE("cuda ops: attention after 32k entries of a loaded cache, each type, split-K and tiled") {
  // MiMo's head size and grouping (4 query heads a KV head) at the longest context the issue
  // names: the split-K kernel at its most splits (256 of 128 keys), the tiled kernel over 1024
  // key tiles. The cache is filled through kv_load with the same random state on both backends.
  // Bound: fp32 sums over 32k terms in another order (the CPU's f32 outputs are within 4e-13 in
  // nmse of a float64 reference); a split or tile left out would move them by 1e-4 or more.
  const mimo::AttentionShape s{8, 2, 128, 640000.0};
  const int64_t capacity = 32768, length = 32750, D = 128, qw = 8 * D, kw = 2 * D;
  const auto entries = random_values(static_cast<size_t>(2 * 2 * length * D), 77);  // per head: keys, then values
  for (mimo::KvType type : {mimo::KvType::f32, mimo::KvType::f16, mimo::KvType::bf16}) {
    CAPTURE(to_string(type));
    Contexts ctx(s, capacity, {.kv_cache = type});
    Cpu::KvCache ckv;
    Cuda::KvCache gkv;
    cuda_test::require_ok(Cpu::make_kv_cache(ctx.cpu, ckv, 1, s, capacity));
    cuda_test::require_ok(Cuda::make_kv_cache(ctx.gpu, gkv, 1, s, capacity));
    const std::vector<std::byte> state = cuda_test::kv_state_of(entries, type);
    REQUIRE(state.size() == mimo::kv_state_bytes(type, 1, 2, D, length));
    mimo::detail::ByteReader rc(state, "state"), rg(state, "state");
    cuda_test::require_ok(Cpu::kv_load(ckv, length, rc));
    cuda_test::require_ok(Cuda::kv_load(gkv, length, rg));
    for (int64_t n : {int64_t{1}, int64_t{8}, int64_t{9}}) {  // 9 rows: the tiled kernel
      CAPTURE(n);
      const auto q = random_values(static_cast<size_t>(n * qw), 78), k = random_values(static_cast<size_t>(n * kw), 79),
                 v = random_values(static_cast<size_t>(n * kw), 80);
      HostRows hq(n, qw), hk(n, kw), hv(n, kw), ho(n, qw);
      DeviceRows dq(n, qw), dk(n, kw), dv(n, kw), dout(n, qw);
      hq.upload(q);
      dq.upload(q);
      hk.upload(k);
      dk.upload(k);
      hv.upload(v);
      dv.upload(v);
      Cpu::attention(ctx.cpu, ckv, 0, length, hq.rows, hk.rows, hv.rows, s, ho.rows);
      Cuda::attention(ctx.gpu, gkv, 0, length, dq.rows, dk.rows, dv.rows, s, dout.rows);
      ctx.sync();
      const double e = nmse(dout.download(), ho.download());
      MESSAGE(to_string(type), ", ", n, " rows after ", length, " entries: nmse ", e);
      CHECK(e < 1e-10);
    }
  }
}

TEST_CASE("cuda ops: fused rms_norm_linear and rms_norm_swiglu equal the plain ops they stand for") {
  // One row takes the fused GEMV (the norm folded into the product), which must give the plain
  // ops' bits; 3 rows, 100 columns (not a multiple of 8) or five products run as the plain ops.
  // Every case also against the CPU's plain ops.
  // Programmatic launches too: the fused kernel then waits for the kernel ahead after its first
  // weight loads.
  Contexts ctx(kNoAttention, 16, {.fuse_kernels = true, .programmatic_launch = true});
  auto plain_ctx = Cuda::make_context({}, kNoAttention, 16, 4096);
  REQUIRE(plain_ctx.has_value());
  Cuda::Context& plain = *plain_ctx;
  {
    for (int64_t rows : {1, 3}) {
      // 8200 columns: more than the fused kernel's shared memory holds.
      for (auto [in, out] : {std::pair<int64_t, int64_t>{64, 13}, {100, 30}, {4104, 40}, {4096, 257}, {8200, 16}}) {
        for (int products : {3, 5}) {
          CAPTURE(rows);
          CAPTURE(in);
          CAPTURE(out);
          CAPTURE(products);
          const auto x = random_values(static_cast<size_t>(rows * in), 40, 2.0f);
          const HostTensor norm("norm", mimo::DType::bf16, {in}, random_values(static_cast<size_t>(in), 41));
          auto cn = Cpu::make_vector(norm.view());
          auto gn = Cuda::make_vector(norm.view());
          REQUIRE(gn.has_value());
          std::vector<HostTensor> weights, biases;
          std::vector<Cpu::Linear> cw;
          std::vector<Cuda::Linear> gw;
          std::vector<Cpu::Vector> cb;
          std::vector<Cuda::Vector> gb;
          for (int j = 0; j < products; ++j) {
            weights.emplace_back("w" + std::to_string(j), mimo::DType::bf16, std::vector<int64_t>{out + j, in},
                                 random_values(static_cast<size_t>((out + j) * in), 50 + static_cast<uint32_t>(j), 0.1f));
            biases.emplace_back("b" + std::to_string(j), mimo::DType::bf16, std::vector<int64_t>{out + j},
                                random_values(static_cast<size_t>(out + j), 60 + static_cast<uint32_t>(j)));
          }
          for (int j = 0; j < products; ++j) {
            const size_t u = static_cast<size_t>(j);
            cw.push_back(*Cpu::make_linear(weights[u].view()));
            auto g = Cuda::make_linear(weights[u].view());
            REQUIRE(g.has_value());
            gw.push_back(std::move(*g));
            cb.push_back(*Cpu::make_vector(biases[u].view()));
            auto v = Cuda::make_vector(biases[u].view());
            REQUIRE(v.has_value());
            gb.push_back(std::move(*v));
          }
          HostRows hx(rows, in, in + 4), hn(rows, in);
          DeviceRows dx(rows, in, in + 4), dn(rows, in), pn(rows, in);
          hx.upload(x);
          dx.upload(x);
          std::vector<HostRows> hy;
          std::vector<DeviceRows> dy, py;  // fused (where it applies), plain
          std::vector<Cpu::LinearOp> cops;
          std::vector<Cuda::LinearOp> gops, pops;
          for (int j = 0; j < products; ++j) {
            const int64_t width = out + j;
            hy.emplace_back(rows, width, width + j);
            dy.emplace_back(rows, width, width + j);
            py.emplace_back(rows, width, width + j);
            const auto init = random_values(static_cast<size_t>(rows * width), 70 + static_cast<uint32_t>(j));
            hy.back().upload(init);  // the last product accumulates into it
            dy.back().upload(init);
            py.back().upload(init);
          }
          for (int j = 0; j < products; ++j) {
            const size_t u = static_cast<size_t>(j);
            const bool bias = j != 1, accumulate = j == products - 1;  // one product without bias
            cops.push_back({&cw[u], bias ? &cb[u] : nullptr, hy[u].rows, accumulate});
            gops.push_back({&gw[u], bias ? &gb[u] : nullptr, dy[u].rows, accumulate});
            pops.push_back({&gw[u], bias ? &gb[u] : nullptr, py[u].rows, accumulate});
          }
          Cpu::rms_norm(ctx.cpu, hx.rows, *cn, 1e-6, hn.rows);
          Cpu::linear(ctx.cpu, hn.rows, std::span<const Cpu::LinearOp>(cops).first(3));
          if (products > 3) Cpu::linear(ctx.cpu, hn.rows, std::span<const Cpu::LinearOp>(cops).subspan(3));
          Cuda::rms_norm_linear(ctx.gpu, dx.rows, *gn, 1e-6, dn.rows, gops);
          Cuda::rms_norm(plain, dx.rows, *gn, 1e-6, pn.rows);
          Cuda::linear(plain, pn.rows, pops);
          ctx.sync();
          cuda_test::require_ok(Cuda::synchronize(plain));
          // The fused kernel leaves the normed rows unwritten (DeviceRows' poison stays): proof
          // that it ran where it should, and only there.
          const bool fusable = rows == 1 && in % 8 == 0 && in <= 8192 && products <= 4;
          const std::vector<float> poison(static_cast<size_t>(rows * in), unwritten());
          CHECK((dn.download() == poison) == fusable);
          for (int j = 0; j < products; ++j) {
            CAPTURE(j);
            const auto got = dy[static_cast<size_t>(j)].download();
            CHECK(got == py[static_cast<size_t>(j)].download());
            CHECK(nmse(got, hy[static_cast<size_t>(j)].download()) < 1e-10);
          }
          CHECK(dx.download() == x);  // the input rows are left as they were

          // The MLP's first half over the same input: gate (the first weight) and up products of
          // `out` rows.
          const HostTensor up("up", mimo::DType::bf16, {out, in}, random_values(static_cast<size_t>(out * in), 80, 0.1f));
          const Cpu::Linear cup = *Cpu::make_linear(up.view());
          auto gup = Cuda::make_linear(up.view());
          REQUIRE(gup.has_value());
          HostRows hg(rows, out), hu(rows, out);
          DeviceRows dg(rows, out, out + 4), du(rows, out), pg(rows, out, out + 4), pu(rows, out);
          Cpu::rms_norm(ctx.cpu, hx.rows, *cn, 1e-6, hn.rows);
          Cpu::linear(ctx.cpu, hn.rows, {{&cw[0], nullptr, hg.rows}, {&cup, nullptr, hu.rows}});
          Cpu::silu_mul(ctx.cpu, hg.rows, hu.rows);
          Cuda::rms_norm_swiglu(ctx.gpu, dx.rows, *gn, 1e-6, dn.rows, gw[0], *gup, dg.rows, du.rows);
          Cuda::rms_norm(plain, dx.rows, *gn, 1e-6, pn.rows);
          Cuda::linear(plain, pn.rows, {{&gw[0], nullptr, pg.rows}, {&*gup, nullptr, pu.rows}});
          Cuda::silu_mul(plain, pg.rows, pu.rows);
          ctx.sync();
          cuda_test::require_ok(Cuda::synchronize(plain));
          const auto gate = dg.download();
          CHECK(gate == pg.download());
          CHECK(nmse(gate, hg.download()) < 1e-10);
          CHECK((du.download() == std::vector<float>(static_cast<size_t>(rows * out), unwritten())) == fusable);
        }
      }
    }
  }
}

TEST_CASE("cuda ops: fused rope_attention equals rope, rope and attention, for each KV cache type") {
  struct Shape {
    int64_t heads, kv_heads, head_dim;
  };
  for (Shape sh : {Shape{4, 2, 16}, Shape{32, 8, 128}, Shape{6, 3, 48}, Shape{12, 1, 2}}) {
    for (auto [fuse, type] : {std::pair{true, mimo::KvType::f32}, {false, mimo::KvType::f32}, {true, mimo::KvType::f16},
                              {false, mimo::KvType::f16}, {true, mimo::KvType::bf16}}) {
      CAPTURE(to_string(type));
      CAPTURE(sh.heads);
      CAPTURE(sh.kv_heads);
      CAPTURE(sh.head_dim);
      CAPTURE(fuse);
      const int64_t capacity = 600;
      const mimo::AttentionShape s{sh.heads, sh.kv_heads, sh.head_dim, 640000.0};
      Contexts ctx(s, capacity, {.fuse_kernels = fuse, .kv_cache = type});
      auto plain_ctx = Cuda::make_context({.kv_cache = type}, s, capacity, 4096);
      REQUIRE(plain_ctx.has_value());
      Cuda::Context& plain = *plain_ctx;
      Cpu::KvCache ckv;
      Cuda::KvCache gkv, pkv;
      cuda_test::require_ok(Cpu::make_kv_cache(ctx.cpu, ckv, 2, s, capacity));
      cuda_test::require_ok(Cuda::make_kv_cache(ctx.gpu, gkv, 2, s, capacity));
      cuda_test::require_ok(Cuda::make_kv_cache(plain, pkv, 2, s, capacity));
      REQUIRE(gkv.type == type);
      const int64_t qw = sh.heads * sh.head_dim, kw = sh.kv_heads * sh.head_dim;
      int64_t length = 0;
      uint32_t seed = 200;
      for (int64_t n : {int64_t{37}, int64_t{1}, int64_t{3}, int64_t{8}, int64_t{300}, int64_t{1}}) {
        CAPTURE(length);
        CAPTURE(n);
        std::vector<int64_t> positions(static_cast<size_t>(n));
        std::iota(positions.begin(), positions.end(), length + 1000);  // not the cache entries
        for (int64_t layer : {int64_t{1}, int64_t{0}}) {
          CAPTURE(layer);
          const auto q = random_values(static_cast<size_t>(n * qw), seed++);
          const auto k = random_values(static_cast<size_t>(n * kw), seed++);
          const auto v = random_values(static_cast<size_t>(n * kw), seed++);
          HostRows hq(n, qw, qw + 4), hk(n, kw), hv(n, kw, kw + 2), ho(n, qw);
          DeviceRows dq(n, qw, qw + 4), dk(n, kw), dv(n, kw, kw + 2), dout(n, qw);
          DeviceRows pq(n, qw, qw + 4), pk(n, kw), pv(n, kw, kw + 2), pout(n, qw);
          hq.upload(q);
          dq.upload(q);
          pq.upload(q);
          hk.upload(k);
          dk.upload(k);
          pk.upload(k);
          hv.upload(v);
          dv.upload(v);
          pv.upload(v);
          Cpu::rope(ctx.cpu, hq.rows, s.num_heads, s, positions);
          Cpu::rope(ctx.cpu, hk.rows, s.num_kv_heads, s, positions);
          Cpu::attention(ctx.cpu, ckv, layer, length, hq.rows, hk.rows, hv.rows, s, ho.rows);
          Cuda::rope_attention(ctx.gpu, gkv, layer, length, dq.rows, dk.rows, dv.rows, s, positions, dout.rows);
          Cuda::rope(plain, pq.rows, s.num_heads, s, positions);
          Cuda::rope(plain, pk.rows, s.num_kv_heads, s, positions);
          Cuda::attention(plain, pkv, layer, length, pq.rows, pk.rows, pv.rows, s, pout.rows);
          ctx.sync();
          cuda_test::require_ok(Cuda::synchronize(plain));
          const auto out = dout.download();
          CHECK(out == pout.download());
          // A 16-bit cache may round a key the CPU rotated one last bit apart to another value.
          CHECK(nmse(out, ho.download()) < (type == mimo::KvType::f32 ? 1e-10 : 1e-9));
          // q and k rotated in place, as rope does (the GPU contracts a rotation to an FMA, the
          // CPU build need not: a last-bit difference from the CPU).
          CHECK(dq.download() == pq.download());
          CHECK(dk.download() == pk.download());
          CHECK(nmse(dq.download(), hq.download()) < 1e-12);
          CHECK(nmse(dk.download(), hk.download()) < 1e-12);
        }
        length += n;
      }
      // The caches hold the same (rotated) keys and values: the plain GPU ops' bits, the CPU's
      // to the last bit of the type (a 16-bit element rarely rounds the other way).
      std::vector<std::byte> a, b, p;
      mimo::detail::ByteWriter wa(a), wb(b), wp(p);
      cuda_test::require_ok(Cpu::kv_save(ckv, length, wa));
      cuda_test::require_ok(Cuda::kv_save(gkv, length, wb));
      cuda_test::require_ok(Cuda::kv_save(pkv, length, wp));
      CHECK(b == p);
      CHECK(b.size() == a.size());
      const double bound = type == mimo::KvType::f32 ? 1e-12 : type == mimo::KvType::f16 ? 1e-8 : 1e-7;
      CHECK(nmse(cuda_test::widen_kv_state(b, type), cuda_test::widen_kv_state(a, type)) < bound);
    }
  }
}

TEST_CASE("cuda ops: gather_rows, copy_rows, to_host, argmax") {
  Contexts ctx(kNoAttention, 16);
  const int64_t n = 6, width = 77;
  const auto x = random_values(static_cast<size_t>(n * width), 11);
  DeviceRows src(n, width, width + 3), gathered(4, width), copied(n, width, width + 1);
  src.upload(x);
  const std::vector<int32_t> rows = {5, 0, 5, 2};
  Cuda::gather_rows(ctx.gpu, src.rows, rows, gathered.rows);
  Cuda::copy_rows(ctx.gpu, src.rows, copied.rows);
  std::vector<float> host(static_cast<size_t>(n * width));
  cuda_test::require_ok(Cuda::to_host(ctx.gpu, src.rows, host.data()));
  CHECK(host == x);
  CHECK(copied.download() == x);
  const auto g = gathered.download();
  for (size_t i = 0; i < rows.size(); ++i) {
    CHECK(std::equal(g.begin() + static_cast<long>(i) * width, g.begin() + static_cast<long>(i + 1) * width,
                     x.begin() + static_cast<long>(rows[i]) * width));
  }
  // argmax with ties takes the first, as std::max_element; -1 for the rows a sampler refuses;
  // the CPU backend's argmax_rows gives the same ids.
  constexpr int64_t V = 151680;
  std::vector<float> logits = random_values(static_cast<size_t>(7 * V), 12);
  auto at = [&](int64_t r, int64_t c) -> float& { return logits[static_cast<size_t>(r * V + c)]; };
  at(0, 7) = at(0, 90000) = 1e6f;                               // a tie
  at(1, V - 1) = 1e6f;                                          // the last column
  for (int64_t c = 0; c < V; ++c) at(2, c) = at(5, c) = -INFINITY;  // all -inf; all but one
  at(5, 1234) = -5.0f;
  at(3, 10) = 1e6f;
  at(3, 500) = NAN;                                             // NaN after the largest
  at(4, 3) = INFINITY;
  DeviceRows l(7, V);
  l.upload(logits);
  Cuda::argmax_rows(ctx.gpu, l.rows);
  std::vector<int32_t> ids(7);
  cuda_test::require_ok(Cuda::read_argmax(ctx.gpu, ids));
  const int32_t random_row = static_cast<int32_t>(std::max_element(&at(6, 0), &at(6, 0) + V) - &at(6, 0));
  CHECK(ids == std::vector<int32_t>{7, static_cast<int32_t>(V - 1), -1, -1, -1, 1234, random_row});
  HostRows h(7, V);
  h.upload(logits);
  Cpu::argmax_rows(ctx.cpu, h.rows);
  std::vector<int32_t> cpu_ids(7);
  cuda_test::require_ok(Cpu::read_argmax(ctx.cpu, cpu_ids));
  CHECK(cpu_ids == ids);
}

TEST_CASE("cuda ops: top_rows selects what the CPU backend selects, ids and value bits") {
  Contexts ctx(kNoAttention, 16);
  constexpr int64_t V = 151680;
  const int64_t n = 9;
  std::vector<float> logits = random_values(static_cast<size_t>(n * V), 13);
  auto at = [&](int64_t r, int64_t c) -> float& { return logits[static_cast<size_t>(r * V + c)]; };
  for (int64_t c = 0; c < V; c += 3) at(0, c) = std::round(at(0, c));  // many ties across the boundary
  for (int64_t c = 0; c < V; ++c) at(1, c) = (c % 2) ? 0.0f : -0.0f;     // -0 == +0: the lowest ids
  at(1, 777) = 1.0f;
  for (int64_t c = 0; c < V; ++c) at(2, c) = at(3, c) = -INFINITY;    // all -inf; -inf fills the count
  at(3, 1234) = -5.0f;
  at(3, 99) = -7.0f;
  at(4, 10) = 1e6f;
  at(4, 500) = NAN;  // NaN outside the selection still refuses the row
  at(5, 3) = INFINITY;
  for (int64_t c = 0; c < V; ++c) at(6, c) = 2.5f;  // one value
  at(7, V - 1) = 1e6f;  // the last column; row 8 stays random
  DeviceRows l(n, V);
  l.upload(logits);
  HostRows h(n, V);
  h.upload(logits);
  for (int32_t count : {1, 2, 40, 104, 4096}) {
    CAPTURE(count);
    const size_t size = static_cast<size_t>(n * count);
    std::vector<int32_t> ids(size), cpu_ids(size);
    std::vector<float> values(size), cpu_values(size);
    Cuda::top_rows(ctx.gpu, l.rows, count);
    cuda_test::require_ok(Cuda::read_top(ctx.gpu, ids, values));
    Cpu::top_rows(ctx.cpu, h.rows, count);
    cuda_test::require_ok(Cpu::read_top(ctx.cpu, cpu_ids, cpu_values));
    CHECK(ids == cpu_ids);
    for (size_t i = 0; i < size; ++i) {
      if (cpu_ids[i] >= 0) CHECK(std::memcmp(&values[i], &cpu_values[i], sizeof(float)) == 0);
    }
    for (int64_t r : {2, 4, 5}) CHECK(ids[static_cast<size_t>(r * count)] == -1);
    CHECK(ids[static_cast<size_t>(3 * count)] == (count == 1 ? 1234 : count == 2 ? 99 : 0));
  }
  // Narrow rows, the count equal to the width, and a count out of range (reported at the read).
  DeviceRows narrow(3, 77, 80);
  const auto small = random_values(static_cast<size_t>(3 * 77), 14);
  narrow.upload(small);
  HostRows narrow_host(3, 77, 80);
  narrow_host.upload(small);
  for (int32_t count : {1, 5, 77}) {
    CAPTURE(count);
    std::vector<int32_t> ids(static_cast<size_t>(3 * count)), cpu_ids(ids.size());
    std::vector<float> values(ids.size()), cpu_values(ids.size());
    Cuda::top_rows(ctx.gpu, narrow.rows, count);
    cuda_test::require_ok(Cuda::read_top(ctx.gpu, ids, values));
    Cpu::top_rows(ctx.cpu, narrow_host.rows, count);
    cuda_test::require_ok(Cpu::read_top(ctx.cpu, cpu_ids, cpu_values));
    CHECK(ids == cpu_ids);
    CHECK(values == cpu_values);
  }
  Cuda::top_rows(ctx.gpu, narrow.rows, 78);
  std::vector<int32_t> ids(1);
  std::vector<float> values(1);
  CHECK_FALSE(Cuda::read_top(ctx.gpu, ids, values));
}

TEST_CASE("cuda ops: a bad op is reported at the next synchronisation, then the context works again") {
  Contexts ctx(kNoAttention, 16);
  DeviceRows a(2, 10), b(3, 10);
  Cuda::copy_rows(ctx.gpu, a.rows, b.rows);  // counts differ
  std::vector<float> host(20);
  auto s = Cuda::to_host(ctx.gpu, a.rows, host.data());
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().code() == mimo::Errc::invalid_argument);
  CHECK(s.error().message().find("copy_rows") != std::string::npos);
  a.upload(std::vector<float>(20, 2.0f));
  cuda_test::require_ok(Cuda::to_host(ctx.gpu, a.rows, host.data()));
  CHECK(host == std::vector<float>(20, 2.0f));
  // Attention with more heads, or over a longer cache, than the context was made for would write
  // past its split-K records: refused.
  {
    const mimo::AttentionShape small{4, 2, 16, 1e4}, more_heads{8, 2, 16, 1e4};
    auto c = Cuda::make_context({}, small, 16, 64);
    REQUIRE(c.has_value());
    Cuda::KvCache kv;
    cuda_test::require_ok(Cuda::make_kv_cache(kv, 1, small, 1024));
    DeviceRows q(1, 8 * 16), k(1, 2 * 16), v(1, 2 * 16), o(1, 8 * 16);
    q.upload(std::vector<float>(8 * 16, 0.5f));
    k.upload(std::vector<float>(2 * 16, 0.5f));
    v.upload(std::vector<float>(2 * 16, 0.5f));
    Cuda::attention(*c, kv, 0, 0, q.rows, k.rows, v.rows, more_heads, o.rows);
    auto e = Cuda::synchronize(*c);
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().message().find("context made for 4 heads") != std::string::npos);
    Cuda::attention(*c, kv, 0, 1000, q.rows.slice(0, 1), k.rows, v.rows, small, o.rows);  // 1001 entries, context of 16
    e = Cuda::synchronize(*c);
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().message().find("1001 entries") != std::string::npos);
  }
  // Contexts refuse what the kernels cannot do.
  CHECK_FALSE(Cuda::make_context({}, mimo::AttentionShape{4, 4, 512, 1e4}, 16, 64).has_value());
  CHECK_FALSE(Cuda::make_context({.device = 9999}, kNoAttention, 16, 64).has_value());
}

TEST_CASE("cuda ops: saved KV caches move between the backends, for each type") {
  const mimo::AttentionShape s{4, 2, 16, 10000.0};
  for (mimo::KvType type : {mimo::KvType::f32, mimo::KvType::f16, mimo::KvType::bf16}) {
    CAPTURE(to_string(type));
    Contexts ctx(s, 64, {.kv_cache = type});
    Cpu::KvCache ckv, back;
    Cuda::KvCache gkv, copy;
    cuda_test::require_ok(Cpu::make_kv_cache(ctx.cpu, ckv, 3, s, 64));
    cuda_test::require_ok(Cpu::make_kv_cache(ctx.cpu, back, 3, s, 64));
    cuda_test::require_ok(Cuda::make_kv_cache(ctx.gpu, gkv, 3, s, 64));
    CHECK(Cuda::kv_format(gkv) == static_cast<uint32_t>(type));
    const int64_t n = 20;
    const auto q = random_values(static_cast<size_t>(n * 64), 1), k = random_values(static_cast<size_t>(n * 32), 2),
               v = random_values(static_cast<size_t>(n * 32), 3);
    HostRows hq(n, 64), hk(n, 32), hv(n, 32), ho(n, 64);
    hq.upload(q);
    hk.upload(k);
    hv.upload(v);
    for (int64_t layer = 0; layer < 3; ++layer) Cpu::attention(ctx.cpu, ckv, layer, 0, hq.rows, hk.rows, hv.rows, s, ho.rows);
    std::vector<std::byte> saved;
    mimo::detail::ByteWriter w(saved);
    cuda_test::require_ok(Cpu::kv_save(ckv, n, w));
    mimo::detail::ByteReader r(saved, "state");
    cuda_test::require_ok(Cuda::kv_load(gkv, n, r));
    cuda_test::require_ok(Cuda::copy_kv_cache(copy, gkv, n));
    std::vector<std::byte> again;
    mimo::detail::ByteWriter w2(again);
    cuda_test::require_ok(Cuda::kv_save(copy, n, w2));
    CHECK(again == saved);
    mimo::detail::ByteReader r2(again, "state");
    cuda_test::require_ok(Cpu::kv_load(back, n, r2));
    std::vector<std::byte> third;
    mimo::detail::ByteWriter w3(third);
    cuda_test::require_ok(Cpu::kv_save(back, n, w3));
    CHECK(third == saved);
    CHECK(copy.type == type);
  }
}

TEST_CASE("cuda ops: Cuda::forward captures a repeated sequence of ops and replays it with new inputs") {
  const mimo::AttentionShape s{4, 2, 16, 10000.0};
  const int64_t vocab = 50, hidden = 64, capacity = 600;
  const HostTensor table("embed", mimo::DType::bf16, {vocab, hidden}, random_values(static_cast<size_t>(vocab * hidden), 1));
  const HostTensor wq("q", mimo::DType::bf16, {64, hidden}, random_values(64 * hidden, 2, 0.2f));
  const HostTensor wk("k", mimo::DType::bf16, {32, hidden}, random_values(32 * hidden, 3, 0.2f));
  const HostTensor norm("n", mimo::DType::bf16, {hidden}, random_values(hidden, 4));
  auto gt = *Cuda::make_linear(table.view());
  auto gq = *Cuda::make_linear(wq.view());
  auto gk = *Cuda::make_linear(wk.view());
  auto gn = *Cuda::make_vector(norm.view());
  // The same steps with graphs on and off; outputs must agree exactly.
  std::vector<std::vector<float>> results[2];
  uint64_t launches = 0;
  for (int graphs = 0; graphs < 2; ++graphs) {
    auto ctx = Cuda::make_context({.graphs = graphs == 1}, s, capacity, 256);
    REQUIRE(ctx.has_value());
    Cuda::KvCache kv;
    cuda_test::require_ok(Cuda::make_kv_cache(kv, 1, s, capacity));
    DeviceRows x(1, hidden), q(1, 64), k(1, 32), out(1, 64);
    for (int64_t step = 0; step < 300; ++step) {  // crosses the 256-key bucket of the split-K kernel
      const int32_t token = static_cast<int32_t>((step * 7) % vocab);
      const int64_t position = step;
      auto body = [&](Cuda::Context& c) -> mimo::Status {
        Cuda::embed(c, gt, std::span<const int32_t>(&token, 1), x.rows);
        Cuda::rms_norm(c, x.rows, gn, 1e-5, x.rows);
        Cuda::linear(c, x.rows, {{&gq, nullptr, q.rows}, {&gk, nullptr, k.rows}});
        Cuda::rope(c, q.rows, 4, s, std::span<const int64_t>(&position, 1));
        Cuda::rope(c, k.rows, 2, s, std::span<const int64_t>(&position, 1));
        Cuda::attention(c, kv, 0, step, q.rows, k.rows, k.rows, s, out.rows);
        return mimo::ok();
      };
      cuda_test::require_ok(Cuda::forward(*ctx, body));
      std::vector<float> host(64);
      cuda_test::require_ok(Cuda::to_host(*ctx, out.rows, host.data()));
      results[graphs].push_back(host);
    }
    if (graphs) launches = Cuda::graph_launches(*ctx);
    if (graphs) MESSAGE("graph launches ", launches, ", captures ", Cuda::graph_captures(*ctx));
  }
  CHECK(launches > 250);
  CHECK(results[0] == results[1]);
}
