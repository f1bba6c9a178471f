// common.cuh: device helpers shared by the CUDA kernels (element types, exact epilogue
// arithmetic, reductions, programmatic dependent launch). Torch-free.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.cuh"

namespace ternary::cuda {

// setup.py builds with --use_fast_math, which would turn '/' into an approximate divide and
// fuse multiply-adds: every step that must match the reference bit for bit spells out its
// IEEE round-to-nearest intrinsic.
__device__ __forceinline__ float epilogue_int8(int32_t dot, float inv, float s, bool has_bias,
                                               float b) {
  const float v = __fmul_rn(__fdiv_rn(__int2float_rn(dot), inv), s);
  return has_bias ? __fadd_rn(v, b) : v;
}

__device__ __forceinline__ float epilogue_none(float dot, float s, const float* bias, int64_t n) {
  const float v = __fmul_rn(dot, s);
  return bias ? __fadd_rn(v, bias[n]) : v;
}

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// The rms_norm_linear ops' factor sqrt(t + eps) of one row (docs/DESIGN.md) from the exact sum
// ss of its squares in kNormQMax steps of a = max(max|x|, kNormAmaxMin): float32 steps in the
// reference's order, each an explicit round-to-nearest intrinsic (the build uses fast math).
__device__ __forceinline__ float rms_norm_factor(unsigned long long ss, float a, int64_t K,
                                                 float eps) {
  const float d = __fdiv_rn(a, kNormQMax);
  float t = __fdiv_rn(__ull2float_rn(ss), static_cast<float>(K));
  t = __fmul_rn(__fmul_rn(t, d), d);
  if (t < kF32MinNormal) t = 0.0f;
  return __fsqrt_rn(__fadd_rn(t, eps));
}

// The sum of a warp's 64-bit unsigned integers (exact in any order).
__device__ __forceinline__ unsigned long long warp_sum_u64(unsigned long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Output stores pick the type at run time (a uniform branch): the integer kernels are the same
// for every activation dtype, so they are not instantiated once per dtype.
__device__ __forceinline__ void store_out(void* y, int64_t i, float v, DType d) {
  if (d == DType::F32) {
    static_cast<float*>(y)[i] = v;
  } else if (d == DType::BF16) {
    static_cast<__nv_bfloat16*>(y)[i] = __float2bfloat16_rn(v);
  } else {
    static_cast<__half*>(y)[i] = __float2half_rn(v);
  }
}

// act="int8": y[m, n] from the exact integer dot t of output n with q row m, given s[n] and
// bias[n] (0 without bias). i2 dots were taken with codes w + 1: qsum removes the offset.
template <bool I2>
__device__ __forceinline__ void store_int8(const Linear& p, int64_t m, int64_t n, int32_t t,
                                           float inv, int32_t qsum, float s, float b) {
  if (I2) t -= qsum;
  store_out(p.y, m * p.N + n, epilogue_int8(t, inv, s, p.bias != nullptr, b), p.dtype);
}
__device__ __forceinline__ float scale_of(const Linear& p, int64_t n) {
  return p.scale[n * p.scale_stride];
}
__device__ __forceinline__ float bias_of(const Linear& p, int64_t n) {
  return p.bias ? p.bias[n] : 0.0f;
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// 16 weight bytes of one row starting at column k0 (zeros past K). VEC: K % 16 == 0 and the base
// is 16-byte aligned, so a chunk is either wholly inside the row or wholly past it. STREAM: the
// weights are read once (GEMV), and evict-first loads keep them from displacing the
// activations in cache; the tiled kernels re-read them from L2 and use plain loads.
template <bool VEC, bool STREAM = true>
__device__ __forceinline__ uint4 load_w16(const uint8_t* row, int64_t k0, int64_t K, bool valid) {
  if (!valid || k0 >= K) return make_uint4(0, 0, 0, 0);
  if constexpr (VEC) {
    const auto* p = reinterpret_cast<const uint4*>(row + k0);
    return STREAM ? __ldcs(p) : __ldg(p);
  } else {
    uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
    for (int b = 0; b < 16; ++b)
      if (k0 + b < K) w[b / 4] |= uint32_t(row[k0 + b]) << (8 * (b % 4));
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Integer sums and maxima of non-negative floats are one warp-reduction instruction on sm_80+
// (exact in any order), not five dependent shuffles: they sit on the GEMV's once-per-call path.
__device__ __forceinline__ int32_t warp_sum(int32_t v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return __reduce_add_sync(0xffffffffu, v);
#else
  return warp_sum<int32_t>(v);
#endif
}
// Maximum over the warp of floats with the sign bit clear, as bit patterns: for finite values
// the order of the values, with +Inf above them and NaN above that (act_row_finite).
__device__ __forceinline__ float warp_max_nonneg(float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return __uint_as_float(__reduce_max_sync(0xffffffffu, __float_as_uint(v)));
#else
  uint32_t b = __float_as_uint(v);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) b = max(b, __shfl_xor_sync(0xffffffffu, b, o));
  return __uint_as_float(b);
#endif
}

// Programmatic dependent launch (sm_90+): the quantize stage lets the linear stage launch early;
// the linear stage streams its first weights, then waits for the quantized activations.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Asks L2 for the 128-byte line holding p (one load-path request, no register written): the
// per-line alternative to prefetch_l2, for spreading a prefetch over many threads.
__device__ __forceinline__ void prefetch_l2_line(const void* p) {
#ifdef __CUDA_ARCH__
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

// Asks L2 for `bytes` (a multiple of 16) from the 16-byte aligned p, without reading anything
// into registers: L2 is the device's point of coherence, so this is safe before pdl_wait even
// when the predecessor writes the same memory (the later loads still see its writes).
__device__ __forceinline__ void prefetch_l2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#else
  for (uint32_t o = 0; o < bytes; o += 128) prefetch_l2_line(static_cast<const char*>(p) + o);
#endif
}

template <typename... Params, typename... Args>
cudaError_t launch_smem(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                        cudaStream_t stream, bool pdl, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, bool pdl,
                   Args&&... args) {
  return launch_smem(kernel, grid, block, 0, stream, pdl, std::forward<Args>(args)...);
}

}  // namespace ternary::cuda
