// kernels.h: the torch-free CUDA backend as the ATen glue (csrc/aten/ops_cuda.cpp) sees it. One
// problem description (Linear) and a router that mirrors the CPU dispatcher: plan_linear picks
// the kernels for a problem and says how much scratch they need, the glue allocates it through
// the caching allocator, and run_linear launches on the current stream. Launchers never
// synchronize or allocate, so calls are graph-capturable. Where each path lives: docs/DESIGN.md.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../ternary_format.h"

#if defined(__CUDACC__)
#define TERNARY_HD __host__ __device__
#else
#define TERNARY_HD
#endif

namespace ternary::cuda {

enum class DType { F32, BF16, F16 };
enum class Act { Int8, None };

// One linear problem: y[m, n] = s[n] * sum_k T[n, k] * a[m, k] (+ bias[n]), x and y in `dtype`.
struct Linear {
  int64_t M = 0, N = 0, K = 0;
  bool i2 = false;                 // weight format: i2 (uint8 [ceil(N/4), K]) or i8 (int8 [N, K])
  bool q8 = false;                 // int8 [N, K] weights in [-127, 127], not only ternary: the
                                   // int8 paths as i8; act="none" takes the dense path
  const void* weight = nullptr;    // row-major
  const float* scale = nullptr;    // s[n] = scale[n * scale_stride]
  int64_t scale_stride = 0;        // 0 (per tensor) or 1 (per output row)
  const float* bias = nullptr;     // float32 [N] or nullptr
  const void* x = nullptr;         // [M, K] contiguous, dtype
  void* y = nullptr;               // [M, N] contiguous, dtype
  DType dtype = DType::F32;
  // act="int8" scratch, set by run_linear: q int8 [M, act_padded_k(K)] (zero past K),
  // inv[m] = 127 / max|x_m| (NaN for a row holding NaN or +-Inf), qsum[m] = sum_k q.
  int8_t* q = nullptr;
  float* inv = nullptr;
  int32_t* qsum = nullptr;
  // The rms_norm_linear ops (act="int8"): x is normalised by RMSNorm with this weight [K] and
  // eps (eps_f32 of op_checks.h) as it is quantized; nullptr for the plain ops.
  const void* norm_weight = nullptr;
  DType norm_dtype = DType::F32;
  float norm_eps = 0.0f;
};

// The kernels that serve one problem.
enum class Path {
  kInt8Fused,  // act="int8", M <= 2 and small M * K (an input RMSNorm: M = 1, its weight in
               // x's dtype): the persistent GEMV quantizes x itself
  kInt8Gemv,   // act="int8", M <= 8: the quantize pre-pass, then the persistent / block GEMV
  kInt8Mma,    // act="int8", M > 8: the pre-pass, then int8 tensor-core tiles
  kInt8Library,  // act="int8", M > 8 where a registered library GEMM pays (launchers.cuh): the
                 // pre-pass; the caller then runs that GEMM on q / inv (ternary::_mma_int8)
  kNoneGemv,   // act="none", M <= 8: float32-accumulating GEMV
  kNoneMma,    // act="none", M > 8, 16-bit x, aligned: 16-bit tensor-core tiles
  kNoneLibrary,  // act="none", 16-bit x, where a registered library GEMM pays: nothing here;
                 // the caller runs that GEMM on x (ternary::_mma_float)
  kNoneDense,  // act="none", otherwise: dense weights for a library GEMM, then finish_dense
};

struct Plan {
  Path path = Path::kNoneGemv;
  int64_t scratch_bytes = 0;  // device scratch run_linear needs (16-byte aligned), or 0
};

// Smallest M the library GEMMs (Path::kInt8Library, Path::kNoneLibrary) may serve (past the
// GEMVs); the glue looks for a registered one only from here on. Where they pay is
// library_gemm_pays (launchers.cuh).
constexpr int64_t kLibraryMinM = 9;

// Picks the path for p (its shapes, dtype and the alignment of p.x and p.weight). Host only.
// library_gemm: whether the caller can run the library GEMM of `act` (Path::kInt8Library,
// Path::kNoneLibrary).
Plan plan_linear(const Linear& p, Act act, bool library_gemm = false);

// Launches the plan's kernels on `stream`, with `scratch` of plan.scratch_bytes bytes. For
// Path::kNoneDense it writes the dense weights T [N, K] in x's dtype to scratch and returns;
// the caller then computes acc = x @ T^T ([M, N], float32) and calls finish_dense. For
// Path::kInt8Library it writes q, inv and qsum to scratch (laid out as Linear says, from the
// scratch's start) and returns; the caller then runs the library GEMM. For Path::kNoneLibrary
// it does nothing: the caller runs the library GEMM on x.
cudaError_t run_linear(const Plan& plan, Linear p, void* scratch, cudaStream_t stream);
cudaError_t finish_dense(const Linear& p, const float* acc, cudaStream_t stream);

}  // namespace ternary::cuda
