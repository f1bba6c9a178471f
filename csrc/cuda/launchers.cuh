// launchers.cuh: the kernel launchers of each file, for the router (router.cu). Internal to
// csrc/cuda: each kernel file exports only its launchers, and only the router calls them, so no
// two kernel files call each other.
#pragma once
#include "kernels.h"

namespace ternary::cuda {

// Largest M served by the GEMV kernels.
constexpr int64_t kGemvMaxM = 8;

// Largest M served by the persistent act="int8" GEMV; 2 < M <= kGemvMaxM takes the block GEMV
// (faster there: docs/perf-notes.md).
constexpr int64_t kPersistMaxM = 2;

// Largest M * K whose act="int8" GEMV quantizes x inside the kernel (one launch, no scratch):
// every block quantizes the whole of x into shared memory, so the cost grows with M * K.
constexpr int64_t kFusedQuantMaxMK = 32768;

// Whether act="int8" needs the q / inv / qsum scratch in Linear (false: the persistent GEMV
// quantizes x itself; the scratch pointers are not read).
TERNARY_HD constexpr bool int8_needs_scratch(int64_t M, int64_t K) {
  return !(M <= kPersistMaxM && M * K <= kFusedQuantMaxMK);
}

// Whether the persistent GEMV quantizes x itself for p (Path::kInt8Fused): small M * K, and for
// the rms_norm_linear ops also M = 1 and norm_weight in x's dtype (the cases decode takes; the
// others take the op's own pre-pass). The router and the GEMV decide by this one function.
inline bool int8_quantized_in_gemv(const Linear& p) {
  if (int8_needs_scratch(p.M, p.K)) return false;
  return p.norm_weight == nullptr || (p.M == 1 && p.norm_dtype == p.dtype);
}

// Streaming multiprocessors, L2 bytes and compute capability major of the current device, read
// once per device.
int device_sms();
int64_t device_l2_bytes();
int device_major();

// From this M on the library GEMM pays on every problem.
constexpr int64_t kLibraryAllM = 64;

// Whether the library GEMM (Triton, ternary_ops/cuda_mma.py), where registered, serves p in
// place of the built-in tensor-core kernels (int8: act="int8"). From kLibraryAllM rows on
// always: it was measured faster on an H200 on every shape, and where its tiles are too few for
// the SMs it splits K itself. Below that only where its sm_90 kernel runs (Hopper, i2 weights,
// K a multiple of 16 for its TMA loads, and for act="int8" K below 2^18, where its int32 sums
// fit: cuda_mma._wgmma_fits), which reads the weights at a rate the built-in kernels do not
// reach: for act="none" at any M, for act="int8" on large weights only (from 2^25 at M >= 16,
// 2^27 below), where that rate outweighs its longer start (docs/perf-notes.md).
inline bool library_gemm_pays(const Linear& p, bool int8) {
  if (p.M >= kLibraryAllM) return true;
  if (p.M < kLibraryMinM || !p.i2 || p.K % 16 != 0 || (int8 && p.K >= (int64_t{1} << 18)) ||
      device_major() != 9)
    return false;
  return !int8 || p.N * p.K >= (p.M >= 16 ? int64_t{1} << 25 : int64_t{1} << 27);
}

// quantize.cu: act="int8" pre-pass, per-row quantization of x into q / inv / qsum (M blocks).
cudaError_t quantize_rows(const Linear& p, cudaStream_t stream);
// rms_norm.cu: the pre-pass of the rms_norm_linear ops (p.norm_weight set): quantize_rows'
// output for RMSNorm(x) * norm_weight.
cudaError_t rms_norm_quantize_rows(const Linear& p, cudaStream_t stream);
// gemv_persist.cu: act="int8", M <= kPersistMaxM; quantizes x itself where
// int8_quantized_in_gemv, else reads the pre-pass's output.
cudaError_t gemv_int8_persistent(const Linear& p, cudaStream_t stream, bool pdl);
// gemv_block.cu: act="int8", kPersistMaxM < M <= kGemvMaxM, after the pre-pass; act="none",
// M <= kGemvMaxM.
cudaError_t gemv_int8_block(const Linear& p, cudaStream_t stream, bool pdl);
cudaError_t gemv_none(const Linear& p, cudaStream_t stream);
// mma_int8.cu: act="int8", M > kGemvMaxM, after the pre-pass.
cudaError_t launch_mma_int8(const Linear& p, cudaStream_t stream, bool pdl);
// mma_float.cu: act="none", M > kGemvMaxM, where linear_none_mma_ok: bfloat16 / half x,
// K % 8 == 0, x 16-byte and the weights 8-byte aligned, i2 or M <= 32.
bool linear_none_mma_ok(const Linear& p);
cudaError_t linear_none_mma(const Linear& p, cudaStream_t stream);
// dense.cu: the dense weights T [N, K] in x's dtype (exact) into `dense`.
cudaError_t dequantize(const Linear& p, void* dense, cudaStream_t stream);

// With programmatic dependent launch (sm_90+) a kernel may be scheduled while its predecessor
// finishes and waits for it on the device; TERNARY_OPS_CUDA_PDL=0 turns that off (device.cu).
bool pdl_enabled();

}  // namespace ternary::cuda
