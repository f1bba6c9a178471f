// mma_tile.cuh: what the two tensor-core kernels (mma_int8.cu, act="int8"; mma_float.cu,
// act="none") share: the block layout, its grid, and the meeting of the warps' partial sums.
// A block is kKWarps warps on one 32-output n tile (i8: 32 rows; i2: 8 byte rows x 4 fields)
// and 16 kMTiles rows of m; the warps take the k-steps in turn.
#pragma once

#include "common.cuh"

namespace ternary::cuda {

constexpr int kKWarps = 8;

// m blocks along x, so the blocks sharing an n tile run together and share its weights in L2.
template <int kMTiles>
dim3 mma_grid(const Linear& p) {
  const int64_t units = weight_units(p.i2, p.N), per_tile = p.i2 ? 8 : 32;
  const int64_t ntiles = (units + per_tile - 1) / per_tile;
  const int64_t mblocks = (p.M + 16 * kMTiles - 1) / (16 * kMTiles);
  return dim3(static_cast<unsigned>(mblocks < (int64_t(1) << 30) ? mblocks : int64_t(1) << 30),
              static_cast<unsigned>(ntiles < 65535 ? ntiles : 65535));
}

// The partial sums of one m16 tile (rows m0..m0 + 15) of the n tile starting at unit0: acc[nt][i]
// of lane (g, t) is row g (+8 for i >= 2), column 2t + (i & 1) of n8 tile nt. They meet in red,
// added in warp order (a fixed order: the result does not depend on the split), and
// store(m, n, sum) runs for each output inside M x N. Block-wide: every thread calls it.
template <bool I2, typename A, typename F>
__device__ __forceinline__ void sum_warps_and_store(A (&red)[kKWarps][16][32], const A (&acc)[4][4],
                                                    const Linear& p, int64_t m0, int64_t unit0,
                                                    F&& store) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t units = weight_units(I2, p.N);
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) red[warp][nt * 4 + i][lane] = acc[nt][i];
  __syncthreads();
  for (int e = threadIdx.x; e < 16 * 32; e += blockDim.x) {
    const int idx = e / 32, ln = e % 32, nt = idx / 4, i = idx % 4;
    A sum = 0;
#pragma unroll
    for (int w = 0; w < kKWarps; ++w) sum += red[w][idx][ln];
    const int64_t m = m0 + ln / 4 + (i >= 2 ? 8 : 0);
    const int col = 2 * (ln % 4) + (i & 1);
    int64_t n;
    if (I2) {
      const int64_t u = unit0 + col;
      n = u < units ? u + nt * units : p.N;
    } else {
      n = unit0 + nt * 8 + col;
    }
    if (m < p.M && n < p.N) store(m, n, sum);
  }
  __syncthreads();
}

}  // namespace ternary::cuda
