// gemv.cu: activation quantization and the M <= 8 (decode) kernels.
//
// The GEMV streams the packed weights once. A block owns RB weight "units" (i8: one output row;
// i2: one byte row = four output rows j, j+R, j+2R, j+3R) and its threads stride over K in
// 16-byte chunks, keeping the next chunk's loads in flight while decoding the current one. For
// act="int8" the decode is free for i8 (the bytes are the weights) and two ALU ops per word for
// i2: (w >> 2s) & 0x03030303 are the codes w+1 of row j+sR, dotted with q by __dp4a; the code
// offset is removed once per output as sum(q). Partial sums meet in shared memory at the end.
#include <cstdlib>
#include <cstring>

#include "common.cuh"

namespace ternary::cuda {

bool pdl_enabled() {
  static const bool env_on = [] {
    const char* v = std::getenv("TERNARY_OPS_CUDA_PDL");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  if (!env_on) return false;
  static int major_of[64] = {0};  // per device, 0 = not yet read
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (major_of[dev] == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
      return false;
    major_of[dev] = major;
  }
  return major_of[dev] >= 9;
}

namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ float block_max(float v, float* red) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 16));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 8));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  const int warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  if (threadIdx.x % 32 == 0) red[warp] = v;
  __syncthreads();
  float r = 0.0f;
  for (int i = 0; i < nwarps; ++i) r = fmaxf(r, red[i]);
  __syncthreads();
  return r;
}

__device__ __forceinline__ int quant1(float x, float s) {
  // rintf rounds half to even, like torch.round; the product is one IEEE multiply.
  return static_cast<int>(fminf(fmaxf(rintf(__fmul_rn(x, s)), -128.0f), 127.0f));
}

// One block per row: amax, inv = 127 / max(amax, 1e-5), q (zero-padded to q_ld(K)), sum(q).
template <typename T>
__global__ void __launch_bounds__(kThreads) quantize_rows_kernel(const T* __restrict__ x, int64_t K,
                                                                 int8_t* __restrict__ q,
                                                                 float* __restrict__ inv,
                                                                 int32_t* __restrict__ qsum) {
  pdl_launch_dependents();
  __shared__ float red[32];
  __shared__ int32_t reds[32];
  const int64_t m = blockIdx.x, ldq = q_ld(K);
  const T* xr = x + m * K;
  float amax = 0.0f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(to_float(xr[k])));
  amax = block_max<T>(amax, red);
  const float s = __fdiv_rn(kActQMax, fmaxf(amax, kActEps));
  int8_t* qr = q + m * ldq;
  int32_t total = 0;
  for (int64_t k = 4 * int64_t(threadIdx.x); k < ldq; k += 4 * int64_t(blockDim.x)) {
    int v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = k + i < K ? quant1(to_float(xr[k + i]), s) : 0;
    total += v[0] + v[1] + v[2] + v[3];
    *reinterpret_cast<char4*>(qr + k) = make_char4(v[0], v[1], v[2], v[3]);
  }
  total = warp_sum(total);
  if (threadIdx.x % 32 == 0) reds[threadIdx.x / 32] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t t = 0;
    for (int i = 0; i < int(blockDim.x / 32); ++i) t += reds[i];
    inv[m] = s;
    qsum[m] = t;
  }
}

// Units per block and outputs per unit: keeps RB * RPU * MT accumulators at <= 32 registers.
// The float path (act="none") decodes per weight, so it takes half as many units.
template <int MT, bool I2, bool FLOAT = false>
struct GemvCfg {
  static constexpr int RPU = I2 ? kI2RowsPerByte : 1;
  static constexpr int RB0 = I2 ? (MT <= 2 ? 4 : (MT <= 4 ? 2 : 1)) : (MT <= 2 ? 8 : 4);
  static constexpr int RB = FLOAT && RB0 > 1 ? RB0 / 2 : RB0;
  static constexpr int NACC = RB * RPU * MT;
};

// Sums each accumulator over the block; thread i < NACC returns the total of accumulator i.
template <int NACC, typename A>
__device__ __forceinline__ A block_sum_acc(A (&acc)[NACC], A* red) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
#pragma unroll
  for (int i = 0; i < NACC; ++i) {
    const A v = warp_sum(acc[i]);
    if (lane == 0) red[warp * NACC + i] = v;
  }
  __syncthreads();
  A t = A(0);
  if (threadIdx.x < NACC)
    for (int w = 0; w < nwarps; ++w) t += red[w * NACC + threadIdx.x];
  return t;
}

// Output row of accumulator (r, s) of the block whose first unit is u0; -1 when out of range.
template <bool I2>
__device__ __forceinline__ int64_t out_row(int64_t u0, int r, int s, int64_t units, int64_t N) {
  const int64_t u = u0 + r;
  if (u >= units) return -1;
  const int64_t n = I2 ? u + s * units : u;
  return n < N ? n : -1;
}

// act="int8", M <= MT rows (MT in {1, 2, 4, 8}; rows >= M are skipped).
template <int MT, bool I2, bool VEC>
__global__ void __launch_bounds__(kThreads) gemv_int8_dp4a_kernel(const Linear p) {
  using C = GemvCfg<MT, I2>;
  __shared__ int32_t red[(kThreads / 32) * C::NACC];
  const int64_t units = units_of(I2, p.N);
  const int64_t u0 = int64_t(blockIdx.x) * C::RB;
  const int64_t K = p.K, ldq = q_ld(K), nchunks = (K + 15) / 16;
  const auto* W = static_cast<const uint8_t*>(p.weight);
  const int M = static_cast<int>(p.M);

  int32_t acc[C::RB][C::RPU][MT];
#pragma unroll
  for (int r = 0; r < C::RB; ++r)
#pragma unroll
    for (int s = 0; s < C::RPU; ++s)
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[r][s][m] = 0;

  int64_t c = threadIdx.x;
  uint4 w[C::RB];
#pragma unroll
  for (int r = 0; r < C::RB; ++r)
    w[r] = load_w16<VEC>(W + (u0 + r) * K, c * 16, K, u0 + r < units);
  pdl_wait();  // weights above need nothing from the quantize stage; q below does

  for (; c < nchunks; c += blockDim.x) {
    uint4 qv[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m)
      qv[m] = m < M ? __ldg(reinterpret_cast<const uint4*>(p.q + m * ldq + c * 16))
                    : make_uint4(0, 0, 0, 0);
    const int64_t cn = c + blockDim.x;
    uint4 wn[C::RB];
#pragma unroll
    for (int r = 0; r < C::RB; ++r)
      wn[r] = load_w16<VEC>(W + (u0 + r) * K, cn * 16, K, u0 + r < units);
#pragma unroll
    for (int r = 0; r < C::RB; ++r)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t wd = word(w[r], i);
#pragma unroll
        for (int s = 0; s < C::RPU; ++s) {
          const int a = I2 ? int((wd >> (2 * s)) & 0x03030303u) : int(wd);
#pragma unroll
          for (int m = 0; m < MT; ++m) acc[r][s][m] = __dp4a(a, int(word(qv[m], i)), acc[r][s][m]);
        }
      }
#pragma unroll
    for (int r = 0; r < C::RB; ++r) w[r] = wn[r];
  }

  int32_t total = block_sum_acc<C::NACC>(reinterpret_cast<int32_t(&)[C::NACC]>(acc), red);
  if (threadIdx.x < C::NACC) {
    const int i = threadIdx.x;
    const int r = i / (C::RPU * MT), s = (i / MT) % C::RPU, m = i % MT;
    const int64_t n = out_row<I2>(u0, r, s, units, p.N);
    if (m < M && n >= 0) {
      if (I2) total -= p.qsum[m];  // codes are w + 1
      store_out(p.y, m * p.N + n,
                epilogue_int8(total, p.inv[m], p.scale[n * p.scale_stride], p.bias, n), p.dtype);
    }
  }
}

// The weight of byte b (0..3) of word wd as a float, without a (quarter-rate) int-to-float
// conversion. i2: code c = (wd >> 8b+2s) & 3 -> float bits 0x4B000000 | c = 2^23 + c, minus
// 2^23 + 1 gives c - 1 exactly. i8: the byte is 0x01, 0x00 or 0xFF: bit 0 says nonzero, bit 1
// says negative.
template <bool I2>
__device__ __forceinline__ float weight_f(uint32_t wd, int b, int s) {
  if constexpr (I2) {
    return __int_as_float(0x4B000000u | ((wd >> (8 * b + 2 * s)) & 3u)) - 8388609.0f;
  } else {
    const uint32_t t = wd >> (8 * b);
    return __int_as_float(((t & 1u) * 0x3F800000u) | ((t & 2u) << 30));
  }
}

// act="none", M <= MT: float32 accumulation of w * x over the block's units.
template <int MT, bool I2, typename T>
__global__ void __launch_bounds__(kThreads) gemv_none_kernel(const Linear p, bool vec) {
  using C = GemvCfg<MT, I2, true>;
  __shared__ float red[(kThreads / 32) * C::NACC];
  const int64_t units = units_of(I2, p.N);
  const int64_t u0 = int64_t(blockIdx.x) * C::RB;
  const int64_t K = p.K, nchunks = (K + 15) / 16;
  const auto* W = static_cast<const uint8_t*>(p.weight);
  const T* X = static_cast<const T*>(p.x);
  const int M = static_cast<int>(p.M);

  float acc[C::RB][C::RPU][MT];
#pragma unroll
  for (int r = 0; r < C::RB; ++r)
#pragma unroll
    for (int s = 0; s < C::RPU; ++s)
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[r][s][m] = 0.0f;

  for (int64_t c = threadIdx.x; c < nchunks; c += blockDim.x) {
    uint4 w[C::RB];
#pragma unroll
    for (int r = 0; r < C::RB; ++r) {
      const uint8_t* row = W + (u0 + r) * K;
      w[r] = vec ? load_w16<true>(row, c * 16, K, u0 + r < units)
                 : load_w16<false>(row, c * 16, K, u0 + r < units);
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= M) break;
      const T* xr = X + m * K + c * 16;
      const int kn = static_cast<int>(K - c * 16 < 16 ? K - c * 16 : 16);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const int kk = 4 * i + b;
          const float xv = kk < kn ? to_float(__ldg(xr + kk)) : 0.0f;
#pragma unroll
          for (int r = 0; r < C::RB; ++r) {
            const uint32_t wd = word(w[r], i);
#pragma unroll
            for (int s = 0; s < C::RPU; ++s)
              acc[r][s][m] = fmaf(weight_f<I2>(wd, b, s), xv, acc[r][s][m]);
          }
        }
    }
  }

  const float total = block_sum_acc<C::NACC>(reinterpret_cast<float(&)[C::NACC]>(acc), red);
  if (threadIdx.x < C::NACC) {
    const int i = threadIdx.x;
    const int r = i / (C::RPU * MT), s = (i / MT) % C::RPU, m = i % MT;
    const int64_t n = out_row<I2>(u0, r, s, units, p.N);
    if (m < M && n >= 0)
      store_out(p.y, m * p.N + n, epilogue_none(total, p.scale[n * p.scale_stride], p.bias, n),
                p.dtype);
  }
}

// Threads per block: at least two 16-byte chunks per thread (so the next chunk's loads overlap
// the current one's decode, and smaller blocks fit the whole grid in one wave), whole warps,
// at most kThreads.
unsigned gemv_threads(int64_t K) {
  const int64_t chunks = (K + 15) / 16;
  const int64_t t = (chunks / 2 + 31) / 32 * 32;
  return static_cast<unsigned>(t < 32 ? 32 : (t > kThreads ? kThreads : t));
}

template <int MT, bool I2>
cudaError_t gemv_int8_mt(const Linear& p, cudaStream_t stream, bool pdl) {
  using C = GemvCfg<MT, I2>;
  const int64_t units = units_of(I2, p.N);
  const dim3 grid(static_cast<unsigned>((units + C::RB - 1) / C::RB));
  const bool vec = p.K % 16 == 0 && reinterpret_cast<uintptr_t>(p.weight) % 16 == 0;
  auto* kernel = vec ? gemv_int8_dp4a_kernel<MT, I2, true> : gemv_int8_dp4a_kernel<MT, I2, false>;
  return launch(kernel, grid, dim3(gemv_threads(p.K)), stream, pdl, p);
}

template <bool I2>
cudaError_t gemv_int8(const Linear& p, cudaStream_t stream, bool pdl) {
  if (p.M <= 1) return gemv_int8_mt<1, I2>(p, stream, pdl);
  if (p.M <= 2) return gemv_int8_mt<2, I2>(p, stream, pdl);
  if (p.M <= 4) return gemv_int8_mt<4, I2>(p, stream, pdl);
  return gemv_int8_mt<8, I2>(p, stream, pdl);
}

template <int MT, bool I2, typename T>
cudaError_t gemv_none_mt(const Linear& p, cudaStream_t stream) {
  using C = GemvCfg<MT, I2, true>;
  const int64_t units = units_of(I2, p.N);
  const dim3 grid(static_cast<unsigned>((units + C::RB - 1) / C::RB));
  const bool vec = p.K % 16 == 0 && reinterpret_cast<uintptr_t>(p.weight) % 16 == 0;
  gemv_none_kernel<MT, I2, T><<<grid, gemv_threads(p.K), 0, stream>>>(p, vec);
  return cudaGetLastError();
}

template <bool I2, typename T>
cudaError_t gemv_none(const Linear& p, cudaStream_t stream) {
  if (p.M <= 1) return gemv_none_mt<1, I2, T>(p, stream);
  if (p.M <= 2) return gemv_none_mt<2, I2, T>(p, stream);
  if (p.M <= 4) return gemv_none_mt<4, I2, T>(p, stream);
  return gemv_none_mt<8, I2, T>(p, stream);
}

}  // namespace

cudaError_t quantize_rows(const Linear& p, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.M));
  switch (p.dtype) {
    case DType::F32:
      quantize_rows_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const float*>(p.x), p.K, p.q,
                                                          p.inv, p.qsum);
      break;
    case DType::BF16:
      quantize_rows_kernel<<<grid, kThreads, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(p.x), p.K, p.q, p.inv, p.qsum);
      break;
    case DType::F16:
      quantize_rows_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const __half*>(p.x), p.K,
                                                          p.q, p.inv, p.qsum);
      break;
  }
  return cudaGetLastError();
}

cudaError_t linear_int8(const Linear& p, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;
  const bool pdl = pdl_enabled();
  if (p.M <= kGemvMaxM) return p.i2 ? gemv_int8<true>(p, stream, pdl) : gemv_int8<false>(p, stream, pdl);
  return launch_mma_int8(p, stream, pdl);
}

cudaError_t linear_none_gemv(const Linear& p, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::F32:
      return p.i2 ? gemv_none<true, float>(p, stream) : gemv_none<false, float>(p, stream);
    case DType::BF16:
      return p.i2 ? gemv_none<true, __nv_bfloat16>(p, stream)
                  : gemv_none<false, __nv_bfloat16>(p, stream);
    case DType::F16:
      return p.i2 ? gemv_none<true, __half>(p, stream) : gemv_none<false, __half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace ternary::cuda
