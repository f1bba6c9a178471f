// kernels.h: the torch-free CUDA kernel interface. The ATen glue (ops_cuda.cpp) validates,
// allocates the output and scratch through the caching allocator, and calls these launchers on
// the current stream. Launchers never synchronize or allocate, so calls are graph-capturable.
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

// Quantized activation rows are zero-padded to a multiple of this many columns, so kernels read
// q in whole 64-byte k-steps past K.
constexpr int64_t kQPad = 64;
TERNARY_HD constexpr int64_t q_ld(int64_t K) { return (K + kQPad - 1) / kQPad * kQPad; }

// One linear problem: y[m, n] = s[n] * sum_k T[n, k] * a[m, k] (+ bias[n]), x and y in `dtype`.
struct Linear {
  int64_t M = 0, N = 0, K = 0;
  bool i2 = false;                 // weight format: i2 (uint8 [ceil(N/4), K]) or i8 (int8 [N, K])
  const void* weight = nullptr;    // row-major
  const float* scale = nullptr;    // s[n] = scale[n * scale_stride]
  int64_t scale_stride = 0;        // 0 (per tensor) or 1 (per output row)
  const float* bias = nullptr;     // float32 [N] or nullptr
  const void* x = nullptr;         // [M, K] contiguous, dtype
  void* y = nullptr;               // [M, N] contiguous, dtype
  DType dtype = DType::F32;
  // act="int8": q int8 [M, q_ld(K)] (zero past K), inv[m] = 127 / max|x_m|, qsum[m] = sum_k q.
  int8_t* q = nullptr;
  float* inv = nullptr;
  int32_t* qsum = nullptr;
};

// Largest M served by the GEMV kernels.
constexpr int64_t kGemvMaxM = 8;

// Largest M served by the persistent act="int8" GEMV; 2 < M <= kGemvMaxM takes the block GEMV
// (faster there: measured on H100, benchmarks/CUDA_RESULTS.md).
constexpr int64_t kPersistMaxM = 2;

// Largest M * K whose act="int8" GEMV quantizes x inside the kernel (one launch, no scratch):
// every block quantizes the whole of x into shared memory, so the cost grows with M * K.
constexpr int64_t kFusedQuantMaxMK = 32768;

// Whether act="int8" needs the q / inv / qsum scratch in Linear (false: the persistent GEMV
// quantizes x itself; the scratch pointers are not read).
TERNARY_HD constexpr bool int8_needs_scratch(int64_t M, int64_t K) {
  return !(M <= kPersistMaxM && M * K <= kFusedQuantMaxMK);
}

// act="int8" pre-pass: per-row quantization of x into q / inv / qsum (one launch, M blocks).
cudaError_t quantize_rows(const Linear& p, cudaStream_t stream);
// act="int8": M <= 2 takes the persistent dp4a GEMV, in one launch when x is small enough
// (int8_needs_scratch false), else after the quantize pre-pass; 2 < M <= 8 the pre-pass and
// the block dp4a GEMV; M > 8 the pre-pass and the int8 tensor-core (mma.sync) tiles. With programmatic dependent launch (sm_90+) a kernel
// may be scheduled while its predecessor finishes and waits for it on the device;
// TERNARY_OPS_CUDA_PDL=0 turns that off.
cudaError_t linear_int8(const Linear& p, cudaStream_t stream);
// act="none", M <= 8: float32-accumulating GEMV.
cudaError_t linear_none_gemv(const Linear& p, cudaStream_t stream);
// act="none", M > 8 helpers: dense ternary weights T[N, K] in dtype (exact), for a library GEMM,
// then y = acc * s[n] (+ bias[n]) from that GEMM's output acc [M, N] (dtype) into p.y.
cudaError_t dequantize(const Linear& p, void* dense, cudaStream_t stream);
cudaError_t scale_bias(const Linear& p, const void* acc, cudaStream_t stream);
// act="none", M > 8, bfloat16 / half x: 16-bit tensor-core tiles on weights decoded in
// registers (mma_float.cu), where linear_none_mma_ok: K % 8 == 0, x 16-byte and the weights
// 8-byte aligned, i2 or M <= 32. Otherwise (and for float32 x) the dense helpers above.
bool linear_none_mma_ok(const Linear& p);
cudaError_t linear_none_mma(const Linear& p, cudaStream_t stream);

// Weight units: output rows for i8, byte rows (four outputs each) for i2. ternary_format.h's
// helpers are host-only constexpr; these are the same arithmetic for device code.
TERNARY_HD constexpr int64_t units_of(bool i2, int64_t N) {
  return i2 ? (N + kI2RowsPerByte - 1) / kI2RowsPerByte : N;
}

}  // namespace ternary::cuda
