// mma_int8.cu: act="int8" for M > 8 (prefill) on int8 tensor cores (mma.sync m16n8k32, s8 x s8
// -> s32, sm_80+), fed straight from global memory through registers.
//
// D[m, n] = sum_k q[m, k] * W[n, k]: q [M, K] row-major is mma's row-major A, W [N, K] row-major
// is its column-major B. The sum over k does not care about the order of k, so each thread
// loads 16 contiguous bytes (k0 + 16t .. +16, t = lane % 4) of its A and B rows and uses them as
// the k-slots {4t..4t+3, 16+4t..16+4t+3} of two k32 steps; A and B agree on the permutation, so
// the products pair up exactly as in the unpermuted sum. One 16-byte load of an i2 byte row is
// four n8 tiles (its four 2-bit fields), decoded to codes w + 1 by one shift and mask per word;
// sum(q) per row removes the offset in the epilogue.
//
// Block: 4 warps along n; warp tile 16 kMTiles (m) x 32 (n), kMTiles = 1, 2 or 4 chosen so the
// grid fills the GPU. Activation tiles are re-read by the four
// warps from L1; weights are read once per 64-row m block (from L2 after the first).
#include "common.cuh"

namespace ternary::cuda {
namespace {

constexpr int kWarps = 4;

__device__ __forceinline__ void mma_s8(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                       uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// kMTiles m16 tiles per warp: the warp tile is (16 kMTiles) x 32, the block tile
// (16 kMTiles) x 128 outputs.
template <int kMTiles, bool I2, bool VEC>
__global__ void __launch_bounds__(kWarps * 32) mma_int8_warp16mx32n_kernel(const Linear p) {
  constexpr int kBM = 16 * kMTiles;
  // Units (i8: output rows; i2: byte rows) per warp: 32 rows, or 8 byte rows x 4 fields.
  constexpr int kUnitsPerWarp = I2 ? 8 : 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t units = units_of(I2, p.N);
  const int64_t unit0 = (int64_t(blockIdx.x) * kWarps + warp) * kUnitsPerWarp;
  const int64_t K = p.K, ldq = q_ld(K), M = p.M;
  const auto* W = static_cast<const uint8_t*>(p.weight);

  // Rows of B this thread loads: i2 one byte row (its fields are the 4 n8 tiles), i8 one per tile.
  constexpr int kBLoads = I2 ? 1 : 4;
  const uint8_t* brow[kBLoads];
  bool bvalid[kBLoads];
#pragma unroll
  for (int j = 0; j < kBLoads; ++j) {
    const int64_t u = unit0 + j * 8 + g;
    bvalid[j] = u < units;
    brow[j] = W + (bvalid[j] ? u : 0) * K;
  }
  pdl_wait();

  const int64_t mblocks = (M + kBM - 1) / kBM;
  for (int64_t mb = blockIdx.y; mb < mblocks; mb += gridDim.y) {
    const int64_t m0 = mb * kBM;
    const int mtiles = static_cast<int>((M - m0 + 15) / 16 < kMTiles ? (M - m0 + 15) / 16 : kMTiles);
    const int8_t* arow[kMTiles][2];
    bool avalid[kMTiles][2];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + mt * 16 + h * 8 + g;
        avalid[mt][h] = m < M;
        arow[mt][h] = p.q + (m < M ? m : 0) * ldq;
      }

    int32_t acc[kMTiles][4][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0;

    for (int64_t k0 = 0; k0 < K; k0 += 64) {
      const int64_t kc = k0 + 16 * t;
      uint4 b[kBLoads];
#pragma unroll
      for (int j = 0; j < kBLoads; ++j) b[j] = load_w16<VEC>(brow[j], kc, K, bvalid[j]);
      uint4 a[kMTiles][2];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          a[mt][h] = mt < mtiles && avalid[mt][h]
                         ? __ldg(reinterpret_cast<const uint4*>(arow[mt][h] + kc))
                         : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        uint32_t bw[4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
          bw[i] = I2 ? (word(b[0], i) >> (2 * nt)) & 0x03030303u : word(b[I2 ? 0 : nt], i);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          if (mt < mtiles) {
            mma_s8(acc[mt][nt], a[mt][0].x, a[mt][1].x, a[mt][0].y, a[mt][1].y, bw[0], bw[1]);
            mma_s8(acc[mt][nt], a[mt][0].z, a[mt][1].z, a[mt][0].w, a[mt][1].w, bw[2], bw[3]);
          }
        }
      }
    }

    // Accumulator i of tile (mt, nt): row g (+8 for i >= 2), column 2t + (i & 1) of the n8 tile.
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t m = m0 + mt * 16 + g + (i >= 2 ? 8 : 0);
          const int col = 2 * t + (i & 1);
          int64_t n;
          if (I2) {
            const int64_t u = unit0 + col;
            n = u < units ? u + nt * units : p.N;
          } else {
            n = unit0 + nt * 8 + col;
          }
          if (m < M && n < p.N) {
            const int32_t dot = I2 ? acc[mt][nt][i] - p.qsum[m] : acc[mt][nt][i];
            store_out(p.y, m * p.N + n,
                      epilogue_int8(dot, p.inv[m], p.scale[n * p.scale_stride], p.bias, n),
                      p.dtype);
          }
        }
  }
}

int sm_count() {
  static int count[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 1;
  if (count[dev] == 0 &&
      cudaDeviceGetAttribute(&count[dev], cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    count[dev] = 1;
  return count[dev];
}

template <int kMTiles>
cudaError_t launch_mt(const Linear& p, cudaStream_t stream, bool pdl) {
  const int64_t units = units_of(p.i2, p.N);
  const int64_t per_block = kWarps * (p.i2 ? 8 : 32);
  const int64_t mblocks = (p.M + 16 * kMTiles - 1) / (16 * kMTiles);
  const dim3 grid(static_cast<unsigned>((units + per_block - 1) / per_block),
                  static_cast<unsigned>(mblocks < 65535 ? mblocks : 65535));
  const bool vec = p.K % 16 == 0 && reinterpret_cast<uintptr_t>(p.weight) % 16 == 0;
  const dim3 block(kWarps * 32);
  if (p.i2)
    return vec ? launch(mma_int8_warp16mx32n_kernel<kMTiles, true, true>, grid, block, stream, pdl, p)
               : launch(mma_int8_warp16mx32n_kernel<kMTiles, true, false>, grid, block, stream, pdl, p);
  return vec ? launch(mma_int8_warp16mx32n_kernel<kMTiles, false, true>, grid, block, stream, pdl, p)
             : launch(mma_int8_warp16mx32n_kernel<kMTiles, false, false>, grid, block, stream, pdl, p);
}

}  // namespace

// The largest warp tile (most reuse of each load) that still gives every SM two blocks; past
// 16 rows, at least two m16 tiles.
cudaError_t launch_mma_int8(const Linear& p, cudaStream_t stream, bool pdl) {
  const int64_t units = units_of(p.i2, p.N);
  const int64_t nblocks = (units + kWarps * (p.i2 ? 8 : 32) - 1) / (kWarps * (p.i2 ? 8 : 32));
  const int64_t want = 2 * int64_t(sm_count());
  auto blocks = [&](int64_t bm) { return nblocks * ((p.M + bm - 1) / bm); };
  if (blocks(64) >= want) return launch_mt<4>(p, stream, pdl);
  if (p.M > 16) return launch_mt<2>(p, stream, pdl);
  return launch_mt<1>(p, stream, pdl);
}

}  // namespace ternary::cuda
