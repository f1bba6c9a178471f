// cpu/neon/set_i8mm.cpp: the "neon_i8mm" kernel set (ARMv8.6-A i8mm: Neoverse V1/N2, Apple M2+).
// M >= 2 (prefill): SMMLA, each instruction a 2x8 by 8x2 int8 product (32 MACs, twice SDOT's 16).
// M = 1 (decoding): SDOT as in neon_dotprod; SMMLA needs two activation rows and half of it
// would multiply a duplicate.
#include "cpu/neon/common.h"
#include "cpu/neon/sets.h"

#if !defined(__ARM_FEATURE_DOTPROD) || !defined(__ARM_FEATURE_MATMUL_INT8)
#error "set_i8mm.cpp needs -march=armv8.6-a+dotprod+i8mm (tools/kernel_build.py)"
#endif

namespace ternary::cpu::neon {
namespace {

inline int8x16_t zip_lo64(int8x16_t a, int8x16_t b) {
  return vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}
inline int8x16_t zip_hi64(int8x16_t a, int8x16_t b) {
  return vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}

// SMMLA tile: pairs of tile rows (n, n+1) x pairs of activation rows (m, m+1). Per 16 columns,
// ZIP1/ZIP2 of two 16-byte rows give the 2x8 operands for columns 0-7 and 8-15;
// vmmlaq_s32(acc, A, B) adds A(2x8) * B(2x8)^T, lanes [m n, m n+1, m+1 n, m+1 n+1].
struct SmmlaDot {
  template <class Src, int MB>
  static void dot(const Src& src, const int8_t* const* q, int64_t K, int64_t (*out)[MB]) {
    constexpr int R = Src::kRows, NP = R / 2, MP = MB / 2;
    static_assert(R % 2 == 0 && MB % 2 == 0, "SMMLA works on pairs of rows");
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < MB; ++i) out[r][i] = 0;
    for (int64_t kb = 0; kb < K; kb += kKBlock) {
      int32x4_t acc[NP][MP];
      for (int n = 0; n < NP; ++n)
        for (int j = 0; j < MP; ++j) acc[n][j] = vdupq_n_s32(0);
      for_each_k16(kb, std::min(K, kb + kKBlock), [&](int64_t k, int64_t len) {
        int8x16_t w[R];
        if (len == 16) src.codes(k, w); else src.codes_tail(k, len, w);
        int8x16_t a_lo[MP], a_hi[MP];
        for (int j = 0; j < MP; ++j) {
          const int8x16_t x0 = vld1q_s8(q[2 * j] + k), x1 = vld1q_s8(q[2 * j + 1] + k);
          a_lo[j] = zip_lo64(x0, x1);
          a_hi[j] = zip_hi64(x0, x1);
        }
        for (int n = 0; n < NP; ++n) {
          const int8x16_t b_lo = zip_lo64(w[2 * n], w[2 * n + 1]);
          const int8x16_t b_hi = zip_hi64(w[2 * n], w[2 * n + 1]);
          for (int j = 0; j < MP; ++j) {
            acc[n][j] = vmmlaq_s32(acc[n][j], a_lo[j], b_lo);
            acc[n][j] = vmmlaq_s32(acc[n][j], a_hi[j], b_hi);
          }
        }
      });
      for (int n = 0; n < NP; ++n)
        for (int j = 0; j < MP; ++j) {
          const int r0 = 2 * n, r1 = 2 * n + 1, i0 = 2 * j, i1 = 2 * j + 1;
          out[r0][i0] += vgetq_lane_s32(acc[n][j], 0) >> Src::shift(r0);
          out[r1][i0] += vgetq_lane_s32(acc[n][j], 1) >> Src::shift(r1);
          out[r0][i1] += vgetq_lane_s32(acc[n][j], 2) >> Src::shift(r0);
          out[r1][i1] += vgetq_lane_s32(acc[n][j], 3) >> Src::shift(r1);
        }
    }
  }
};

// M = 1: SDOT, 8 rows. M >= 2: SMMLA over 8 rows x 4 activation rows (8 accumulators), the
// remaining 1-3 rows two at a time.
template <class Src>
void linear_int8(const Problem& p, int64_t u0, int64_t u1) {
  if (p.M == 1) run_int8<Src, SdotDot, 1, SdotDot, 1>(p, u0, u1);
  else run_int8<Src, SmmlaDot, 4, SmmlaDot, 2>(p, u0, u1);
}

}  // namespace

const KernelSet& detail::i8mm_set() {
  static const KernelSet set{"neon_i8mm", quantize_rows, linear_int8<I8Rows<8>>,
                             linear_none<false>, linear_int8<I2Rows<2, true>>, linear_none<true>,
                             linear_int8<I8Rows<8>>};  // q8: SDOT / SMMLA take any int8
  return set;
}

}  // namespace ternary::cpu::neon
