// cpu/neon/common.h: building blocks shared by the NEON kernel sets (set_base.cpp,
// set_dotprod.cpp, set_i8mm.cpp). Everything is in an anonymous namespace on purpose: each
// translation unit is compiled with a different -march, and a shared (inline, external linkage)
// copy could be merged by the linker into the one built for the newest ISA, which would then run
// on cores without it. Internal linkage gives each set its own copy.
//
// Shape of every kernel: a tile of weight rows ("source", decoded 16 columns at a time into int8
// vectors) against MB activation rows, accumulated over K, then the same scalar epilogue as the
// portable kernels so float outputs match them bit for bit.
#pragma once

#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cpu/kernels.h"

namespace ternary::cpu::neon {
namespace {

// Integer accumulators are flushed to scalars every kKBlock columns. The i2 kernels dot codes
// pre-shifted by up to 4 bits (see I2Codes), so a lane may gather up to 32 * 128 per product;
// 2^16 columns keep every int32 lane below 2^28.
constexpr int64_t kKBlock = int64_t(1) << 16;

template <class T>
struct type_tag {
  using type = T;
};

// ---------------------------------------------------------------------------------------------
// Weight sources. A source covers kUnits row units starting at unit u (clamped: past u1 the last
// valid unit is repeated and its outputs dropped, so every tile runs the full-width code path),
// and yields kRows int8x16 vectors per 16 columns:
//   codes(k, v)    integer operand for act=int8; row r's true dot is (dot >> shift(r)) and,
//                  when kOffset, minus sum(q) (i2 codes are w + 1).
//   weights(k, v)  the weights themselves (-1, 0, +1), for act=none.
// *_tail variants read only len < 16 columns (the rest reads as zero); activations are zero
// there (q is padded, float rows are copied into a zero buffer), so tails add nothing.
// ---------------------------------------------------------------------------------------------

inline uint8x16_t load_tail_u8(const uint8_t* p, int64_t len) {
  uint8_t buf[16] = {0};
  std::memcpy(buf, p, static_cast<size_t>(len));
  return vld1q_u8(buf);
}

template <int ROWS>
struct I8Rows {
  static constexpr int kUnits = ROWS, kRows = ROWS;
  static constexpr bool kOffset = false;
  const uint8_t* w[ROWS];
  int64_t out[ROWS];  // output row, or -1 when this tile row is padding

  I8Rows(const Problem& p, int64_t u, int64_t u1) {
    const auto* W = static_cast<const uint8_t*>(p.weight);
    for (int r = 0; r < ROWS; ++r) {
      out[r] = u + r < u1 ? u + r : -1;
      w[r] = W + std::min(u + r, u1 - 1) * p.K;
    }
  }
  static constexpr int shift(int) { return 0; }
  void codes(int64_t k, int8x16_t* v) const {
    for (int r = 0; r < ROWS; ++r) v[r] = vreinterpretq_s8_u8(vld1q_u8(w[r] + k));
  }
  void codes_tail(int64_t k, int64_t len, int8x16_t* v) const {
    for (int r = 0; r < ROWS; ++r) v[r] = vreinterpretq_s8_u8(load_tail_u8(w[r] + k, len));
  }
  void weights(int64_t k, int8x16_t* v) const { codes(k, v); }
  void weights_tail(int64_t k, int64_t len, int8x16_t* v) const { codes_tail(k, len, v); }
};

// i2: one 16-byte load of a byte row gives 16 columns of four output rows (j, j+R, j+2R, j+3R).
// SHIFTED (dotprod, i8mm): codes are isolated by AND only (b & 0x03, b & 0x0C, b & 0x30) and one
// USHR (b >> 6): row c's operand is code << 2c (c < 3), still a non-negative int8 (<= 32), and the
// accumulated dot is shifted back once per block. Four instructions decode 64 weights.
// Unshifted (baseline SMULL path, which accumulates in int16 lanes): three USHR + three AND.
template <int BYTE_ROWS, bool SHIFTED>
struct I2Rows {
  static constexpr int kUnits = BYTE_ROWS, kRows = 4 * BYTE_ROWS;
  static constexpr bool kOffset = true;
  const uint8_t* b[BYTE_ROWS];
  int64_t out[kRows];

  I2Rows(const Problem& p, int64_t u, int64_t u1) {
    const auto* W = static_cast<const uint8_t*>(p.weight);
    const int64_t R = i2_packed_rows(p.N);
    for (int i = 0; i < BYTE_ROWS; ++i) {
      b[i] = W + std::min(u + i, u1 - 1) * p.K;
      for (int c = 0; c < 4; ++c) {
        const int64_t n = u + i + c * R;
        out[4 * i + c] = (u + i < u1 && n < p.N) ? n : -1;
      }
    }
  }
  static constexpr int shift(int r) { return SHIFTED && r % 4 != 3 ? 2 * (r % 4) : 0; }

  static void decode(uint8x16_t x, int8x16_t* v) {
    if (SHIFTED) {
      v[0] = vreinterpretq_s8_u8(vandq_u8(x, vdupq_n_u8(0x03)));
      v[1] = vreinterpretq_s8_u8(vandq_u8(x, vdupq_n_u8(0x0C)));
      v[2] = vreinterpretq_s8_u8(vandq_u8(x, vdupq_n_u8(0x30)));
    } else {
      const uint8x16_t m = vdupq_n_u8(0x03);
      v[0] = vreinterpretq_s8_u8(vandq_u8(x, m));
      v[1] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(x, 2), m));
      v[2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(x, 4), m));
    }
    v[3] = vreinterpretq_s8_u8(vshrq_n_u8(x, 6));
  }
  // Weights w = code - 1, for the float path.
  static void decode_weights(uint8x16_t x, int8x16_t* v) {
    const uint8x16_t m = vdupq_n_u8(0x03);
    const int8x16_t one = vdupq_n_s8(1);
    v[0] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(x, m)), one);
    v[1] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(x, 2), m)), one);
    v[2] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(x, 4), m)), one);
    v[3] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(x, 6)), one);
  }
  void codes(int64_t k, int8x16_t* v) const {
    for (int i = 0; i < BYTE_ROWS; ++i) decode(vld1q_u8(b[i] + k), v + 4 * i);
  }
  void codes_tail(int64_t k, int64_t len, int8x16_t* v) const {
    for (int i = 0; i < BYTE_ROWS; ++i) decode(load_tail_u8(b[i] + k, len), v + 4 * i);
  }
  void weights(int64_t k, int8x16_t* v) const {
    for (int i = 0; i < BYTE_ROWS; ++i) decode_weights(vld1q_u8(b[i] + k), v + 4 * i);
  }
  void weights_tail(int64_t k, int64_t len, int8x16_t* v) const {
    for (int i = 0; i < BYTE_ROWS; ++i) decode_weights(load_tail_u8(b[i] + k, len), v + 4 * i);
  }
};

// Runs body(k, len) over [k0, k1) in 16-column steps, len = 16 except a final shorter tail.
// Unrolled by 4: 64 columns per iteration.
template <class Body>
inline void for_each_k16(int64_t k0, int64_t k1, Body&& body) {
  int64_t k = k0;
#pragma GCC unroll 4
  for (; k + 16 <= k1; k += 16) body(k, int64_t(16));
  if (k < k1) body(k, k1 - k);
}

// The epilogues are epilogue_int8 / epilogue_none of csrc/cpu/kernels.h.

// Integer dot kernels are structs with `template <class Src, int MB> static void dot(const Src&,
// const int8_t* const q[MB], int64_t K, int64_t out[Src::kRows][MB])` writing the true dots
// (code shift undone, no x_sum correction) of every tile row with every q row.
//
// run_int8 drives tiles over units [u0, u1) and activation rows: MB_MAIN rows at a time with
// Main while that many remain, then MB_TAIL at a time with Tail (the last block repeats its final
// row; those outputs are dropped). A tile's weights stay in L1 while every block passes over them.
template <class Src, class Main, int MB_MAIN, class Tail, int MB_TAIL>
void run_int8(const Problem& p, int64_t u0, int64_t u1) {
  constexpr int R = Src::kRows;
  for (int64_t u = u0; u < u1; u += Src::kUnits) {
    const Src src(p, u, u1);
    auto block = [&](int64_t m, auto mb_tag, auto kernel_tag) {
      constexpr int MB = decltype(mb_tag)::value;
      using Kernel = typename decltype(kernel_tag)::type;
      const int8_t* q[MB];
      for (int i = 0; i < MB; ++i) q[i] = p.xq + std::min<int64_t>(m + i, p.M - 1) * p.ldq;
      int64_t d[R][MB];
      Kernel::template dot<Src, MB>(src, q, p.K, d);
      for (int i = 0; i < MB && m + i < p.M; ++i)
        for (int r = 0; r < R; ++r) {
          if (src.out[r] < 0) continue;
          const int64_t dot_r = Src::kOffset ? d[r][i] - p.x_sum[m + i] : d[r][i];
          p.y[(m + i) * p.ldy + src.out[r]] =
              epilogue_int8(p, m + i, src.out[r], static_cast<int32_t>(dot_r));
        }
    };
    int64_t m = 0;
    for (; m + MB_MAIN <= p.M; m += MB_MAIN)
      block(m, std::integral_constant<int, MB_MAIN>{}, type_tag<Main>{});
    for (; m < p.M; m += MB_TAIL)
      block(m, std::integral_constant<int, MB_TAIL>{}, type_tag<Tail>{});
  }
}

// act=int8 with one Dot for every M (the neon and neon_dotprod sets): M = 1 runs Wide tiles,
// M > 1 Narrow tiles x 2 activation rows (the last odd row alone).
template <class Dot, class Wide, class Narrow>
void linear_int8_one_dot(const Problem& p, int64_t u0, int64_t u1) {
  if (p.M == 1) run_int8<Wide, Dot, 1, Dot, 1>(p, u0, u1);
  else run_int8<Narrow, Dot, 2, Dot, 1>(p, u0, u1);
}

// ---------------------------------------------------------------------------------------------
// Baseline integer dot (no dotprod): SMULL/SMLAL(2) into int16 lanes, SADALP into int32 once per
// FLUSH columns. Ternary codes (|code| <= 2, |q| <= 128): 8 products (<= 2048) per lane in 64
// columns. q8 weights (|w| <= 127): 2 products (<= 32512) per lane, so a flush every 16 columns.
// ---------------------------------------------------------------------------------------------
template <int FLUSH>
struct SmullDotT {
static_assert(FLUSH % 16 == 0 && kKBlock % FLUSH == 0, "FLUSH: whole 16-column steps");
template <class Src, int MB>
static void dot(const Src& src, const int8_t* const* q, int64_t K, int64_t (*out)[MB]) {
  constexpr int R = Src::kRows;
  static_assert(Src::shift(0) == 0 && Src::shift(1) == 0 && Src::shift(2) == 0,
                "int16 lanes need unshifted codes");
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < MB; ++i) out[r][i] = 0;
  for (int64_t kb = 0; kb < K; kb += kKBlock) {
    const int64_t ke = std::min(K, kb + kKBlock);
    int32x4_t acc[R][MB];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < MB; ++i) acc[r][i] = vdupq_n_s32(0);
    for (int64_t kf = kb; kf < ke; kf += FLUSH) {
      int16x8_t a16[R][MB];
      for (int r = 0; r < R; ++r)
        for (int i = 0; i < MB; ++i) a16[r][i] = vdupq_n_s16(0);
      for_each_k16(kf, std::min(ke, kf + FLUSH), [&](int64_t k, int64_t len) {
        int8x16_t w[R];
        if (len == 16) src.codes(k, w); else src.codes_tail(k, len, w);
        for (int i = 0; i < MB; ++i) {
          const int8x16_t x = vld1q_s8(q[i] + k);
          for (int r = 0; r < R; ++r) {
            a16[r][i] = vmlal_s8(a16[r][i], vget_low_s8(w[r]), vget_low_s8(x));
            a16[r][i] = vmlal_high_s8(a16[r][i], w[r], x);
          }
        }
      });
      for (int r = 0; r < R; ++r)
        for (int i = 0; i < MB; ++i) acc[r][i] = vpadalq_s16(acc[r][i], a16[r][i]);
    }
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < MB; ++i) out[r][i] += vaddvq_s32(acc[r][i]);
  }
}
};
using SmullDot = SmullDotT<64>;
using SmullDotQ8 = SmullDotT<16>;

#if defined(__ARM_FEATURE_DOTPROD)
// ---------------------------------------------------------------------------------------------
// SDOT integer dot (dotprod): one SDOT per tile row, activation row and 16 columns; int32 lanes,
// flushed per kKBlock with each row's code shift undone (lanes are exact multiples of 2^shift).
// ---------------------------------------------------------------------------------------------
struct SdotDot {
template <class Src, int MB>
static void dot(const Src& src, const int8_t* const* q, int64_t K, int64_t (*out)[MB]) {
  constexpr int R = Src::kRows;
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < MB; ++i) out[r][i] = 0;
  for (int64_t kb = 0; kb < K; kb += kKBlock) {
    int32x4_t acc[R][MB];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < MB; ++i) acc[r][i] = vdupq_n_s32(0);
    for_each_k16(kb, std::min(K, kb + kKBlock), [&](int64_t k, int64_t len) {
      int8x16_t w[R];
      if (len == 16) src.codes(k, w); else src.codes_tail(k, len, w);
      for (int i = 0; i < MB; ++i) {
        const int8x16_t x = vld1q_s8(q[i] + k);
        for (int r = 0; r < R; ++r) acc[r][i] = vdotq_s32(acc[r][i], w[r], x);
      }
    });
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < MB; ++i) out[r][i] += vaddvq_s32(acc[r][i]) >> Src::shift(r);
  }
}
};
#endif  // __ARM_FEATURE_DOTPROD

// ---------------------------------------------------------------------------------------------
// act=none: fp32 FMA on decoded weights. Per 16 columns and tile row: SXTL/SXTL2 to int16, four
// SXTL(2) to int32, four SCVTF, then 4 FMAs per activation row (the decode is shared by MB rows).
// ---------------------------------------------------------------------------------------------
template <class Src, int MB>
void dot_fma(const Src& src, const float* const* x, int64_t K, float (*out)[MB]) {
  constexpr int R = Src::kRows;
  float32x4_t acc[R][MB];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < MB; ++i) acc[r][i] = vdupq_n_f32(0.0f);
  for_each_k16(0, K, [&](int64_t k, int64_t len) {
    int8x16_t w[R];
    float32x4_t xv[MB][4];
    if (len == 16) {
      src.weights(k, w);
      for (int i = 0; i < MB; ++i)
        for (int j = 0; j < 4; ++j) xv[i][j] = vld1q_f32(x[i] + k + 4 * j);
    } else {
      src.weights_tail(k, len, w);
      for (int i = 0; i < MB; ++i) {
        float buf[16] = {0};
        std::memcpy(buf, x[i] + k, static_cast<size_t>(len) * sizeof(float));
        for (int j = 0; j < 4; ++j) xv[i][j] = vld1q_f32(buf + 4 * j);
      }
    }
    for (int r = 0; r < R; ++r) {
      const int16x8_t lo = vmovl_s8(vget_low_s8(w[r])), hi = vmovl_high_s8(w[r]);
      const float32x4_t f[4] = {vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
                                vcvtq_f32_s32(vmovl_high_s16(lo)),
                                vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
                                vcvtq_f32_s32(vmovl_high_s16(hi))};
      for (int i = 0; i < MB; ++i)
        for (int j = 0; j < 4; ++j) acc[r][i] = vfmaq_f32(acc[r][i], f[j], xv[i][j]);
    }
  });
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < MB; ++i) out[r][i] = vaddvq_f32(acc[r][i]);
}

// act=none driver: like run_int8, MB activation rows per tile pass (tail repeats the last row).
template <class Src, int MB>
void run_none(const Problem& p, int64_t u0, int64_t u1) {
  constexpr int R = Src::kRows;
  for (int64_t u = u0; u < u1; u += Src::kUnits) {
    const Src src(p, u, u1);
    for (int64_t m = 0; m < p.M; m += MB) {
      const float* x[MB];
      for (int i = 0; i < MB; ++i) x[i] = p.xf + std::min<int64_t>(m + i, p.M - 1) * p.ldx;
      float d[R][MB];
      dot_fma<Src, MB>(src, x, p.K, d);
      for (int i = 0; i < MB && m + i < p.M; ++i)
        for (int r = 0; r < R; ++r)
          if (src.out[r] >= 0) p.y[(m + i) * p.ldy + src.out[r]] = epilogue_none(p, src.out[r], d[r][i]);
    }
  }
}

// M = 1 (decoding): 8 rows in flight. M > 1: 4 rows x 2 activation rows,
// so each decoded weight vector feeds two FMA chains.
template <bool I2>
void linear_none(const Problem& p, int64_t u0, int64_t u1) {
  using Wide = std::conditional_t<I2, I2Rows<2, false>, I8Rows<8>>;
  using Narrow = std::conditional_t<I2, I2Rows<1, false>, I8Rows<4>>;
  if (p.M == 1) run_none<Wide, 1>(p, u0, u1);
  else run_none<Narrow, 2>(p, u0, u1);
}

// ---------------------------------------------------------------------------------------------
// Quantization for act=int8, bit-exact with the portable one: |x| max over bit patterns (finds
// NaN and Inf rows, like the portable one), the same float32 multiply, FRINTN (round half to even, as
// nearbyint in the default mode), clamp, convert, saturating narrow (values already in range).
// ---------------------------------------------------------------------------------------------
void quantize_rows(const float* x, int64_t ldx, int64_t K, int64_t m0, int64_t m1, int8_t* q,
                   int64_t ldq, float* inv, int32_t* sum) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* xr = x + m * ldx;
    // max |x| over bit patterns (act_row_finite): NaN and Inf are the largest.
    const uint32x4_t absmask = vdupq_n_u32(kF32AbsMask);
    uint32x4_t vmax = vdupq_n_u32(0);
    int64_t k = 0;
    for (; k + 4 <= K; k += 4)
      vmax = vmaxq_u32(vmax, vandq_u32(vreinterpretq_u32_f32(vld1q_f32(xr + k)), absmask));
    uint32_t amax_bits = vmaxvq_u32(vmax);
    for (; k < K; ++k) amax_bits = std::max(amax_bits, f32_abs_bits(xr[k]));
    if (!act_row_finite(amax_bits)) {
      store_nonfinite_row(m, q, ldq, inv, sum);
      continue;
    }
    const float s = kActQMax / std::max(f32_from_bits(amax_bits), kActEps);

    int8_t* qr = q + m * ldq;
    const float32x4_t lo = vdupq_n_f32(-128.0f), hi = vdupq_n_f32(127.0f);
    int32x4_t vsum = vdupq_n_s32(0);
    auto q4 = [&](int64_t kk) {
      const float32x4_t v = vminq_f32(vmaxq_f32(vrndnq_f32(vmulq_n_f32(vld1q_f32(xr + kk), s)), lo), hi);
      const int32x4_t c = vcvtq_s32_f32(v);
      vsum = vaddq_s32(vsum, c);
      return vqmovn_s32(c);
    };
    k = 0;
    for (; k + 16 <= K; k += 16) {
      const int16x8_t a = vcombine_s16(q4(k), q4(k + 4));
      const int16x8_t b = vcombine_s16(q4(k + 8), q4(k + 12));
      vst1q_s8(qr + k, vcombine_s8(vqmovn_s16(a), vqmovn_s16(b)));
    }
    int32_t total = vaddvq_s32(vsum);
    for (; k < K; ++k) {
      const float v = std::nearbyint(xr[k] * s);
      const int32_t c = static_cast<int32_t>(std::min(std::max(v, -128.0f), 127.0f));
      qr[k] = static_cast<int8_t>(c);
      total += c;
    }
    if (ldq > K) std::memset(qr + K, 0, static_cast<size_t>(ldq - K));
    inv[m] = s;
    sum[m] = total;
  }
}

}  // namespace
}  // namespace ternary::cpu::neon
