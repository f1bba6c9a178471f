// gemv.cuh: what the M <= 8 (decode) GEMV kernels share: block configuration, reductions,
// and the act="int8" decode and dot of 16 weight bytes. Internal to csrc/cuda.
#pragma once
#include "common.cuh"

namespace ternary::cuda {
namespace {

constexpr int kThreads = 256;

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

// ---- act="int8", M <= 8: decode, dot and epilogue shared by both GEMV kernels ---------------

// q of rows m < M at 16-byte chunk c; zeros for the rows >= M that the tile rounds up to. SMEM:
// q was quantized into shared memory by the kernel itself; else it is the pre-pass's output,
// read through the read-only cache.
template <int MT, bool SMEM>
__device__ __forceinline__ void load_q16(const int8_t* q, int64_t ldq, int64_t c, int M,
                                         uint4 (&qv)[MT]) {
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const auto* qp = reinterpret_cast<const uint4*>(q + m * ldq + c * 16);
    qv[m] = m >= M ? make_uint4(0, 0, 0, 0) : (SMEM ? *qp : __ldg(qp));
  }
}

// acc[s][m] += 16-byte dot of unit output s with q row m. i8: the bytes are the weights. i2:
// (w >> 2s) & 0x03030303 are the codes w + 1 of output s (row j + sR), two ALU ops per word;
// the offset is removed once per output by store_int8 (common.cuh).
template <int MT, bool I2>
__device__ __forceinline__ void dot16(const uint4& w, const uint4 (&qv)[MT],
                                      int32_t (&acc)[I2 ? kI2RowsPerByte : 1][MT]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t wd = word(w, i);
#pragma unroll
    for (int s = 0; s < (I2 ? kI2RowsPerByte : 1); ++s) {
      const int a = I2 ? int((wd >> (2 * s)) & 0x03030303u) : int(wd);
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[s][m] = __dp4a(a, int(word(qv[m], i)), acc[s][m]);
    }
  }
}

// Threads per block: at least two 16-byte chunks per thread (so the next chunk's loads overlap
// the current one's decode, and smaller blocks fit the whole grid in one wave), whole warps,
// at most kThreads.
inline unsigned gemv_threads(int64_t K) {
  const int64_t chunks = (K + 15) / 16;
  const int64_t t = (chunks / 2 + 31) / 32 * 32;
  return static_cast<unsigned>(t < 32 ? 32 : (t > kThreads ? kThreads : t));
}

}  // namespace
}  // namespace ternary::cuda
