// gemv_block.cu: the block GEMVs. act="int8", 2 < M <= 8 (after the quantize pre-pass):
// gemv_int8_block_kernel, blocks of RB weight units (i8: one output row; i2: one byte row = four
// output rows j, j+R, j+2R, j+3R) with threads striding over K, dotted with the int8 activations
// by __dp4a. act="none", M <= 8: gemv_none_kernel, the same layout with float32 FMA on decoded
// weights.
#include "gemv.cuh"
#include "launchers.cuh"

namespace ternary::cuda {
namespace {

// ---- act="int8", 2 < M <= 8: block GEMV after the quantize pre-pass ------------------------
//
// A block owns RB units and its threads stride over K in 16-byte chunks, keeping the next
// chunk's loads in flight while decoding the current one; partial sums meet in shared memory at
// the end. From M = 4 it beats the persistent GEMV on every i2 shape measured
// (docs/perf-notes.md): many small blocks keep more loads in flight than one warp per unit
// with a batch of 4 chunks, and x is quantized once, not once per block.
template <int MT, bool I2, bool VEC>
__global__ void __launch_bounds__(kThreads) gemv_int8_block_kernel(const Linear p) {
  using C = GemvCfg<MT, I2>;
  __shared__ int32_t red[(kThreads / 32) * C::NACC];
  const int64_t units = weight_units(I2, p.N);
  const int64_t u0 = int64_t(blockIdx.x) * C::RB;
  const int64_t K = p.K, ldq = act_padded_k(K), nchunks = (K + 15) / 16;
  const auto* W = static_cast<const uint8_t*>(p.weight);
  const int M = static_cast<int>(p.M);

  int32_t acc[C::RB][C::RPU][MT] = {};

  int64_t c = threadIdx.x;
  auto load = [&](uint4 (&w)[C::RB], int64_t chunk) {
#pragma unroll
    for (int r = 0; r < C::RB; ++r)
      w[r] = load_w16<VEC>(W + (u0 + r) * K, chunk * 16, K, u0 + r < units);
  };
  // Two register sets used in turn, no copy between them (see the persistent kernel's Stage).
  uint4 wa[C::RB], wb[C::RB];
  load(wa, c);
  pdl_wait();  // weights above need nothing from the quantize pre-pass; q below does
  auto step = [&](const uint4 (&w)[C::RB], uint4 (&wn)[C::RB]) {
    uint4 qv[MT];
    load_q16<MT, false>(p.q, ldq, c, M, qv);
    load(wn, c + blockDim.x);
#pragma unroll
    for (int r = 0; r < C::RB; ++r) dot16<MT, I2>(w[r], qv, acc[r]);
    c += blockDim.x;
    return c < nchunks;
  };
  if (c < nchunks)
    while (step(wa, wb) && step(wb, wa)) {
    }

  const int32_t total = block_sum_acc<C::NACC>(reinterpret_cast<int32_t(&)[C::NACC]>(acc), red);
  if (threadIdx.x < C::NACC) {
    const int i = threadIdx.x;
    const int r = i / (C::RPU * MT), s = (i / MT) % C::RPU, m = i % MT;
    const int64_t n = out_row<I2>(u0, r, s, units, p.N);
    if (m < M && n >= 0)
      store_int8<I2>(p, m, n, total, p.inv[m], p.qsum[m], scale_of(p, n), bias_of(p, n));
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
  const int64_t units = weight_units(I2, p.N);
  const int64_t u0 = int64_t(blockIdx.x) * C::RB;
  const int64_t K = p.K, nchunks = (K + 15) / 16;
  const auto* W = static_cast<const uint8_t*>(p.weight);
  const T* X = static_cast<const T*>(p.x);
  const int M = static_cast<int>(p.M);

  float acc[C::RB][C::RPU][MT] = {};

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
      store_out(p.y, m * p.N + n, epilogue_none(total, scale_of(p, n), p.bias, n),
                p.dtype);
  }
}

template <int MT, bool I2>
cudaError_t gemv_int8_block_mt(const Linear& p, cudaStream_t stream, bool pdl) {
  using C = GemvCfg<MT, I2>;
  const int64_t units = weight_units(I2, p.N);
  const dim3 grid(static_cast<unsigned>((units + C::RB - 1) / C::RB));
  const bool vec = p.K % 16 == 0 && reinterpret_cast<uintptr_t>(p.weight) % 16 == 0;
  auto* kernel = vec ? gemv_int8_block_kernel<MT, I2, true> : gemv_int8_block_kernel<MT, I2, false>;
  return launch(kernel, grid, dim3(gemv_threads(p.K)), stream, pdl, p);
}

template <int MT, bool I2, typename T>
cudaError_t gemv_none_mt(const Linear& p, cudaStream_t stream) {
  using C = GemvCfg<MT, I2, true>;
  const int64_t units = weight_units(I2, p.N);
  const dim3 grid(static_cast<unsigned>((units + C::RB - 1) / C::RB));
  const bool vec = p.K % 16 == 0 && reinterpret_cast<uintptr_t>(p.weight) % 16 == 0;
  gemv_none_kernel<MT, I2, T><<<grid, gemv_threads(p.K), 0, stream>>>(p, vec);
  return cudaGetLastError();
}

template <bool I2, typename T>
cudaError_t gemv_none_format(const Linear& p, cudaStream_t stream) {
  if (p.M <= 1) return gemv_none_mt<1, I2, T>(p, stream);
  if (p.M <= 2) return gemv_none_mt<2, I2, T>(p, stream);
  if (p.M <= 4) return gemv_none_mt<4, I2, T>(p, stream);
  return gemv_none_mt<8, I2, T>(p, stream);
}

}  // namespace

cudaError_t gemv_int8_block(const Linear& p, cudaStream_t stream, bool pdl) {
  if (p.M <= 4) return p.i2 ? gemv_int8_block_mt<4, true>(p, stream, pdl)
                            : gemv_int8_block_mt<4, false>(p, stream, pdl);
  return p.i2 ? gemv_int8_block_mt<8, true>(p, stream, pdl)
              : gemv_int8_block_mt<8, false>(p, stream, pdl);
}

cudaError_t gemv_none(const Linear& p, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::F32:
      return p.i2 ? gemv_none_format<true, float>(p, stream) : gemv_none_format<false, float>(p, stream);
    case DType::BF16:
      return p.i2 ? gemv_none_format<true, __nv_bfloat16>(p, stream)
                  : gemv_none_format<false, __nv_bfloat16>(p, stream);
    case DType::F16:
      return p.i2 ? gemv_none_format<true, __half>(p, stream) : gemv_none_format<false, __half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace ternary::cuda
