// Matrix products with cuBLASLt: D[n, m] (+)= B[n, k] W[m, k]^T with bf16 W and B, fp32
// accumulation and fp32 D. In cuBLASLt's column-major terms D^T (m x n, ld = the output stride)
// = op(A) B^T with A = W stored k x m (ld = k) and op = T, the "TN" layout tensor cores prefer.
// The algorithm of each shape is chosen once by cuBLASLt's heuristic and cached per context.
// Host code (no kernels).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mimo/backend/cuda/device_memory.hpp"
#include "mimo/error.hpp"

namespace mimo::cuda {

inline Error cublas_error(cublasStatus_t s, const std::string& what) {
  return Error(Errc::backend, "cuBLASLt: " + what + ": " + cublasLtGetStatusName(s) + " (" + cublasLtGetStatusString(s) + ")");
}

using LtHandle = Handle<cublasLtHandle_t, cublasLtDestroy>;
using LtMatmulDesc = Handle<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using LtLayout = Handle<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using LtPreference = Handle<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

// The largest power of two (at most 256) that divides the address: cuBLASLt's heuristic must
// only offer algorithms that work at the alignment the pointers actually have.
inline uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align >>= 1;
  return align;
}

struct GemmShape {
  int64_t m = 0;    // output columns (rows of W)
  int64_t n = 0;    // rows of the input and the output
  int64_t k = 0;    // input columns
  int64_t ldd = 0;  // floats between output rows
  uint32_t align_a = 0, align_b = 0, align_d = 0;
  bool operator==(const GemmShape&) const = default;
};

// Descriptors and the chosen algorithm of one shape.
struct GemmPlan {
  GemmShape shape;
  LtMatmulDesc desc;
  LtLayout a, b, d;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

class GemmPlans {
 public:
  // The plan of a shape, created on first use. Null with `error` set when cuBLASLt has no
  // algorithm for it or refuses a descriptor (remembered: the heuristic is asked once per shape).
  const GemmPlan* get(cublasLtHandle_t handle, const GemmShape& s, uint64_t workspace_bytes, Error& error) {
    for (const auto& p : plans_) {
      if (p->shape == s) return p.get();
    }
    for (const auto& f : failed_) {
      if (f == s) {
        error = Error(Errc::backend, "cuBLASLt: no algorithm for this product shape");
        return nullptr;
      }
    }
    Error first(Errc::backend, {});
    const GemmPlan* plan = create(handle, s, workspace_bytes, first);
    if (!plan) {
      failed_.push_back(s);
      error = std::move(first);
    }
    return plan;
  }

  size_t size() const { return plans_.size(); }

 private:
  const GemmPlan* create(cublasLtHandle_t handle, const GemmShape& s, uint64_t workspace_bytes, Error& error) {
    auto plan = std::make_unique<GemmPlan>();
    plan->shape = s;
    const std::string what = "product " + std::to_string(s.n) + "x" + std::to_string(s.k) + " by " +
                             std::to_string(s.m) + "x" + std::to_string(s.k) + "^T";
    auto fail = [&](cublasStatus_t st, const char* step) {
      error = cublas_error(st, what + " (" + step + ")");
      return nullptr;
    };
    cublasLtMatmulDesc_t desc = nullptr;
    if (auto st = cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F); st != CUBLAS_STATUS_SUCCESS) {
      return fail(st, "descriptor");
    }
    plan->desc.reset(desc);
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    if (auto st = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof trans_a);
        st != CUBLAS_STATUS_SUCCESS) {
      return fail(st, "transpose A");
    }
    if (auto st = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof trans_b);
        st != CUBLAS_STATUS_SUCCESS) {
      return fail(st, "transpose B");
    }
    struct L {
      LtLayout& out;
      cudaDataType type;
      int64_t rows, cols, ld;
    };
    for (L l : {L{plan->a, CUDA_R_16BF, s.k, s.m, s.k}, L{plan->b, CUDA_R_16BF, s.k, s.n, s.k},
                L{plan->d, CUDA_R_32F, s.m, s.n, s.ldd}}) {
      cublasLtMatrixLayout_t layout = nullptr;
      if (auto st = cublasLtMatrixLayoutCreate(&layout, l.type, static_cast<uint64_t>(l.rows),
                                               static_cast<uint64_t>(l.cols), l.ld);
          st != CUBLAS_STATUS_SUCCESS) {
        return fail(st, "layout");
      }
      l.out.reset(layout);
    }
    cublasLtMatmulPreference_t pref_raw = nullptr;
    if (auto st = cublasLtMatmulPreferenceCreate(&pref_raw); st != CUBLAS_STATUS_SUCCESS) return fail(st, "preference");
    LtPreference pref(pref_raw);
    const uint64_t ws = workspace_bytes;
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref_raw, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    for (auto [attr, value] : {std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, s.align_a},
                               std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, s.align_b},
                               std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, s.align_d},
                               std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, s.align_d}}) {
      if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceSetAttribute(pref_raw, attr, &value, sizeof value);
    }
    if (st != CUBLAS_STATUS_SUCCESS) return fail(st, "preference attributes");
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    st = cublasLtMatmulAlgoGetHeuristic(handle, desc, plan->a.get(), plan->b.get(), plan->d.get(), plan->d.get(),
                                        pref_raw, 1, &result, &found);
    if (st != CUBLAS_STATUS_SUCCESS) return fail(st, "heuristic");
    if (found < 1 || result.state != CUBLAS_STATUS_SUCCESS) return fail(CUBLAS_STATUS_NOT_SUPPORTED, "no algorithm");
    plan->algo = result.algo;
    plan->workspace = result.workspaceSize;
    plans_.push_back(std::move(plan));
    return plans_.back().get();
  }

  std::vector<std::unique_ptr<GemmPlan>> plans_;  // few shapes per model: a linear search is enough
  std::vector<GemmShape> failed_;                 // shapes without an algorithm (asked once)
};

// D = alpha * op(A) B + beta * D with the plan's algorithm (C is D: in place).
inline cublasStatus_t run_gemm(cublasLtHandle_t handle, const GemmPlan& p, const uint16_t* weight, const uint16_t* input,
                               float* out, float beta, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const float alpha = 1.0f;
  return cublasLtMatmul(handle, p.desc.get(), &alpha, weight, p.a.get(), input, p.b.get(), &beta, out, p.d.get(), out,
                        p.d.get(), &p.algo, workspace, workspace_bytes, stream);
}

}  // namespace mimo::cuda
