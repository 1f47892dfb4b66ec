// The CUDA backend: mimo::Cuda implements the surface of mimo/backend/backend.hpp on an NVIDIA
// GPU. Host code only (compiled by the host compiler); the kernels it launches are compiled once
// per program from <mimo/cuda.cuh> (see mimo/cuda.hpp for the two-file recipe).
//
//   weights   Linear: bf16 [rows, cols] in device memory, uploaded once by make_linear from the
//             mapped checkpoint (BF16 copied as is; F16 and F32 converted to bf16 on the device, so
//             an F32 checkpoint runs with bf16-rounded weights). Vector: fp32 in device memory.
//   state     KvCache: [layer][kv_head][entry][head_dim] in device memory, of f32 (the default),
//             f16 or bf16 elements (ContextOptions::kv_cache), rounded as the CPU backend rounds
//             them and saved in its format, so saved sessions move between the backends (for the
//             same type). Buffer: device memory.
//   products  up to ContextOptions::gemv_max_rows input rows (decode, verification of drafts): a
//             bf16-weight GEMV kernel with fp32 activations; more rows (prefill): cuBLASLt with
//             bf16 inputs and fp32 accumulation, the activations entering either as two bf16 parts
//             (GemmPrecision::split_bf16, close to fp32) or rounded to bf16 (GemmPrecision::bf16).
//             cuBLASLt's algorithm is chosen once per shape and cached in the Context.
//   attention split-K kernel for up to decode_attention_max_rows new rows, tiled flash-style
//             kernel for more; grouped-query heads share key/value reads; fp32.
//   fusion    with ContextOptions::fuse_kernels, the fused ops of the surface (rms_norm_linear,
//             rms_norm_swiglu, rope_attention) launch fewer kernels; without it, or where a shape
//             does not suit the fused kernels, they run as their plain ops.
//   graphs    Cuda::forward(ctx, body) runs the ops of one forward pass as a CUDA graph once the
//             same sequence of ops has been seen twice in a row, and replays it afterwards
//             (decode steps); per-step data (token ids, positions, KV lengths) live in device
//             memory that is refreshed with one copy before each replay.
//   errors    ops enqueue work and record the first failure in the Context (a launch error, a
//             shape that does not fit, cuBLASLt without an algorithm); to_host, read_argmax and
//             synchronize report it as an Error with Errc::backend (or invalid_argument) naming
//             the operation, and clear it. Nothing throws, aborts or exits.
//   devices   every call makes the context's (or the buffer's) device current for its duration and
//             restores the caller's device. make_linear uploads to the calling thread's current
//             device: call cudaSetDevice before Model<Cuda>::load when using another than 0.
//
// Threads: a Context (one per session) is used by one thread at a time. Contexts of different
// sessions may run concurrently; each has its own stream unless the caller passes one.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mimo/backend/backend.hpp"
#include "mimo/backend/kv_type.hpp"
#include "mimo/backend/cuda/device_memory.hpp"
#include "mimo/backend/cuda/gemm.hpp"
#include "mimo/backend/cuda/launch.hpp"
#include "mimo/detail/byte_stream.hpp"
#include "mimo/dtype.hpp"
#include "mimo/error.hpp"
#include "mimo/io/checkpoint.hpp"

namespace mimo {

namespace cuda::detail {

inline int64_t addr(const void* p) { return static_cast<int64_t>(reinterpret_cast<intptr_t>(p)); }

inline int64_t bits_of(double v) {
  int64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

// Kinds of per-call host data an op copies to the device (deduplicated per kind).
enum class Upload : int { tokens = 0, positions = 1, rows = 2, length = 3 };
inline constexpr int kUploadKinds = 4;

// Op codes in graph signatures.
enum class OpCode : int64_t { embed = 1, rms_norm, gemv, split, gemm, bias, rope, silu_mul, kv_store, decode, prefill,
                              gather, copy, argmax, gemv_norm, rope_store, top };

}  // namespace cuda::detail

struct Cuda {
  static const char* name() { return "cuda"; }

  // How activations enter cuBLASLt products (more than gemv_max_rows rows).
  enum class GemmPrecision {
    split_bf16,  // x = hi + lo, two bf16 products: ~16 mantissa bits, twice the flops of bf16
    bf16,        // x rounded to bf16: fastest; logits move by ~1e-2..1e-1 (see tiny-mimo's README)
  };

  // Options of a session's execution context.
  struct ContextOptions {
    int device = 0;                  // CUDA device ordinal (the model's weights must live there)
    cudaStream_t stream = nullptr;   // run on this stream (not owned, must belong to `device`); null: own one
    GemmPrecision precision = GemmPrecision::split_bf16;
    int gemv_max_rows = 8;           // products over at most this many rows use the GEMV kernel (0..8)
    int decode_attention_max_rows = 8;  // attention over at most this many new rows uses split-K (0..8)
    uint64_t gemm_workspace_bytes = 32ull << 20;  // cuBLASLt workspace
    bool graphs = true;              // Cuda::forward may capture and replay CUDA graphs
    // Fewer, fused kernels: RMSNorm folded into the products after it and SwiGLU into the gate/up
    // product for single rows (decode), RoPE of q and k with the KV store in one kernel. A decode
    // layer then takes 7 launches instead of 12, with the same results bit for bit. Not yet run
    // on a GPU, hence off by default.
    bool fuse_kernels = false;
    // Single-row products launched as programmatic dependents of the kernel before them (sm_90
    // and newer): their first weight loads overlap that kernel's last blocks. Not yet run on a
    // GPU, hence off by default; ignored where the device or the build lacks the feature.
    bool programmatic_launch = false;
    int max_graphs = 8;              // graphs kept per context (least recently used is dropped)
    // Element type of the KV caches: f32 (exact), or f16 or bf16 (half the memory, and half the
    // bytes decode attention reads at long contexts; rounded as the CPU backend's cache). i8 is
    // CPU only. The 16-bit caches have not yet run on a GPU, hence f32 by default.
    KvType kv_cache = KvType::f32;
  };

  // A weight matrix [rows, cols] in device memory, bf16.
  struct Linear {
    cuda::DeviceBuffer<uint16_t> data;
    int64_t rows = 0;
    int64_t cols = 0;
    int device = 0;
  };

  // A small fp32 vector in device memory; empty when absent (no bias).
  struct Vector {
    cuda::DeviceBuffer<float> values;
    int64_t size = 0;
    const float* data() const { return size > 0 ? values.data() : nullptr; }
  };

  struct KvCache {
    cuda::DeviceBuffer<std::byte> keys, values;  // [layer][kv_head][entry][head_dim] elements of `type`
    KvType type = KvType::f32;
    int64_t layers = 0, kv_heads = 0, head_dim = 0, capacity = 0;

    int device() const { return keys.device(); }
    uint64_t element_bytes() const { return static_cast<uint64_t>(kv_element_bytes(type)); }
    uint64_t head_bytes() const { return static_cast<uint64_t>(capacity * head_dim) * element_bytes(); }  // one (layer, head)
    cuda::KvLayer layer(int64_t l) {
      const uint64_t off = static_cast<uint64_t>(l * kv_heads) * head_bytes();
      return cuda::KvLayer{keys.data() + off, values.data() + off, kv_heads, head_dim, capacity, type};
    }
  };

  using Buffer = cuda::DeviceBuffer<float>;

  struct LinearOp {
    const Linear* weight;
    const Vector* bias;  // may be null or empty
    Rows out;
    bool accumulate = false;
  };

  enum class Mode { eager, dry, capture };

  // Per-session execution state. Movable; not copyable.
  struct Context {
    ContextOptions options{};
    int device = 0;
    cudaStream_t stream = nullptr;
    cuda::StreamHandle owned_stream;  // set when the context created its stream
    cuda::LtHandle lt;
    int sm_count = 1;
    bool programmatic = false;  // options.programmatic_launch, where the device and build have it
    AttentionShape shape{};
    int64_t capacity = 0;

    cuda::DeviceBuffer<unsigned char> workspace;  // cuBLASLt
    cuda::DeviceBuffer<uint16_t> gemm_hi, gemm_lo;  // bf16 parts of product inputs
    cuda::GemmPlans plans;
    cuda::DeviceBuffer<float> partials;  // split-K records
    cuda::DeviceBuffer<int32_t> argmax;  // device-side argmax results
    cuda::PinnedBuffer<int32_t> argmax_host;
    int64_t argmax_rows = 0;
    cuda::DeviceBuffer<int32_t> top_ids;  // device-side top selections, top_count per row
    cuda::DeviceBuffer<float> top_values;
    cuda::PinnedBuffer<int32_t> top_ids_host;
    cuda::PinnedBuffer<float> top_values_host;
    int64_t top_entries = 0;  // of the last top_rows

    // Eager uploads of per-call host data: a ring of pinned host and device memory. When it
    // wraps, the host waits for the last copy, so no slot is rewritten while it is still read.
    cuda::PinnedBuffer<unsigned char> ring_host;
    cuda::DeviceBuffer<unsigned char> ring_device;
    cuda::EventHandle ring_done;
    uint64_t ring_head = 0, ring_generation = 0;
    struct LastUpload {
      std::vector<unsigned char> bytes;
      const void* device = nullptr;  // eager: the ring slot holding `bytes`
      uint64_t generation = 0;       // eager: the ring's generation when it was written
      int64_t offset = -1;           // graph modes: the parameter block slot holding `bytes`
    };
    LastUpload last_eager[cuda::detail::kUploadKinds];
    LastUpload last_param[cuda::detail::kUploadKinds];

    // Graphs: the ops of Cuda::forward are first recorded (dry run) as a signature (op codes,
    // pointers, shapes) plus their per-call data, which graph launches read from `params`.
    Mode mode = Mode::eager;
    std::vector<int64_t> signature;
    std::vector<unsigned char> vars;
    bool vars_overflow = false;
    cuda::DeviceBuffer<unsigned char> params;
    cuda::PinnedBuffer<unsigned char> params_host;
    cuda::EventHandle params_copied;
    std::vector<std::vector<int64_t>> recent;  // signatures run eagerly lately (captured when seen again)
    struct Graph {
      uint64_t hash = 0;
      std::vector<int64_t> signature;
      cuda::GraphExecHandle exec;
      uint64_t used = 0;
    };
    std::vector<Graph> graphs;
    std::vector<std::vector<int64_t>> uncapturable;
    uint64_t clock = 0;
    uint64_t graph_launches = 0, graph_captures = 0;  // statistics

    // The first failure since it was last reported.
    bool failed = false;
    Error error{Errc::backend, {}};
  };

  static constexpr uint64_t kParamBytes = 64 * 1024;

  // --- devices ---

  // Number of CUDA devices (0 when there is no driver or no device).
  static int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return n;
  }
  // Why there is no device, or the name of device 0 ("NVIDIA H200").
  static std::string describe_devices() {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    }
    if (n == 0) return "no CUDA device";
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return std::to_string(n) + " device(s)";
    return std::to_string(n) + " device(s); 0: " + p.name + ", " + std::to_string(p.totalGlobalMem >> 20) + " MiB, sm_" +
           std::to_string(p.major) + std::to_string(p.minor);
  }

  // --- preparing weights (once per model) ---

  static Expected<Linear> make_linear(const TensorView& t) {
    if (!t || t.shape().size() != 2) return Error(Errc::invalid_argument, "make_linear: expected a 2-d tensor");
    if (t.quantized()) {
      return Error(Errc::invalid_argument, "tensor '" + t.name() + "' is quantized (" + std::string(to_string(t.quant)) +
                                               "); the CUDA backend takes BF16, F16 or F32 weights");
    }
    Linear l;
    l.rows = t.dim(0);
    l.cols = t.dim(1);
    l.device = cuda::current_device();
    const uint64_t n = t.numel();
    if (auto s = l.data.reserve(n, t.name().c_str()); !s) return std::move(s).error();
    if (auto s = upload_as_bf16(t, l.data.data(), n); !s) return std::move(s).error().with_context(t.name());
    return l;
  }

  static Expected<Vector> make_vector(const TensorView& t) {
    Vector v;
    if (!t) return v;
    const uint64_t n = t.numel();
    std::vector<float> host(static_cast<size_t>(n));
    for (uint64_t i = 0; i < n; ++i) host[i] = load_float(t.data, t.dtype(), i);
    if (auto s = v.values.reserve(n, t.name().c_str()); !s) return std::move(s).error();
    if (auto s = cuda::check(cudaMemcpy(v.values.data(), host.data(), n * sizeof(float), cudaMemcpyHostToDevice),
                             "upload of " + t.name());
        !s) {
      return std::move(s).error();
    }
    if (auto s = landed("upload of " + t.name()); !s) return std::move(s).error();
    v.size = static_cast<int64_t>(n);
    return v;
  }

  // --- per-session state ---

  static Expected<Context> make_context(const ContextOptions& o, const AttentionShape& shape, int64_t capacity,
                                        int64_t max_cols) {
    (void)max_cols;  // product scratch grows on first use
    if (auto s = check_kv_type(o.kv_cache); !s) return std::move(s).error();
    const int count = device_count();
    if (o.device < 0 || o.device >= count) {
      return Error(Errc::invalid_argument, "CUDA context: device " + std::to_string(o.device) + " is not available (" +
                                               describe_devices() + ")");
    }
    if (shape.head_dim <= 0 || shape.head_dim % 2 != 0 || shape.head_dim > cuda::kMaxHeadDim) {
      return Error(Errc::unsupported, "CUDA backend: head_dim " + std::to_string(shape.head_dim) +
                                          " is not supported (even, at most " + std::to_string(cuda::kMaxHeadDim) + ")");
    }
    if (shape.num_kv_heads <= 0 || shape.num_heads % shape.num_kv_heads != 0 || shape.num_heads > 65535) {
      return Error(Errc::unsupported, "CUDA backend: " + std::to_string(shape.num_heads) + " heads over " +
                                          std::to_string(shape.num_kv_heads) + " KV heads are not supported");
    }
    if (o.gemv_max_rows < 0 || o.gemv_max_rows > cuda::kMaxGemvRows || o.decode_attention_max_rows < 0 ||
        o.decode_attention_max_rows > cuda::kMaxDecodeRows || o.max_graphs < 1) {
      return Error(Errc::invalid_argument, "CUDA context: gemv_max_rows and decode_attention_max_rows must be in [0, 8], "
                                           "max_graphs at least 1");
    }
    if (capacity < 1) return Error(Errc::invalid_argument, "CUDA context: capacity must be positive");
    cuda::DeviceScope scope(o.device);
    if (auto s = cuda::check(scope.status(), "select device " + std::to_string(o.device)); !s) return std::move(s).error();
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, o.device) != cudaSuccess || major < 8) {
      (void)cudaGetLastError();
      return Error(Errc::unsupported, "CUDA backend: device " + std::to_string(o.device) +
                                          " has compute capability below 8.0 (bf16 needs Ampere or newer)");
    }
    if (const cudaError_t e = cuda::launch::probe_kernels(); e != cudaSuccess) {
      (void)cudaGetLastError();
      return Error(Errc::unsupported, "CUDA backend: the kernels were not compiled for device " + std::to_string(o.device) +
                                          " (" + cudaGetErrorString(e) + "); add its architecture to CMAKE_CUDA_ARCHITECTURES");
    }

    Context c;
    c.options = o;
    c.device = o.device;
    c.shape = shape;
    c.capacity = capacity;
    if (o.stream) {
      c.stream = o.stream;
    } else {
      cudaStream_t s = nullptr;
      if (auto st = cuda::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "create stream"); !st) {
        return std::move(st).error();
      }
      c.owned_stream.reset(s);
      c.stream = s;
    }
    cublasLtHandle_t lt = nullptr;
    if (auto st = cublasLtCreate(&lt); st != CUBLAS_STATUS_SUCCESS) return cuda::cublas_error(st, "create handle");
    c.lt.reset(lt);
    if (cudaDeviceGetAttribute(&c.sm_count, cudaDevAttrMultiProcessorCount, o.device) != cudaSuccess || c.sm_count < 1) {
      (void)cudaGetLastError();
      c.sm_count = 1;
    }
    // The device runs programmatic dependents from compute capability 9.0 on, and the kernels do
    // their part only when compiled for it (not from compute_80 code run by a newer device).
    c.programmatic = o.programmatic_launch && major >= 9 && cuda::launch::programmatic_supported();
    if (auto s = c.workspace.reserve(std::max<uint64_t>(o.gemm_workspace_bytes, 1), "cuBLASLt workspace"); !s) {
      return std::move(s).error();
    }
    const uint64_t records = static_cast<uint64_t>(std::max(o.decode_attention_max_rows, 1)) * shape.num_heads *
                             cuda::kMaxSplits * (shape.head_dim + 2);
    if (auto s = c.partials.reserve(records, "split-K attention records"); !s) return std::move(s).error();
    const uint64_t ring = std::max<uint64_t>(1ull << 20, 16ull * static_cast<uint64_t>(capacity) + 4096);
    if (auto s = c.ring_host.allocate(ring, "upload ring"); !s) return std::move(s).error();
    if (auto s = c.ring_device.reserve(ring, "upload ring"); !s) return std::move(s).error();
    if (auto s = c.params.reserve(kParamBytes, "graph parameters"); !s) return std::move(s).error();
    if (auto s = c.params_host.allocate(kParamBytes, "graph parameters"); !s) return std::move(s).error();
    for (cuda::EventHandle* e : {&c.ring_done, &c.params_copied}) {
      cudaEvent_t ev = nullptr;
      if (auto s = cuda::check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "create event"); !s) {
        return std::move(s).error();
      }
      e->reset(ev);
    }
    return c;
  }

  // Options for another context on the same device: a stream the caller passed is shared (its
  // sessions must then not run concurrently); otherwise the copy gets its own stream.
  static ContextOptions shared_context_options(const Context& c) {
    ContextOptions o = c.options;
    o.stream = c.owned_stream ? nullptr : c.stream;
    return o;
  }

  // A cache of the context's type (ContextOptions::kv_cache), or of an explicit type.
  static Status make_kv_cache(Context& c, KvCache& kv, int64_t layers, const AttentionShape& s, int64_t capacity) {
    return make_kv_cache(kv, layers, s, capacity, c.options.kv_cache);
  }
  static Status make_kv_cache(KvCache& kv, int64_t layers, const AttentionShape& s, int64_t capacity,
                              KvType type = KvType::f32) {
    if (auto st = check_kv_type(type); !st) return st;
    if (layers < 0 || s.num_kv_heads < 0 || s.head_dim < 0 || capacity < 0) {
      return Error(Errc::invalid_argument, "CUDA KV cache: negative dimension");
    }
    const uint64_t n = kv_state_bytes(type, layers, s.num_kv_heads, s.head_dim, capacity) / 2;  // keys, or values
    if (kv.type != type) {  // a cache made again with another type starts from fresh buffers
      kv.keys = {};
      kv.values = {};
    }
    kv.type = type;
    if (auto st = kv.keys.reserve(n, "KV cache keys"); !st) return st;
    if (auto st = kv.values.reserve(n, "KV cache values"); !st) return st;
    kv.layers = layers;
    kv.kv_heads = s.num_kv_heads;
    kv.head_dim = s.head_dim;
    kv.capacity = capacity;
    return ok();
  }

  // Copies entries [0, length) of every layer and head (a session copy). Waits for the device first.
  static Status copy_kv_cache(KvCache& dst, const KvCache& src, int64_t length) {
    cuda::DeviceScope scope(src.device());
    if (auto s = make_kv_cache(dst, src.layers, AttentionShape{src.kv_heads, src.kv_heads, src.head_dim, 0.0},
                               src.capacity, src.type);
        !s) {
      return s;
    }
    if (length <= 0) return ok();
    if (auto s = cuda::check(cudaDeviceSynchronize(), "copy KV cache"); !s) return s;
    const size_t pitch = static_cast<size_t>(src.head_bytes());
    const size_t width = static_cast<size_t>(length * src.head_dim) * src.element_bytes();
    const size_t rows = static_cast<size_t>(src.layers * src.kv_heads);
    for (auto [to, from] : {std::pair{dst.keys.data(), src.keys.data()}, std::pair{dst.values.data(), src.values.data()}}) {
      if (auto s = cuda::check(cudaMemcpy2D(to, pitch, from, pitch, width, rows, cudaMemcpyDeviceToDevice), "copy KV cache");
          !s) {
        return s;
      }
    }
    return landed("copy KV cache");
  }

  // --- saved state: the CPU backend's format (keys then values per layer and head, as elements
  // of the cache's type; kv_format is the type's number) ---

  static uint32_t kv_format(const KvCache& kv) { return static_cast<uint32_t>(kv.type); }
  static uint64_t kv_bytes_layers(const KvCache& kv, int64_t layers, int64_t length) {
    return kv_state_bytes(kv.type, layers, kv.kv_heads, kv.head_dim, length);
  }
  // Bytes of the caches of `layers` layers with `capacity` entries (Model::estimate_memory).
  static uint64_t kv_cache_bytes(const ContextOptions& o, int64_t layers, int64_t kv_heads, int64_t head_dim,
                                 int64_t capacity) {
    return kv_state_bytes(o.kv_cache, layers, kv_heads, head_dim, capacity);
  }
  static uint64_t kv_bytes(const KvCache& kv, int64_t length) { return kv_bytes_layers(kv, kv.layers, length); }

  static Status kv_save(const KvCache& kv, int64_t length, mimo::detail::ByteWriter& w) {
    if (length <= 0) return ok();
    cuda::DeviceScope scope(kv.device());
    if (auto s = cuda::check(cudaDeviceSynchronize(), "save KV cache"); !s) return s;
    std::vector<std::byte> host(static_cast<size_t>(length * kv.head_dim) * kv.element_bytes());
    const size_t bytes = host.size();
    for (int64_t l = 0; l < kv.layers; ++l) {
      for (int64_t h = 0; h < kv.kv_heads; ++h) {
        const uint64_t at = static_cast<uint64_t>(l * kv.kv_heads + h) * kv.head_bytes();
        for (const std::byte* src : {kv.keys.data() + at, kv.values.data() + at}) {
          if (auto s = cuda::check(cudaMemcpy(host.data(), src, bytes, cudaMemcpyDeviceToHost), "save KV cache"); !s) return s;
          if (auto s = w.write(host.data(), bytes); !s) return s;
        }
      }
    }
    return ok();
  }

  static Status kv_load(KvCache& kv, int64_t length, mimo::detail::ByteReader& r) {
    if (length <= 0) return ok();
    if (length > kv.capacity) return Error(Errc::corrupt_state, "KV cache: " + std::to_string(length) + " entries exceed the capacity");
    cuda::DeviceScope scope(kv.device());
    if (auto s = cuda::check(cudaDeviceSynchronize(), "load KV cache"); !s) return s;
    std::vector<std::byte> host(static_cast<size_t>(length * kv.head_dim) * kv.element_bytes());
    const size_t bytes = host.size();
    for (int64_t l = 0; l < kv.layers; ++l) {
      for (int64_t h = 0; h < kv.kv_heads; ++h) {
        const uint64_t at = static_cast<uint64_t>(l * kv.kv_heads + h) * kv.head_bytes();
        for (auto [dst, what] : {std::pair{kv.keys.data() + at, "keys"}, std::pair{kv.values.data() + at, "values"}}) {
          if (auto s = r.read(host.data(), bytes, what); !s) return s;
          if (auto s = cuda::check(cudaMemcpy(dst, host.data(), bytes, cudaMemcpyHostToDevice), "load KV cache"); !s) return s;
        }
      }
    }
    return landed("load KV cache");
  }

  static Status rows_save(const Rows& rows, mimo::detail::ByteWriter& w) {
    if (rows.count <= 0) return ok();
    if (auto s = cuda::check(cudaDeviceSynchronize(), "save rows"); !s) return s;
    std::vector<float> host(static_cast<size_t>(rows.width));
    for (int64_t i = 0; i < rows.count; ++i) {
      if (auto s = cuda::check(cudaMemcpy(host.data(), rows.row(i), host.size() * sizeof(float), cudaMemcpyDeviceToHost),
                               "save rows");
          !s) {
        return s;
      }
      if (auto s = w.write(host.data(), host.size() * sizeof(float)); !s) return s;
    }
    return ok();
  }

  static Status rows_load(const Rows& rows, mimo::detail::ByteReader& r) {
    if (rows.count <= 0) return ok();
    if (auto s = cuda::check(cudaDeviceSynchronize(), "load rows"); !s) return s;
    std::vector<float> host(static_cast<size_t>(rows.width));
    for (int64_t i = 0; i < rows.count; ++i) {
      if (auto s = r.read(host.data(), host.size() * sizeof(float), "rows"); !s) return s;
      if (auto s = cuda::check(cudaMemcpy(rows.row(i), host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice),
                               "load rows");
          !s) {
        return s;
      }
    }
    return landed("load rows");
  }

  // Rows of `width` floats in device memory; contents undefined. Growing waits for the device.
  static Expected<Rows> rows(Buffer& b, int64_t count, int64_t width, const char* what) {
    if (count < 0 || width < 0) return Error(Errc::invalid_argument, std::string(what) + ": negative size");
    if (auto s = b.reserve(static_cast<uint64_t>(count) * width, what); !s) return std::move(s).error();
    return Rows{b.data(), count, width, width};
  }

  // --- ops (enqueued on the context's stream) ---

  // out[i] = table[tokens[i]] widened to fp32. Tokens were validated by the caller.
  static void embed(Context& c, const Linear& table, std::span<const int32_t> tokens, const Rows& out) {
    Op op(c, "embed");
    if (!op) return;
    if (static_cast<int64_t>(tokens.size()) != out.count || out.width != table.cols || !same_device(c, table, "embed")) {
      return invalid(c, "embed: " + std::to_string(tokens.size()) + " tokens into " + shape_of(out) + " from a table of width " +
                            std::to_string(table.cols));
    }
    if (out.count == 0) return;
    const void* dev = upload(c, cuda::detail::Upload::tokens, tokens.data(), tokens.size_bytes());
    if (!dev) return;
    note(c, {code(cuda::detail::OpCode::embed), cuda::detail::addr(table.data.data()), table.rows, table.cols,
             cuda::detail::addr(dev)});
    note_rows(c, out);
    if (c.mode == Mode::dry) return;
    launched(c, cuda::launch::embed(c.stream, table.data.data(), table.rows, static_cast<const int32_t*>(dev), out), "embed");
  }

  // out = weight * x / sqrt(mean(x^2) + eps); out may alias x.
  static void rms_norm(Context& c, const Rows& x, const Vector& w, double eps, const Rows& out) {
    Op op(c, "rms_norm");
    if (!op) return;
    if (x.count != out.count || x.width != out.width || w.size != x.width) {
      return invalid(c, "rms_norm: " + shape_of(x) + " into " + shape_of(out) + " with a weight of " + std::to_string(w.size));
    }
    note(c, {code(cuda::detail::OpCode::rms_norm), cuda::detail::addr(w.data()), cuda::detail::bits_of(eps)});
    note_rows(c, x);
    note_rows(c, out);
    if (c.mode == Mode::dry) return;
    launched(c, cuda::launch::rms_norm(c.stream, x, w.data(), eps, out), "rms_norm");
  }

  // op.out (+)= x W^T + bias for every op.
  static void linear(Context& c, const Rows& x, std::span<const LinearOp> ops) {
    Op op(c, "linear");
    if (!op) return;
    for (const LinearOp& o : ops) {
      if (!op_fits(x, o)) {
        return invalid(c, "linear: " + shape_of(x) + " by a weight of " +
                              (o.weight ? std::to_string(o.weight->rows) + "x" + std::to_string(o.weight->cols) : "null") +
                              " into " + shape_of(o.out));
      }
      if (!same_device(c, *o.weight, "linear")) return;
    }
    if (x.count == 0 || ops.empty()) return;
    if (x.count <= c.options.gemv_max_rows) return gemv(c, x, ops);
    // cuBLASLt: one plan per product; a shape it has no algorithm for (odd leading dimensions)
    // runs on the GEMV kernel in chunks of rows instead.
    std::vector<const cuda::GemmPlan*> plans;
    for (const LinearOp& o : ops) {
      const cuda::GemmShape shape{o.weight->rows, x.count, x.width, o.out.stride, cuda::alignment_of(o.weight->data.data()),
                                  256, cuda::alignment_of(o.out.data)};
      Error ignored(Errc::backend, {});
      const cuda::GemmPlan* plan = c.plans.get(c.lt.get(), shape, c.workspace.bytes(), ignored);
      if (!plan) return gemv_chunks(c, x, ops);
      plans.push_back(plan);
    }
    // The input rows as bf16 (hi, and lo for split_bf16), then one or two products per op.
    const bool split = c.options.precision == GemmPrecision::split_bf16;
    const uint64_t elems = static_cast<uint64_t>(x.count) * x.width;
    if (!scratch(c, c.gemm_hi, elems, "product input (bf16)")) return;
    if (split && !scratch(c, c.gemm_lo, elems, "product input (bf16 low part)")) return;
    uint16_t* lo = split ? c.gemm_lo.data() : nullptr;
    note(c, {code(cuda::detail::OpCode::split), cuda::detail::addr(c.gemm_hi.data()), cuda::detail::addr(lo)});
    note_rows(c, x);
    if (c.mode != Mode::dry && !launched(c, cuda::launch::split_bf16(c.stream, x, c.gemm_hi.data(), lo), "linear (bf16 inputs)")) {
      return;
    }
    for (size_t i = 0; i < ops.size(); ++i) {
      const LinearOp& o = ops[i];
      const cuda::GemmPlan* plan = plans[i];
      note(c, {code(cuda::detail::OpCode::gemm), cuda::detail::addr(o.weight->data.data()), o.weight->rows, o.weight->cols,
               cuda::detail::addr(o.out.data), o.out.stride, o.accumulate ? 1 : 0, cuda::detail::addr(plan)});
      const float* bias = o.bias ? o.bias->data() : nullptr;
      if (bias) note(c, {code(cuda::detail::OpCode::bias), cuda::detail::addr(bias)});
      if (c.mode == Mode::dry) continue;
      for (int part = 0; part < (split ? 2 : 1); ++part) {
        const float beta = part == 1 || o.accumulate ? 1.0f : 0.0f;
        const cublasStatus_t st = cuda::run_gemm(c.lt.get(), *plan, o.weight->data.data(), part == 0 ? c.gemm_hi.data() : lo,
                                                 o.out.data, beta, c.workspace.data(), c.workspace.bytes(), c.stream);
        if (st != CUBLAS_STATUS_SUCCESS) return fail(c, cuda::cublas_error(st, "linear"));
      }
      if (bias && !launched(c, cuda::launch::add_bias(c.stream, o.out, bias), "linear (bias)")) return;
    }
  }
  static void linear(Context& c, const Rows& x, std::initializer_list<LinearOp> ops) {
    linear(c, x, std::span<const LinearOp>(ops.begin(), ops.size()));
  }

  // Rotate-half RoPE of every head of row i at positions[i].
  static void rope(Context& c, const Rows& x, int64_t heads, const AttentionShape& s, std::span<const int64_t> positions) {
    Op op(c, "rope");
    if (!op) return;
    if (static_cast<int64_t>(positions.size()) != x.count || heads * s.head_dim > x.width || s.head_dim % 2 != 0) {
      return invalid(c, "rope: " + std::to_string(positions.size()) + " positions for " + shape_of(x) + " (" +
                            std::to_string(heads) + " heads of " + std::to_string(s.head_dim) + ")");
    }
    if (x.count == 0) return;
    const void* dev = upload(c, cuda::detail::Upload::positions, positions.data(), positions.size_bytes());
    if (!dev) return;
    note(c, {code(cuda::detail::OpCode::rope), heads, s.head_dim, cuda::detail::bits_of(s.rope_theta), cuda::detail::addr(dev)});
    note_rows(c, x);
    if (c.mode == Mode::dry) return;
    launched(c, cuda::launch::rope(c.stream, x, heads, s.head_dim, static_cast<const int64_t*>(dev), s.rope_theta), "rope");
  }

  // gate = silu(gate) * up.
  static void silu_mul(Context& c, const Rows& gate, const Rows& up) {
    Op op(c, "silu_mul");
    if (!op) return;
    if (gate.count != up.count || gate.width != up.width) return invalid(c, "silu_mul: " + shape_of(gate) + " and " + shape_of(up));
    note(c, {code(cuda::detail::OpCode::silu_mul)});
    note_rows(c, gate);
    note_rows(c, up);
    if (c.mode == Mode::dry) return;
    launched(c, cuda::launch::silu_mul(c.stream, gate, up), "silu_mul");
  }

  // Stores k, v at entries [length, length + n) of `layer`, then causal attention: query row i
  // sees entries [0, length + i].
  static void attention(Context& c, KvCache& kv, int64_t layer, int64_t length, const Rows& q, const Rows& k, const Rows& v,
                        const AttentionShape& s, const Rows& out) {
    Op op(c, "attention");
    if (!op || !attention_fits(c, kv, layer, length, q, k, v, s, out) || q.count == 0) return;
    const int64_t* len = upload_length(c, length);
    if (!len) return;
    const cuda::AttentionArgs a = attention_args(kv, layer, len, q, s, out);
    note(c, {code(cuda::detail::OpCode::kv_store), cuda::detail::addr(a.kv.keys), cuda::detail::addr(a.kv.values), kv.kv_heads,
             kv.head_dim, kv.capacity, static_cast<int64_t>(kv.type), cuda::detail::addr(len)});
    note_rows(c, k);
    note_rows(c, v);
    if (c.mode != Mode::dry && !launched(c, cuda::launch::kv_store(c.stream, a.kv, len, k, v), "attention (store keys)")) return;
    attend(c, a, length, s);
  }

  // --- fused ops (backend.hpp); each runs as its plain ops unless options.fuse_kernels ---

  // rms_norm(x) into normed, then linear over it. Fused for one row: each block of the GEMV
  // normalises x into its shared memory, and `normed` is left unwritten.
  static void rms_norm_linear(Context& c, const Rows& x, const Vector& w, double eps, const Rows& normed,
                              std::span<const LinearOp> ops) {
    cuda::GemvBatch batch{};
    if (!norm_fusable(c, x, w, normed, ops, false, batch)) {
      rms_norm(c, x, w, eps, normed);
      return linear(c, normed, ops);
    }
    gemv_norm(c, x, w, eps, batch, false);
  }

  // rms_norm(x) into normed, the gate and up products, then silu_mul. Fused for one row: one GEMV
  // computes each gate row with its up row and writes silu(gate) * up; `normed` and `up` are left
  // unwritten.
  static void rms_norm_swiglu(Context& c, const Rows& x, const Vector& w, double eps, const Rows& normed,
                              const Linear& gate_proj, const Linear& up_proj, const Rows& gate, const Rows& up) {
    const LinearOp ops[] = {{&gate_proj, nullptr, gate}, {&up_proj, nullptr, up}};
    cuda::GemvBatch batch{};
    if (!norm_fusable(c, x, w, normed, ops, true, batch)) {
      rms_norm(c, x, w, eps, normed);
      linear(c, normed, ops);
      return silu_mul(c, gate, up);
    }
    gemv_norm(c, x, w, eps, batch, true);
  }

  // RoPE of q and k, then attention. Fused: one kernel rotates q and k and stores the keys and
  // values, then the attention kernels run as in attention().
  static void rope_attention(Context& c, KvCache& kv, int64_t layer, int64_t length, const Rows& q, const Rows& k,
                             const Rows& v, const AttentionShape& s, std::span<const int64_t> positions, const Rows& out) {
    if (!c.options.fuse_kernels) {
      rope(c, q, s.num_heads, s, positions);
      rope(c, k, s.num_kv_heads, s, positions);
      return attention(c, kv, layer, length, q, k, v, s, out);
    }
    Op op(c, "rope_attention");
    if (!op) return;
    if (static_cast<int64_t>(positions.size()) != q.count || s.head_dim % 2 != 0) {
      return invalid(c, "rope_attention: " + std::to_string(positions.size()) + " positions for " + shape_of(q) +
                            " (heads of " + std::to_string(s.head_dim) + ")");
    }
    if (!attention_fits(c, kv, layer, length, q, k, v, s, out) || q.count == 0) return;
    const void* pos = upload(c, cuda::detail::Upload::positions, positions.data(), positions.size_bytes());
    if (!pos) return;
    const int64_t* len = upload_length(c, length);
    if (!len) return;
    const cuda::AttentionArgs a = attention_args(kv, layer, len, q, s, out);
    note(c, {code(cuda::detail::OpCode::rope_store), s.num_heads, cuda::detail::bits_of(s.rope_theta), cuda::detail::addr(pos),
             cuda::detail::addr(a.kv.keys), cuda::detail::addr(a.kv.values), kv.kv_heads, kv.head_dim, kv.capacity,
             static_cast<int64_t>(kv.type), cuda::detail::addr(len)});
    note_rows(c, q);
    note_rows(c, k);
    note_rows(c, v);
    if (c.mode != Mode::dry &&
        !launched(c, cuda::launch::rope_store(c.stream, q, s.num_heads, k, v, a.kv, len, static_cast<const int64_t*>(pos), s.rope_theta),
                  "rope_attention (rope and store keys)")) {
      return;
    }
    attend(c, a, length, s);
  }

  // dst[i] = src[rows[i]].
  static void gather_rows(Context& c, const Rows& src, std::span<const int32_t> rows, const Rows& dst) {
    Op op(c, "gather_rows");
    if (!op) return;
    if (static_cast<int64_t>(rows.size()) != dst.count || src.width != dst.width) {
      return invalid(c, "gather_rows: " + std::to_string(rows.size()) + " rows of " + shape_of(src) + " into " + shape_of(dst));
    }
    for (int32_t r : rows) {
      if (r < 0 || r >= src.count) return invalid(c, "gather_rows: row " + std::to_string(r) + " of " + shape_of(src));
    }
    if (dst.count == 0) return;
    const void* dev = upload(c, cuda::detail::Upload::rows, rows.data(), rows.size_bytes());
    if (!dev) return;
    note(c, {code(cuda::detail::OpCode::gather), cuda::detail::addr(dev)});
    note_rows(c, src);
    note_rows(c, dst);
    if (c.mode == Mode::dry) return;
    launched(c, cuda::launch::gather_rows(c.stream, src, static_cast<const int32_t*>(dev), dst), "gather_rows");
  }

  // dst = src, row by row.
  static void copy_rows(Context& c, const Rows& src, const Rows& dst) {
    Op op(c, "copy_rows");
    if (!op) return;
    if (src.count != dst.count || src.width != dst.width) return invalid(c, "copy_rows: " + shape_of(src) + " into " + shape_of(dst));
    if (src.count == 0 || src.width == 0) return;
    note(c, {code(cuda::detail::OpCode::copy)});
    note_rows(c, src);
    note_rows(c, dst);
    if (c.mode == Mode::dry) return;
    launched(c,
             cudaMemcpy2DAsync(dst.data, static_cast<size_t>(dst.stride) * sizeof(float), src.data,
                               static_cast<size_t>(src.stride) * sizeof(float), static_cast<size_t>(src.width) * sizeof(float),
                               static_cast<size_t>(src.count), cudaMemcpyDeviceToDevice, c.stream),
             "copy_rows");
  }

  // Copies rows to host memory and waits for the stream: reports any failure of the ops before.
  static Status to_host(Context& c, const Rows& src, float* dst) {
    if (c.mode != Mode::eager) return Error(Errc::invalid_argument, "to_host: not allowed inside Cuda::forward");
    cuda::DeviceScope scope(c.device);
    if (!c.failed && src.count > 0 && src.width > 0) {
      launched(c,
               cudaMemcpy2DAsync(dst, static_cast<size_t>(src.width) * sizeof(float), src.data,
                                 static_cast<size_t>(src.stride) * sizeof(float), static_cast<size_t>(src.width) * sizeof(float),
                                 static_cast<size_t>(src.count), cudaMemcpyDeviceToHost, c.stream),
               "to_host");
    }
    return synchronize(c);
  }

  // Waits for the context's stream; returns (and clears) the first failure since the last report.
  static Status synchronize(Context& c) {
    cuda::DeviceScope scope(c.device);
    const cudaError_t e = c.stream ? cudaStreamSynchronize(c.stream) : cudaSuccess;
    if (e != cudaSuccess && !c.failed) fail(c, cuda::cuda_error(e, "stream"));
    if (!c.failed) return ok();
    c.failed = false;
    return std::move(c.error);
  }

  // --- greedy selection on the device (a few bytes come back instead of the logits) ---

  // Enqueues the argmax of each row of x (read back with read_argmax).
  static void argmax_rows(Context& c, const Rows& x) {
    Op op(c, "argmax");
    if (!op) return;
    if (x.count <= 0) return;
    const uint64_t n = static_cast<uint64_t>(x.count);
    if (!scratch(c, c.argmax, n, "argmax results") || !scratch(c, c.argmax_host, n, "argmax results")) return;
    c.argmax_rows = x.count;
    note(c, {code(cuda::detail::OpCode::argmax), cuda::detail::addr(c.argmax.data()), cuda::detail::addr(c.argmax_host.data())});
    note_rows(c, x);
    if (c.mode == Mode::dry) return;
    if (!launched(c, cuda::launch::argmax_rows(c.stream, x, c.argmax.data()), "argmax")) return;
    launched(c,
             cudaMemcpyAsync(c.argmax_host.data(), c.argmax.data(), static_cast<size_t>(x.count) * sizeof(int32_t),
                             cudaMemcpyDeviceToHost, c.stream),
             "argmax (copy)");
  }

  // Waits for the stream and returns the ids of the last argmax_rows.
  static Status read_argmax(Context& c, std::span<int32_t> out) {
    if (c.mode != Mode::eager) return Error(Errc::invalid_argument, "read_argmax: not allowed inside Cuda::forward");
    if (auto s = synchronize(c); !s) return s;
    if (static_cast<int64_t>(out.size()) > c.argmax_rows) {
      return Error(Errc::invalid_argument, "read_argmax: " + std::to_string(out.size()) + " ids asked, " +
                                               std::to_string(c.argmax_rows) + " computed");
    }
    std::copy(c.argmax_host.data(), c.argmax_host.data() + out.size(), out.begin());
    return ok();
  }

  // Enqueues the selection of each row's `count` largest values (read back with read_top).
  static void top_rows(Context& c, const Rows& x, int32_t count) {
    Op op(c, "top");
    if (!op) return;
    if (x.count <= 0) return;
    if (count < 1 || count > std::min<int64_t>(x.width, max_top_count)) {
      return fail(c, Error(Errc::invalid_argument, "top: count " + std::to_string(count) + " is not in [1, min(" +
                                                       std::to_string(x.width) + ", max_top_count)]"));
    }
    const uint64_t n = static_cast<uint64_t>(x.count) * static_cast<uint64_t>(count);
    if (!scratch(c, c.top_ids, n, "top ids") || !scratch(c, c.top_values, n, "top values") ||
        !scratch(c, c.top_ids_host, n, "top ids") || !scratch(c, c.top_values_host, n, "top values")) {
      return;
    }
    c.top_entries = static_cast<int64_t>(n);
    note(c, {code(cuda::detail::OpCode::top), count, cuda::detail::addr(c.top_ids.data()),
             cuda::detail::addr(c.top_values.data()), cuda::detail::addr(c.top_ids_host.data()),
             cuda::detail::addr(c.top_values_host.data())});
    note_rows(c, x);
    if (c.mode == Mode::dry) return;
    if (!launched(c, cuda::launch::top_rows(c.stream, x, count, c.top_ids.data(), c.top_values.data()), "top")) return;
    if (!launched(c, cudaMemcpyAsync(c.top_ids_host.data(), c.top_ids.data(), n * sizeof(int32_t), cudaMemcpyDeviceToHost, c.stream),
                  "top (copy)")) {
      return;
    }
    launched(c, cudaMemcpyAsync(c.top_values_host.data(), c.top_values.data(), n * sizeof(float), cudaMemcpyDeviceToHost, c.stream),
             "top (copy)");
  }

  // Waits for the stream and returns the first ids.size() entries of the last top_rows.
  static Status read_top(Context& c, std::span<int32_t> ids, std::span<float> values) {
    if (c.mode != Mode::eager) return Error(Errc::invalid_argument, "read_top: not allowed inside Cuda::forward");
    if (auto s = synchronize(c); !s) return s;
    if (ids.size() != values.size() || static_cast<int64_t>(ids.size()) > c.top_entries) {
      return Error(Errc::invalid_argument, "read_top: " + std::to_string(ids.size()) + " ids and " +
                                               std::to_string(values.size()) + " values asked, " +
                                               std::to_string(c.top_entries) + " computed");
    }
    std::copy_n(c.top_ids_host.data(), ids.size(), ids.begin());
    std::copy_n(c.top_values_host.data(), values.size(), values.begin());
    return ok();
  }

  // --- graphs ---

  // Runs `body(ctx) -> Status`, which enqueues the ops of one forward pass, as a CUDA graph when
  // it can. Each call first records the ops without running them (a dry run). The first time a
  // sequence of ops is seen it then runs eagerly; when a later call (among the next few) records
  // the same ops (same buffers and shapes; token ids, positions and KV lengths may differ), they
  // are captured into a graph, and from then on each such call replays the graph after one copy
  // of its per-call data. `body` may therefore be called up to three times per forward: it must
  // only enqueue ops (no to_host, no growing of buffers) and have no other side effects. A body
  // that fails in its dry run (cancellation) has run nothing. Without options.graphs, body runs
  // once, eagerly.
  template <class Body>
  static Status forward(Context& c, Body&& body) {
    if (!c.options.graphs || c.mode != Mode::eager) return body(c);
    cuda::DeviceScope scope(c.device);
    begin_recording(c, Mode::dry);
    Status s = body(c);
    c.mode = Mode::eager;
    std::vector<int64_t> signature = std::move(c.signature);
    std::vector<unsigned char> vars = std::move(c.vars);
    const bool overflow = c.vars_overflow;
    if (!s) return s;
    if (c.failed) return synchronize(c);
    if (!overflow) {
      const uint64_t hash = hash_of(signature);
      for (Context::Graph& g : c.graphs) {
        if (g.hash == hash && g.signature == signature) return launch_graph(c, g, vars);
      }
      const bool known_bad = std::find(c.uncapturable.begin(), c.uncapturable.end(), signature) != c.uncapturable.end();
      const auto seen = std::find(c.recent.begin(), c.recent.end(), signature);
      if (seen != c.recent.end() && !known_bad) {
        c.recent.erase(seen);
        bool launched_graph = false;
        if (auto st = capture(c, body, hash, signature, vars, launched_graph); !st) return st;
        if (launched_graph) return ok();
      } else if (!known_bad) {
        if (c.recent.size() >= 8) c.recent.erase(c.recent.begin());
        c.recent.push_back(std::move(signature));
      }
    }
    return body(c);
  }

  // Graph statistics of a context: graphs launched and captured so far.
  static uint64_t graph_launches(const Context& c) { return c.graph_launches; }
  static uint64_t graph_captures(const Context& c) { return c.graph_captures; }
  // Whether the context launches products as programmatic dependents (the option, where the
  // device and the build have the feature).
  static bool programmatic(const Context& c) { return c.programmatic; }
  static cudaStream_t stream(const Context& c) { return c.stream; }

 private:
  static int64_t code(cuda::detail::OpCode op) { return static_cast<int64_t>(op); }

  static std::string shape_of(const Rows& r) {
    return std::to_string(r.count) + "x" + std::to_string(r.width) + (r.stride != r.width ? " (stride " + std::to_string(r.stride) + ")" : "");
  }

  // The guard of every op: the context's device is current, and nothing runs after a failure
  // until it is reported.
  class Op {
   public:
    Op(Context& c, const char* what) : scope_(c.device) {
      ok_ = !c.failed;
      if (ok_ && scope_.status() != cudaSuccess) {
        fail(c, cuda::cuda_error(scope_.status(), std::string(what) + ": select device"));
        ok_ = false;
      }
    }
    explicit operator bool() const { return ok_; }

   private:
    cuda::DeviceScope scope_;
    bool ok_ = false;
  };

  static void fail(Context& c, Error e) {
    if (c.failed) return;
    c.failed = true;
    c.error = std::move(e);
  }
  static Status check_kv_type(KvType t) {
    if (cuda::cuda_kv_type(t)) return ok();
    const std::string name = valid_kv_type(t) ? std::string(to_string(t)) : std::to_string(static_cast<uint32_t>(t));
    return Error(Errc::invalid_argument, "CUDA KV cache type " + name + " is not supported (f32, f16 or bf16)");
  }
  static void invalid(Context& c, std::string message) { fail(c, Error(Errc::invalid_argument, "CUDA " + std::move(message))); }

  // Records a launch or copy status; false on failure.
  static bool launched(Context& c, cudaError_t e, const char* what) {
    if (e == cudaSuccess) return true;
    (void)cudaGetLastError();
    fail(c, cuda::cuda_error(e, what));
    return false;
  }

  // The checks of attention(); false (with the failure recorded) when the arguments do not fit.
  static bool attention_fits(Context& c, const KvCache& kv, int64_t layer, int64_t length, const Rows& q, const Rows& k,
                             const Rows& v, const AttentionShape& s, const Rows& out) {
    const int64_t n = q.count, D = s.head_dim;
    if (layer < 0 || layer >= kv.layers || length < 0 || n > kv.capacity - length || s.num_kv_heads != kv.kv_heads ||
        D != kv.head_dim || q.width < s.num_heads * D || k.width < kv.kv_heads * D || v.width < kv.kv_heads * D ||
        out.width < s.num_heads * D || k.count != n || v.count != n || out.count != n || s.num_heads % kv.kv_heads != 0) {
      invalid(c, "attention: layer " + std::to_string(layer) + " of " + std::to_string(kv.layers) + ", " + std::to_string(n) +
                     " rows after " + std::to_string(length) + " of " + std::to_string(kv.capacity) + " entries, q " +
                     shape_of(q) + ", k " + shape_of(k) + ", v " + shape_of(v) + ", out " + shape_of(out));
      return false;
    }
    if (kv.device() != c.device) {
      invalid(c, "attention: the KV cache is on another device than the context");
      return false;
    }
    return true;
  }

  static const int64_t* upload_length(Context& c, int64_t length) {
    return static_cast<const int64_t*>(upload(c, cuda::detail::Upload::length, &length, sizeof length));
  }

  static cuda::AttentionArgs attention_args(KvCache& kv, int64_t layer, const int64_t* len, const Rows& q,
                                            const AttentionShape& s, const Rows& out) {
    return cuda::AttentionArgs{kv.layer(layer), len, q, out, s.num_heads,
                               static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)))};
  }

  // The attention kernels over keys and values already stored: split-K for few rows, else tiled.
  static void attend(Context& c, const cuda::AttentionArgs& a, int64_t length, const AttentionShape& s) {
    const int64_t n = a.q.count, D = s.head_dim;
    if (n <= c.options.decode_attention_max_rows) {
      const auto [splits, split_len] = decode_splits(c, length + n);
      // The split records were sized for the context's shape, and the splits for its capacity.
      if (s.num_heads > c.shape.num_heads || D > c.shape.head_dim || splits * split_len < length + n) {
        return invalid(c, "attention: " + std::to_string(s.num_heads) + " heads of " + std::to_string(D) + " over " +
                              std::to_string(length + n) + " entries, for a context made for " +
                              std::to_string(c.shape.num_heads) + " heads of " + std::to_string(c.shape.head_dim) +
                              " and " + std::to_string(c.capacity) + " entries");
      }
      note(c, {code(cuda::detail::OpCode::decode), splits, split_len, s.num_heads, cuda::detail::addr(c.partials.data())});
      note_rows(c, a.q);
      note_rows(c, a.out);
      if (c.mode == Mode::dry) return;
      launched(c, cuda::launch::attention_decode(c.stream, a, static_cast<int>(splits), split_len, c.partials.data()),
               "attention (split-K)");
    } else {
      note(c, {code(cuda::detail::OpCode::prefill), s.num_heads});
      note_rows(c, a.q);
      note_rows(c, a.out);
      if (c.mode == Mode::dry) return;
      launched(c, cuda::launch::attention_prefill(c.stream, a), "attention (tiled)");
    }
  }

  // Whether the memory spans of two row sets overlap.
  static bool overlap(const Rows& a, const Rows& b) {
    if (a.count <= 0 || b.count <= 0 || a.width <= 0 || b.width <= 0) return false;
    const float* a_end = a.data + (a.count - 1) * a.stride + a.width;
    const float* b_end = b.data + (b.count - 1) * b.stride + b.width;
    return a.data < b_end && b.data < a_end;
  }

  // Whether a product's shapes fit its input rows x (the checks of linear()).
  static bool op_fits(const Rows& x, const LinearOp& o) {
    return o.weight && o.weight->cols == x.width && o.out.count == x.count && o.out.width == o.weight->rows &&
           o.out.stride >= o.out.width && (!o.bias || o.bias->size == 0 || o.bias->size == o.weight->rows);
  }

  // Whether linear(x, ops) would run without a failure: every op fits, on the context's device.
  static bool linear_fits(const Context& c, const Rows& x, std::span<const LinearOp> ops) {
    for (const LinearOp& o : ops) {
      if (!op_fits(x, o) || o.weight->device != c.device) return false;
    }
    return true;
  }

  // Whether rms_norm(x) into `normed` followed by `ops` over it runs as one fused GEMV (filling
  // `batch`): fusion on, one row, shapes that fit, and the layouts with which the plain ops take
  // their float4 paths (the fused kernel computes what those compute, bit for bit).
  static bool norm_fusable(const Context& c, const Rows& x, const Vector& w, const Rows& normed,
                           std::span<const LinearOp> ops, bool swiglu, cuda::GemvBatch& batch) {
    if (!c.options.fuse_kernels || c.failed || x.count != 1 || c.options.gemv_max_rows < 1 || w.size != x.width ||
        normed.count != 1 || normed.width != x.width || x.stride % 4 != 0 || normed.stride % 4 != 0 ||
        !cuda::aligned16(normed.data) || overlap(normed, x) || ops.empty() || ops.size() > static_cast<size_t>(cuda::kMaxGemvJobs) ||
        !linear_fits(c, x, ops)) {
      return false;
    }
    // The plain ops finish the norm before any product writes; the fused kernel's blocks read x
    // while others write their outputs.
    for (const LinearOp& o : ops) {
      if (overlap(o.out, x)) return false;
    }
    batch.count = static_cast<int>(ops.size());
    for (int j = 0; j < batch.count; ++j) batch.jobs[j] = gemv_job(ops[static_cast<size_t>(j)]);
    return cuda::launch::gemv_norm_fits(batch, x.data, w.data(), x.width, swiglu);
  }

  static void gemv_norm(Context& c, const Rows& x, const Vector& w, double eps, const cuda::GemvBatch& batch, bool swiglu) {
    Op op(c, swiglu ? "rms_norm_swiglu" : "rms_norm_linear");
    if (!op) return;
    note(c, {code(cuda::detail::OpCode::gemv_norm), cuda::detail::addr(w.data()), cuda::detail::bits_of(eps), swiglu ? 1 : 0});
    for (int j = 0; j < batch.count; ++j) note_job(c, batch.jobs[j]);
    note_rows(c, x);
    if (c.mode == Mode::dry) return;
    launched(c, cuda::launch::gemv_norm(c.stream, batch, x.data, w.data(), eps, x.width, swiglu, c.programmatic),
             swiglu ? "rms_norm_swiglu (GEMV)" : "rms_norm_linear (GEMV)");
  }

  // The GEMV kernel's job for a product (whose shapes have been checked).
  static cuda::GemvJob gemv_job(const LinearOp& o) {
    return cuda::GemvJob{o.weight->data.data(), o.weight->rows, o.bias ? o.bias->data() : nullptr, o.out.data, o.out.stride,
                         o.accumulate ? 1 : 0};
  }
  static void note_job(Context& c, const cuda::GemvJob& g) {
    note(c, {cuda::detail::addr(g.weight), g.rows, cuda::detail::addr(g.bias), cuda::detail::addr(g.out), g.out_stride,
             g.accumulate});
  }

  // The products of `ops` over at most kMaxGemvRows rows with the GEMV kernel, four per launch.
  static void gemv(Context& c, const Rows& x, std::span<const LinearOp> ops) {
    for (size_t first = 0; first < ops.size(); first += cuda::kMaxGemvJobs) {
      cuda::GemvBatch batch{};
      batch.count = static_cast<int>(std::min<size_t>(cuda::kMaxGemvJobs, ops.size() - first));
      for (int j = 0; j < batch.count; ++j) {
        batch.jobs[j] = gemv_job(ops[first + static_cast<size_t>(j)]);
        note(c, {code(cuda::detail::OpCode::gemv)});
        note_job(c, batch.jobs[j]);
      }
      note_rows(c, x);
      if (c.mode == Mode::dry) continue;
      if (!launched(c, cuda::launch::gemv(c.stream, batch, x.data, x.stride, static_cast<int>(x.count), x.width, c.programmatic),
                    "linear (GEMV)")) {
        return;
      }
    }
  }

  // The same over any number of rows, kMaxGemvRows at a time.
  static void gemv_chunks(Context& c, const Rows& x, std::span<const LinearOp> ops) {
    std::vector<LinearOp> part(ops.begin(), ops.end());
    for (int64_t r0 = 0; r0 < x.count; r0 += cuda::kMaxGemvRows) {
      const int64_t m = std::min<int64_t>(cuda::kMaxGemvRows, x.count - r0);
      for (size_t i = 0; i < ops.size(); ++i) part[i].out = ops[i].out.slice(r0, m);
      gemv(c, x.slice(r0, m), part);
      if (c.failed) return;
    }
  }

  static bool same_device(Context& c, const Linear& w, const char* what) {
    if (w.device == c.device) return true;
    invalid(c, std::string(what) + ": the weights are on device " + std::to_string(w.device) + ", the context on device " +
                   std::to_string(c.device));
    return false;
  }

  // Grows a context buffer, device or pinned host memory (not while a graph is being captured:
  // the dry run grew it already).
  template <class Buffer>
  static bool scratch(Context& c, Buffer& b, uint64_t n, const char* what) {
    if (b.size() >= n && b.data()) return true;
    if (c.mode == Mode::capture) {
      fail(c, Error(Errc::backend, std::string(what) + ": cannot grow during graph capture"));
      return false;
    }
    if (auto s = b.reserve(n, what); !s) {
      fail(c, std::move(s).error());
      return false;
    }
    return true;
  }

  // --- signatures (graph modes only) ---

  static void note(Context& c, std::initializer_list<int64_t> values) {
    if (c.mode != Mode::eager) c.signature.insert(c.signature.end(), values.begin(), values.end());
  }
  static void note_rows(Context& c, const Rows& r) {
    note(c, {cuda::detail::addr(r.data), r.count, r.width, r.stride});
  }

  static uint64_t hash_of(const std::vector<int64_t>& v) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int64_t x : v) h = (h ^ static_cast<uint64_t>(x)) * 0x100000001b3ull;
    return h;
  }

  static void begin_recording(Context& c, Mode mode) {
    c.mode = mode;
    c.signature.clear();
    c.vars.clear();
    c.vars_overflow = false;
    for (auto& u : c.last_param) u = Context::LastUpload{};
  }

  // Split-K configuration for keys up to `needed`. Every split has the same length, fixed per
  // context (16 keys, more when the capacity needs over kMaxSplits splits), so a key always falls
  // in the same split whatever the number of rows: a row's result does not depend on how many
  // rows were verified with it (speculative decoding reproduces plain decoding bit for bit). The
  // number of splits covers the key range rounded up to a power of two (at least 256, at most the
  // capacity), so consecutive decode steps share one graph. Short splits keep many blocks busy at
  // short contexts: on an H200, 200 keys took 17 us a layer in 4 splits of 64 (a chain of 12 keys
  // per warp).
  static std::pair<int64_t, int64_t> decode_splits(const Context& c, int64_t needed) {
    int64_t split_len = std::max<int64_t>(16, (c.capacity + cuda::kMaxSplits - 1) / cuda::kMaxSplits);
    split_len = (split_len + 15) / 16 * 16;
    int64_t range = 256;
    while (range < needed) range *= 2;
    range = std::max<int64_t>(1, std::min(range, c.capacity));
    const int64_t splits = std::clamp<int64_t>((range + split_len - 1) / split_len, 1, cuda::kMaxSplits);
    return {splits, split_len};
  }

  // A device copy of per-call host data for the op being enqueued. Eager: a slot of the upload
  // ring. Graph modes: a slot of the parameter block, whose contents are copied before each
  // graph launch. Identical consecutive data of one kind share a slot. Null on failure.
  static const void* upload(Context& c, cuda::detail::Upload kind, const void* src, size_t bytes) {
    const bool graph = c.mode != Mode::eager;
    Context::LastUpload& last = (graph ? c.last_param : c.last_eager)[static_cast<int>(kind)];
    const auto* p = static_cast<const unsigned char*>(src);
    const bool same = last.bytes.size() == bytes && (bytes == 0 || std::memcmp(last.bytes.data(), p, bytes) == 0);
    if (graph) {
      if (same && last.offset >= 0) return c.params.data() + last.offset;
      const size_t offset = (c.vars.size() + 15) / 16 * 16;
      if (offset + bytes > kParamBytes) {
        c.vars_overflow = true;
        if (c.mode == Mode::capture) fail(c, Error(Errc::backend, "graph parameters exceed the parameter block"));
        return c.mode == Mode::dry ? c.params.data() : nullptr;
      }
      c.vars.resize(offset + bytes);
      if (bytes) std::memcpy(c.vars.data() + offset, p, bytes);
      last.bytes.assign(p, p + bytes);
      last.offset = static_cast<int64_t>(offset);
      note(c, {static_cast<int64_t>(kind), static_cast<int64_t>(offset), static_cast<int64_t>(bytes)});
      return c.params.data() + offset;
    }
    if (same && last.device && last.generation == c.ring_generation) return last.device;
    const uint64_t size = (bytes + 15) / 16 * 16;
    if (size > c.ring_host.size()) {
      fail(c, Error(Errc::invalid_argument, "upload of " + std::to_string(bytes) + " bytes exceeds the staging ring"));
      return nullptr;
    }
    if (c.ring_head + size > c.ring_host.size()) {
      // Every earlier copy out of the ring is done once the last one is.
      if (!launched(c, cudaEventSynchronize(c.ring_done.get()), "upload (wait for the ring)")) return nullptr;
      c.ring_head = 0;
      ++c.ring_generation;
    }
    unsigned char* host = c.ring_host.data() + c.ring_head;
    unsigned char* dev = c.ring_device.data() + c.ring_head;
    if (bytes) std::memcpy(host, p, bytes);
    if (!launched(c, cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, c.stream), "upload")) return nullptr;
    if (!launched(c, cudaEventRecord(c.ring_done.get(), c.stream), "upload (event)")) return nullptr;
    c.ring_head += size;
    last.bytes.assign(p, p + bytes);
    last.device = dev;
    last.generation = c.ring_generation;
    return dev;
  }

  static Status launch_graph(Context& c, Context::Graph& g, const std::vector<unsigned char>& vars) {
    if (!vars.empty()) {
      // The previous parameter copy has read the pinned block before it is rewritten.
      if (auto s = cuda::check(cudaEventSynchronize(c.params_copied.get()), "graph parameters"); !s) return s;
      std::memcpy(c.params_host.data(), vars.data(), vars.size());
      if (auto s = cuda::check(cudaMemcpyAsync(c.params.data(), c.params_host.data(), vars.size(), cudaMemcpyHostToDevice, c.stream),
                               "graph parameters");
          !s) {
        return s;
      }
      if (auto s = cuda::check(cudaEventRecord(c.params_copied.get(), c.stream), "graph parameters"); !s) return s;
    }
    if (auto s = cuda::check(cudaGraphLaunch(g.exec.get(), c.stream), "graph launch"); !s) return s;
    g.used = ++c.clock;
    ++c.graph_launches;
    // The eager ring's deduplicated slots are still valid; nothing else to reset.
    return ok();
  }

  // Captures body into a graph and launches it. `launched_graph` stays false when capture is not
  // possible (the caller then runs body eagerly); the signature is then not tried again.
  template <class Body>
  static Status capture(Context& c, Body& body, uint64_t hash, const std::vector<int64_t>& signature,
                        const std::vector<unsigned char>& vars, bool& launched_graph) {
    auto give_up = [&] {
      (void)cudaGetLastError();
      c.failed = false;  // failures seen only under capture; the eager run reports real ones
      if (c.uncapturable.size() >= 16) c.uncapturable.erase(c.uncapturable.begin());
      c.uncapturable.push_back(signature);
      return ok();
    };
    if (cudaStreamBeginCapture(c.stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return give_up();
    begin_recording(c, Mode::capture);
    Status s = body(c);
    c.mode = Mode::eager;
    cudaGraph_t raw = nullptr;
    const cudaError_t e = cudaStreamEndCapture(c.stream, &raw);
    cuda::GraphHandle graph(raw);
    if (!s) {
      (void)cudaGetLastError();
      c.failed = false;
      return s;  // cancelled: nothing ran
    }
    if (e != cudaSuccess || !raw || c.failed || c.vars_overflow || c.signature != signature || c.vars.size() != vars.size()) {
      return give_up();
    }
    cudaGraphExec_t exec = nullptr;
    if (cudaGraphInstantiate(&exec, raw, 0) != cudaSuccess) return give_up();
    if (static_cast<int>(c.graphs.size()) >= c.options.max_graphs) {
      auto oldest = std::min_element(c.graphs.begin(), c.graphs.end(),
                                     [](const Context::Graph& a, const Context::Graph& b) { return a.used < b.used; });
      c.graphs.erase(oldest);
    }
    c.graphs.push_back(Context::Graph{hash, signature, cuda::GraphExecHandle(exec), 0});
    ++c.graph_captures;
    launched_graph = true;
    return launch_graph(c, c.graphs.back(), vars);
  }

  // Uploads a BF16, F16 or F32 tensor as bf16: BF16 is copied as is; the others go through a
  // device staging buffer in 64 MiB pieces and are converted there.
  // Waits until copies issued on the legacy default stream have landed. A plain cudaMemcpy from
  // pageable host memory may return before its DMA completes, and a device-to-device one returns
  // at once; the contexts' streams are non-blocking, so nothing else orders their kernels after
  // such a copy.
  static Status landed(const std::string& what) { return cuda::check(cudaDeviceSynchronize(), what); }

  static Status upload_as_bf16(const TensorView& t, uint16_t* dst, uint64_t n) {
    if (t.dtype() == DType::bf16) {
      if (auto s = cuda::check(cudaMemcpy(dst, t.data, n * sizeof(uint16_t), cudaMemcpyHostToDevice), "upload"); !s) {
        return s;
      }
      return landed("upload");
    }
    const cuda::StoredType type = t.dtype() == DType::f16 ? cuda::StoredType::f16 : cuda::StoredType::f32;
    if (t.dtype() != DType::f16 && t.dtype() != DType::f32) {
      return Error(Errc::unsupported, "dtype " + std::string(to_string(t.dtype())) + " cannot be uploaded");
    }
    const uint64_t elem = dtype_size(t.dtype());
    const uint64_t piece = std::min<uint64_t>(n, (64ull << 20) / elem);
    cuda::DeviceBuffer<unsigned char> staging;
    if (auto s = staging.reserve(piece * elem, "upload staging"); !s) return s;
    cudaStream_t raw = nullptr;
    if (auto s = cuda::check(cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking), "upload stream"); !s) return s;
    cuda::StreamHandle stream(raw);
    for (uint64_t first = 0; first < n; first += piece) {
      const uint64_t count = std::min(piece, n - first);
      // The previous piece's conversion has read the staging buffer before it is overwritten.
      if (auto s = cuda::check(cudaStreamSynchronize(raw), "upload"); !s) return s;
      if (auto s = cuda::check(cudaMemcpyAsync(staging.data(), t.data + first * elem, count * elem, cudaMemcpyHostToDevice, raw),
                               "upload");
          !s) {
        return s;
      }
      if (auto s = cuda::check(cuda::launch::convert_to_bf16(raw, staging.data(), type, dst + first, static_cast<int64_t>(count)),
                               "convert to bf16");
          !s) {
        return s;
      }
    }
    return cuda::check(cudaStreamSynchronize(raw), "upload");
  }
};

static_assert(Backend<Cuda>);

}  // namespace mimo
