// rms_norm.cu: the act="int8" pre-pass of the rms_norm_linear ops (semantics: docs/DESIGN.md):
// per row of x, q / qsum of z = x * norm_weight as quantize.cu would give them for z, and inv
// multiplied by the row's sqrt(mean square + eps), from an exact integer sum of squares. The
// GEMV and tensor-core kernels then run as after the plain pre-pass. Every float step is an
// explicit round-to-nearest intrinsic: the build uses fast math.
#include "common.cuh"
#include "launchers.cuh"

namespace ternary::cuda {
namespace {

constexpr int kNormThreads = 512;
constexpr int kNormWarps = kNormThreads / 32;

template <typename T, typename G>
__global__ void __launch_bounds__(kNormThreads) rms_norm_quantize_kernel(const Linear p) {
  __shared__ uint32_t red_x[kNormWarps], red_z[kNormWarps];
  __shared__ int32_t red_q[kNormWarps];
  __shared__ unsigned long long red_ss[kNormWarps];
  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t m = blockIdx.x, K = p.K, ldq = act_padded_k(K);
  const T* xr = static_cast<const T*>(p.x) + m * K;
  const G* g = static_cast<const G*>(p.norm_weight);
  int8_t* q = p.q + m * ldq;

  // Pass 1: max |x| and max |z| as bit patterns (NaN and +-Inf above every finite value).
  uint32_t ax = 0, az = 0;
  for (int64_t k = threadIdx.x; k < K; k += kNormThreads) {
    const float v = to_float(xr[k]);
    const float z = __fmul_rn(v, to_float(g[k]));
    ax = max(ax, __float_as_uint(v) & kF32AbsMask);
    az = max(az, __float_as_uint(z) & kF32AbsMask);
  }
  ax = __float_as_uint(warp_max_nonneg(__uint_as_float(ax)));
  az = __float_as_uint(warp_max_nonneg(__uint_as_float(az)));
  if (lane == 0) {
    red_x[warp] = ax;
    red_z[warp] = az;
  }
  __syncthreads();
  ax = __float_as_uint(warp_max_nonneg(__uint_as_float(lane < kNormWarps ? red_x[lane] : 0u)));
  az = __float_as_uint(warp_max_nonneg(__uint_as_float(lane < kNormWarps ? red_z[lane] : 0u)));
  // A row whose z holds NaN or +-Inf (so does any row whose x does) gives an all-NaN output.
  const bool finite = act_row_finite(az);
  const float inv = __fdiv_rn(kActQMax, fmaxf(__uint_as_float(az), kActEps));
  const float a = fmaxf(__uint_as_float(ax), kNormAmaxMin);
  const float u = __fdiv_rn(kNormQMax, a);

  // Pass 2 (x again, from L1/L2): q of z, and the squares of x in kNormQMax steps of a.
  int32_t qsum = 0;
  unsigned long long ss = 0;
  for (int64_t k = threadIdx.x; k < ldq; k += kNormThreads) {
    int32_t c = 0;
    if (k < K && finite) {
      const float v = to_float(xr[k]);
      c = __float2int_rn(__fmul_rn(__fmul_rn(v, to_float(g[k])), inv));
      const int32_t pk = __float2int_rn(__fmul_rn(v, u));  // |pk| <= 32767
      ss += static_cast<unsigned long long>(pk * pk);
    }
    q[k] = static_cast<int8_t>(c);
    qsum += c;
  }
  qsum = warp_sum(qsum);
  ss = warp_sum_u64(ss);
  if (lane == 0) {
    red_q[warp] = qsum;
    red_ss[warp] = ss;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t total_q = 0;
    unsigned long long total_ss = 0;
    for (int w = 0; w < kNormWarps; ++w) {
      total_q += red_q[w];
      total_ss += red_ss[w];
    }
    p.inv[m] = finite ? __fmul_rn(inv, rms_norm_factor(total_ss, a, K, p.norm_eps))
                      : __uint_as_float(0x7FC00000u);
    p.qsum[m] = total_q;
  }
}

template <typename T>
cudaError_t launch_for_x(const Linear& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.M)), block(kNormThreads);
  switch (p.norm_dtype) {
    case DType::F32:
      return launch(rms_norm_quantize_kernel<T, float>, grid, block, stream, pdl_enabled(), p);
    case DType::BF16:
      return launch(rms_norm_quantize_kernel<T, __nv_bfloat16>, grid, block, stream,
                    pdl_enabled(), p);
    case DType::F16:
      return launch(rms_norm_quantize_kernel<T, __half>, grid, block, stream, pdl_enabled(), p);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t rms_norm_quantize_rows(const Linear& p, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::F32: return launch_for_x<float>(p, stream);
    case DType::BF16: return launch_for_x<__nv_bfloat16>(p, stream);
    case DType::F16: return launch_for_x<__half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace ternary::cuda
