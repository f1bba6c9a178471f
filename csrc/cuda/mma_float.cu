// mma_float.cu: act="none" for M > 8 with bfloat16 / half x, on tensor cores (mma.sync
// m16n8k16, 16-bit x 16-bit -> float32, sm_80+). The weights are decoded in registers to
// exact -1 / 0 / +1 in x's type, so the products are exact and the sum is float32: no dense
// copy of the weights is made (linear_none_mma_ok says where; elsewhere dense.cu does that).
//
// The layout is mma_int8.cu's (mma_tile.cuh): a block is kKWarps warps on one 32-output n tile
// and 16 kMTiles rows of m; the warps take the k-steps (32 columns) in turn and their partial
// sums meet in shared memory, added in warp order. Within a step each thread loads 8 contiguous
// columns (k0 + 8t .. +8, t = lane % 4) of its x rows and weight rows and uses them as the
// k-slots {2t, 2t+1, 2t+8, 2t+9} of two k16 steps; x and the weights agree on that
// permutation, so the products pair up as in the unpermuted sum.
#include <type_traits>

#include "mma_tile.cuh"

namespace ternary::cuda {
namespace {

template <typename T>
__device__ __forceinline__ void mma_16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Weight codes 0, 1, 2 (one per byte of c) to the 16-bit weights -1, 0, +1 in T: bytes 0-1 of
// c as the low and high halves of one register (lo = 1: bytes 2-3). One byte permute looks up
// each weight's two bytes in kLo (low bytes) and kHi (high bytes), indexed by the code.
template <typename T>
__device__ __forceinline__ uint32_t weights16x2(uint32_t c, bool hi) {
  // -1 / 0 / +1: bf16 0xBF80 / 0 / 0x3F80, half 0xBC00 / 0 / 0x3C00.
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  constexpr uint32_t kLo = kBf16 ? 0x00800080u : 0u;
  constexpr uint32_t kHi = kBf16 ? 0x003F00BFu : 0x003C00BCu;
  const uint32_t pair = hi ? c >> 16 : c;  // codes in bytes 0, 1
  // selector nibbles: code0, 4 + code0, code1, 4 + code1 (codes < 4, so no carries)
  return __byte_perm(kLo, kHi, pair * 0x11u + 0x4040u);
}

template <int kMTiles, bool I2, typename T>
__global__ void __launch_bounds__(kKWarps * 32) mma_float_ksplit_kernel(const Linear p) {
  constexpr int kBM = 16 * kMTiles;
  constexpr int kUnits = I2 ? 8 : 32;  // weight units per n tile
  constexpr int kBLoads = I2 ? 1 : 4;  // 8-byte weight loads per step: i2 a byte row, i8 one per n8
  __shared__ float red[kKWarps][16][32];  // [warp][accumulator nt * 4 + i][lane]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t units = weight_units(I2, p.N), K = p.K, M = p.M;
  const int64_t ksteps = (K + 31) / 32, ntiles = (units + kUnits - 1) / kUnits;
  const int64_t mblocks = (M + kBM - 1) / kBM;
  const auto* W = static_cast<const uint8_t*>(p.weight);
  const auto* X = static_cast<const T*>(p.x);

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
    // 8 weight bytes of step ks (K % 8 == 0: a thread's 8 columns are all inside K or all past
    // it, zeros there).
    auto load_b = [&](uint2 (&bs)[kBLoads], int64_t ks) {
      const int64_t k0 = ks * 32 + 8 * t;
#pragma unroll
      for (int j = 0; j < kBLoads; ++j)
        bs[j] = bvalid[j] && k0 < K ? __ldg(reinterpret_cast<const uint2*>(brow[j] + k0))
                                    : make_uint2(0, 0);
    };
    for (int64_t mb = blockIdx.x; mb < mblocks; mb += gridDim.x) {
      const int64_t m0 = mb * kBM;
      const int64_t left = (M - m0 + 15) / 16;  // m16 tiles left
      const int mtiles = static_cast<int>(left < kMTiles ? left : kMTiles);
      const T* xrow[kMTiles][2];
      bool xvalid[kMTiles][2];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t m = m0 + mt * 16 + h * 8 + g;
          xvalid[mt][h] = mt < mtiles && m < M;
          xrow[mt][h] = X + (xvalid[mt][h] ? m : 0) * K;
        }
      float acc[kMTiles][4][4] = {};
      // The next step's weights are requested before this step's mma. Nothing is read before
      // the wait: the predecessor may have written x or the weights.
      pdl_wait();  // returns at once after the first time
      uint2 b[kBLoads];
      load_b(b, warp);
      for (int64_t ks = warp; ks < ksteps; ks += kKWarps) {
        uint2 bn[kBLoads];
        load_b(bn, ks + kKWarps);
        const int64_t k0 = ks * 32 + 8 * t;
        uint4 a[kMTiles][2];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h)
            a[mt][h] = xvalid[mt][h] && k0 < K
                           ? __ldg(reinterpret_cast<const uint4*>(xrow[mt][h] + k0))
                           : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          // Codes 0 / 1 / 2 (weights -1 / 0 / +1) of this n8 tile's column g for the 8 columns:
          // i2 field nt of the byte row; i8 row nt's bytes 0xFF / 0 / 1, whose (x ^ 1) & 3 is
          // 2 / 1 / 0.
          uint32_t c[2];
#pragma unroll
          for (int w = 0; w < 2; ++w) {
            const uint32_t v = w == 0 ? b[I2 ? 0 : nt].x : b[I2 ? 0 : nt].y;
            c[w] = I2 ? (v >> (2 * nt)) & 0x03030303u
                      : 0x02020202u - ((v ^ 0x01010101u) & 0x03030303u);
          }
#pragma unroll
          for (int half = 0; half < 2; ++half) {  // columns 8t + 4 * half .. + 4: one k16 mma
            const uint32_t b0 = weights16x2<T>(c[half], false);
            const uint32_t b1 = weights16x2<T>(c[half], true);
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt)
              if (mt < mtiles) {  // rows g and g + 8, columns 8t + 4 * half + {0, 1} and {2, 3}
                const uint32_t af[4] = {word(a[mt][0], 2 * half), word(a[mt][1], 2 * half),
                                        word(a[mt][0], 2 * half + 1), word(a[mt][1], 2 * half + 1)};
                mma_16<T>(acc[mt][nt], af, b0, b1);
              }
          }
        }
#pragma unroll
        for (int j = 0; j < kBLoads; ++j) b[j] = bn[j];
      }

#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        if (mt >= mtiles) break;  // uniform over the block
        sum_warps_and_store<I2>(red, acc[mt], p, m0 + mt * 16, unit0,
                                [&](int64_t m, int64_t n, float dot) {
                                  store_out(p.y, m * p.N + n,
                                            epilogue_none(dot, scale_of(p, n), p.bias, n), p.dtype);
                                });
      }
    }
  }
}

template <int kMTiles, bool I2, typename T>
cudaError_t launch_float_mt(const Linear& p, cudaStream_t stream, bool pdl) {
  return launch(mma_float_ksplit_kernel<kMTiles, I2, T>, mma_grid<kMTiles>(p),
                dim3(kKWarps * 32), stream, pdl, p);
}

template <bool I2, typename T>
cudaError_t launch_float(const Linear& p, cudaStream_t stream, bool pdl) {
  if (p.M <= 16) return launch_float_mt<1, I2, T>(p, stream, pdl);
  if (p.M <= 32) return launch_float_mt<2, I2, T>(p, stream, pdl);
  return launch_float_mt<4, I2, T>(p, stream, pdl);
}

}  // namespace

// i8 past 32 rows keeps the dense path: there the library GEMM on int8 weights widened to x's
// type was as fast or faster, while i2 gains at every M measured (docs/perf-notes.md).
bool linear_none_mma_ok(const Linear& p) {
  const auto x = reinterpret_cast<uintptr_t>(p.x), w = reinterpret_cast<uintptr_t>(p.weight);
  return p.dtype != DType::F32 && (p.i2 || p.M <= 32) && p.K % 8 == 0 && x % 16 == 0 &&
         w % 8 == 0;
}

cudaError_t linear_none_mma(const Linear& p, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;
  if (!linear_none_mma_ok(p)) return cudaErrorInvalidValue;
  const bool pdl = pdl_enabled();
  if (p.dtype == DType::BF16)
    return p.i2 ? launch_float<true, __nv_bfloat16>(p, stream, pdl)
                : launch_float<false, __nv_bfloat16>(p, stream, pdl);
  return p.i2 ? launch_float<true, __half>(p, stream, pdl)
              : launch_float<false, __half>(p, stream, pdl);
}

}  // namespace ternary::cuda
