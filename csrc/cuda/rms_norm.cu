// rms_norm.cu: the act="int8" pre-pass of the rms_norm_linear ops (semantics: docs/DESIGN.md):
// per row of x, q / qsum of z = x * norm_weight as quantize.cu would give them for z, and inv
// multiplied by the row's sqrt(mean square + eps), from an exact integer sum of squares. The
// GEMV and tensor-core kernels then run as after the plain pre-pass. Every float step is an
// explicit round-to-nearest intrinsic: the build uses fast math.
#include "common.cuh"
#include "launchers.cuh"
#include "quantize.cuh"

namespace ternary::cuda {
namespace {

constexpr int kNormMaxWarps = 16;

// Threads of a block (one row): about eight 4-column groups each, 32 to kNormMaxWarps * 32.
// The block is one row's latency (two passes, two barriers, the final sums), so small blocks,
// many rows to an SM, serve many rows in one wave.
int rms_norm_threads(int64_t K) { return row_block_threads(K, 8, 1, kNormMaxWarps); }

// Whether each row of the [*, K] matrix at base can take quantize.cuh's load_x4 one-load path
// (8 or 16 bytes per four columns): K % 4 == 0 and base 4-element aligned.
template <typename T>
__device__ __forceinline__ bool rows_vec4(const T* base, int64_t K) {
  return K % 4 == 0 && reinterpret_cast<uintptr_t>(base) % (4 * sizeof(T)) == 0;
}

template <typename T, typename G>
__global__ void __launch_bounds__(kNormMaxWarps * 32) rms_norm_quantize_kernel(const Linear p) {
  __shared__ uint32_t red_x[kNormMaxWarps], red_z[kNormMaxWarps];
  __shared__ int32_t red_q[kNormMaxWarps];
  __shared__ unsigned long long red_ss[kNormMaxWarps];
  pdl_wait();
  pdl_launch_dependents();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t step = 4 * static_cast<int64_t>(blockDim.x);
  const int64_t m = blockIdx.x, K = p.K, ldq = act_padded_k(K);
  const T* xr = static_cast<const T*>(p.x) + m * K;
  const G* g = static_cast<const G*>(p.norm_weight);
  const bool vx = rows_vec4(static_cast<const T*>(p.x), K), vg = rows_vec4(g, K);
  int8_t* q = p.q + m * ldq;  // ldq is a multiple of 64: whole 4-byte groups

  // Pass 1: max |x| and max |z| as bit patterns (NaN and +-Inf above every finite value), four
  // columns per thread and step (the zeros past K change neither).
  uint32_t ax = 0, az = 0;
#pragma unroll 2
  for (int64_t k = 4 * threadIdx.x; k < K; k += step) {
    float v[4], w[4];
    load_x4(xr, k, K, vx, v);
    load_x4(g, k, K, vg, w);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      ax = max(ax, __float_as_uint(v[i]) & kF32AbsMask);
      az = max(az, __float_as_uint(__fmul_rn(v[i], w[i])) & kF32AbsMask);
    }
  }
  ax = __float_as_uint(warp_max_nonneg(__uint_as_float(ax)));
  az = __float_as_uint(warp_max_nonneg(__uint_as_float(az)));
  if (lane == 0) {
    red_x[warp] = ax;
    red_z[warp] = az;
  }
  __syncthreads();
  ax = __float_as_uint(warp_max_nonneg(__uint_as_float(lane < warps ? red_x[lane] : 0u)));
  az = __float_as_uint(warp_max_nonneg(__uint_as_float(lane < warps ? red_z[lane] : 0u)));
  // A row whose z holds NaN or +-Inf (so does any row whose x does) gives an all-NaN output.
  const bool finite = act_row_finite(az);
  const float inv = __fdiv_rn(kActQMax, fmaxf(__uint_as_float(az), kActEps));
  const float a = fmaxf(__uint_as_float(ax), kNormAmaxMin);
  const float u = __fdiv_rn(kNormQMax, a);

  // Pass 2 (x again, from L1/L2): q of z, four bytes per store, and the squares of x in
  // kNormQMax steps of a (zero past K, where v = 0). Integer sums: exact in any order.
  int32_t qsum = 0;
  unsigned long long ss = 0;
#pragma unroll 2
  for (int64_t k = 4 * threadIdx.x; k < ldq; k += step) {
    int32_t c[4] = {0, 0, 0, 0};
    if (finite) {
      float v[4], w[4];
      load_x4(xr, k, K, vx, v);
      load_x4(g, k, K, vg, w);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        c[i] = __float2int_rn(__fmul_rn(__fmul_rn(v[i], w[i]), inv));
        const int32_t pk = __float2int_rn(__fmul_rn(v[i], u));  // |pk| <= 32767
        ss += static_cast<unsigned long long>(pk * pk);
      }
    }
    *reinterpret_cast<uint32_t*>(q + k) =
        __byte_perm(__byte_perm(c[0], c[1], 0x0040), __byte_perm(c[2], c[3], 0x0040), 0x5410);
    qsum += c[0] + c[1] + c[2] + c[3];
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
    for (int w = 0; w < warps; ++w) {
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
  const dim3 grid(static_cast<unsigned>(p.M)), block(rms_norm_threads(p.K));
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
