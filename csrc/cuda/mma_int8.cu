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
#include <type_traits>

#include "mma_tile.cuh"

namespace ternary::cuda {
namespace {

__device__ __forceinline__ void mma_s8(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                       uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Block (mma_tile.cuh): kKWarps warps on one 32-output n tile and 16 kMTiles rows of m; the
// warps take the 64-column k-steps in turn (warp w: steps w, w + kKWarps, ...), with kDepth
// steps in flight (launch_mt picks it). Splitting k inside the block keeps every SM busy when
// N / 32 * M / 16 tiles are few (a decoder layer at M = 16 has 80-448 of them); the partial
// sums meet in shared memory (sum_warps_and_store).

template <int kMTiles, int kDepth, bool I2, bool VEC>
__global__ void __launch_bounds__(kKWarps * 32) mma_int8_ksplit_kernel(const Linear p) {
  constexpr int kBM = 16 * kMTiles;
  constexpr int kUnits = I2 ? 8 : 32;   // weight units per n tile
  constexpr int kBLoads = I2 ? 1 : 4;   // 16-byte B loads per k-step: i2 one byte row, i8 one per n8
  __shared__ int32_t red[kKWarps][16][32];  // [warp][accumulator nt * 4 + i][lane]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t units = weight_units(I2, p.N), K = p.K, ldq = act_padded_k(K), M = p.M;
  const int64_t ksteps = (K + 63) / 64, ntiles = (units + kUnits - 1) / kUnits;
  const int64_t mblocks = (M + kBM - 1) / kBM;
  const auto* W = static_cast<const uint8_t*>(p.weight);

  // The predecessor is the quantize pre-pass, which writes only q / inv / qsum and lets this
  // kernel start only once everything before it has finished: weights may be read before
  // waiting for it.
  for (int64_t nb = blockIdx.y; nb < ntiles; nb += gridDim.y) {
    const int64_t unit0 = nb * kUnits;
    const uint8_t* brow[kBLoads];
    bool bvalid[kBLoads];
#pragma unroll
    for (int j = 0; j < kBLoads; ++j) {
      const int64_t u = unit0 + j * 8 + g;
      bvalid[j] = u < units;
      brow[j] = W + (bvalid[j] ? u : 0) * K;
    }
    for (int64_t mb = blockIdx.x; mb < mblocks; mb += gridDim.x) {
      const int64_t m0 = mb * kBM;
      const int mtiles = static_cast<int>((M - m0 + 15) / 16 < kMTiles ? (M - m0 + 15) / 16 : kMTiles);
      const int8_t* arow[kMTiles][2];
      bool avalid[kMTiles][2];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t m = m0 + mt * 16 + h * 8 + g;
          avalid[mt][h] = mt < mtiles && m < M;
          arow[mt][h] = p.q + (avalid[mt][h] ? m : 0) * ldq;
        }

      int32_t acc[kMTiles][4][4] = {};
      // One k-step: the weights bs (kBLoads 16-byte loads) against q rows as (m16 tiles).
      auto mma_step = [&](const uint4 (&bs)[kBLoads], const uint4 (&as)[kMTiles][2]) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          uint32_t bw[4];
#pragma unroll
          for (int i = 0; i < 4; ++i)
            bw[i] = I2 ? (word(bs[0], i) >> (2 * nt)) & 0x03030303u : word(bs[I2 ? 0 : nt], i);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt)
            if (mt < mtiles) {
              mma_s8(acc[mt][nt], as[mt][0].x, as[mt][1].x, as[mt][0].y, as[mt][1].y, bw[0], bw[1]);
              mma_s8(acc[mt][nt], as[mt][0].z, as[mt][1].z, as[mt][0].w, as[mt][1].w, bw[2], bw[3]);
            }
        }
      };
      auto load_b = [&](uint4 (&bs)[kBLoads], int64_t ks) {  // past K: zeros, nothing loaded
#pragma unroll
        for (int j = 0; j < kBLoads; ++j)
          bs[j] = load_w16<VEC, false>(brow[j], ks * 64 + 16 * t, K, bvalid[j]);
      };
      auto load_a = [&](uint4 (&as)[kMTiles][2], int64_t ks, bool in_k) {  // in_k: ks < ksteps
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h)
            as[mt][h] = avalid[mt][h] && in_k
                            ? __ldg(reinterpret_cast<const uint4*>(arow[mt][h] + ks * 64 + 16 * t))
                            : make_uint4(0, 0, 0, 0);
      };

      if constexpr (kDepth == 1) {
        // The next step's weights are requested before this step's mma; q is loaded per step.
        uint4 b[kBLoads];
        load_b(b, warp);
        pdl_wait();  // returns at once after the first time
        for (int64_t ks = warp; ks < ksteps; ks += kKWarps) {
          uint4 bn[kBLoads];
          load_b(bn, ks + kKWarps);
          uint4 a[kMTiles][2];
          load_a(a, ks, true);
          mma_step(b, a);
#pragma unroll
          for (int j = 0; j < kBLoads; ++j) b[j] = bn[j];
        }
      } else {
        // kDepth steps in flight, weights (HBM) and q (L2) both: step ks + kDepth * kKWarps
        // is requested once step ks is summed. The loop is unrolled by kDepth so that each
        // stage keeps its registers (the copy above waits for the next step's loads to land,
        // so only one step is ever in flight there, and q's L2 round trip precedes each step).
        uint4 b[kDepth][kBLoads];
        uint4 a[kDepth][kMTiles][2];
#pragma unroll
        for (int s = 0; s < kDepth; ++s) load_b(b[s], warp + s * kKWarps);
        pdl_wait();
#pragma unroll
        for (int s = 0; s < kDepth; ++s) {
          const int64_t ks = warp + s * kKWarps;
          load_a(a[s], ks, ks < ksteps);
        }
        for (int64_t ks0 = warp; ks0 < ksteps; ks0 += kDepth * kKWarps) {
#pragma unroll
          for (int s = 0; s < kDepth; ++s) {
            const int64_t ks = ks0 + s * kKWarps;
            if (ks >= ksteps) break;  // uniform over the warp
            mma_step(b[s], a[s]);
            const int64_t next = ks + kDepth * kKWarps;
            load_b(b[s], next);
            load_a(a[s], next, next < ksteps);
          }
        }
      }

#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        if (mt >= mtiles) break;  // uniform over the block
        sum_warps_and_store<I2>(red, acc[mt], p, m0 + mt * 16, unit0,
                                [&](int64_t m, int64_t n, int32_t dot) {
                                  store_int8<I2>(p, m, n, dot, p.inv[m], I2 ? p.qsum[m] : 0,
                                                 scale_of(p, n), bias_of(p, n));
                                });
      }
    }
  }
}

// Steps in flight: one (the next step's weights) where the grid has more blocks than SMs, since
// there resident blocks hide each other's latency and more registers per thread would cost
// occupancy; otherwise four (one m16 tile) or two (two), weights and q both
// (docs/perf-notes.md). Four m16 tiles spill at two steps: one step always.
template <int kMTiles, bool I2>
cudaError_t launch_mt(const Linear& p, cudaStream_t stream, bool pdl) {
  const dim3 grid = mma_grid<kMTiles>(p);
  const bool vec = p.K % 16 == 0 && reinterpret_cast<uintptr_t>(p.weight) % 16 == 0;
  const dim3 block(kKWarps * 32);
  auto go = [&](auto depth) {
    constexpr int D = decltype(depth)::value;
    return vec ? launch(mma_int8_ksplit_kernel<kMTiles, D, I2, true>, grid, block, stream, pdl, p)
               : launch(mma_int8_ksplit_kernel<kMTiles, D, I2, false>, grid, block, stream, pdl, p);
  };
  if constexpr (kMTiles <= 2) {
    if (int64_t(grid.x) * grid.y <= device_sms())
      return go(std::integral_constant<int, kMTiles == 1 ? 4 : 2>());
  }
  return go(std::integral_constant<int, 1>());
}

template <int kMTiles>
cudaError_t launch_mt_format(const Linear& p, cudaStream_t stream, bool pdl) {
  return p.i2 ? launch_mt<kMTiles, true>(p, stream, pdl) : launch_mt<kMTiles, false>(p, stream, pdl);
}

}  // namespace

// The warp tile grows with M (more reuse of each weight load): 16, 32, then 64 rows.
cudaError_t launch_mma_int8(const Linear& p, cudaStream_t stream, bool pdl) {
  if (p.M <= 16) return launch_mt_format<1>(p, stream, pdl);
  if (p.M <= 32) return launch_mt_format<2>(p, stream, pdl);
  return launch_mt_format<4>(p, stream, pdl);
}

}  // namespace ternary::cuda
