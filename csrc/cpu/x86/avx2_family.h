// cpu/x86/avx2_family.h: the 256-bit kernel template of the avx2 and avxvnni sets.
//
// Included by set_avx2.cpp (AVX2 + FMA: vpmaddubsw) and set_avxvnni.cpp (TERNARY_X86_AVXVNNI:
// 256-bit vpdpbusd), each built with its own flags. Everything is in an anonymous namespace
// (see common.h); only the set getter named by TERNARY_X86_SET_FN is exported.
//
// int8 dots without saturation: vpmaddubsw multiplies unsigned codes 0..2 by signed int8
// activations and adds pairs into int16, so a lane is at most 2 * 2 * 128 = 512 in magnitude;
// int16 accumulators take 32 such steps (<= 16384) before vpmaddwd widens them into int32.
#pragma once
#include <immintrin.h>

#include <type_traits>

#include "cpu/x86/common.h"
#include "cpu/x86/sets.h"

namespace ternary::cpu::x86 {
namespace {

TERNARY_INLINE int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

TERNARY_INLINE float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

TERNARY_INLINE uint32_t hmax_epu32(__m256i v) {
  __m128i s = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_max_epu32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_max_epu32(s, _mm_shuffle_epi32(s, 0xB1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(s));
}

// Loads n < 32 bytes zero-padded to 32 (AVX2 has no masked byte loads).
TERNARY_INLINE __m256i load_tail32(const void* src, int64_t n) {
  alignas(32) uint8_t buf[32] = {};
  std::memcpy(buf, src, static_cast<size_t>(n));
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(buf));
}
TERNARY_INLINE __m128i load_tail8(const void* src, int64_t n) {
  alignas(16) uint8_t buf[16] = {};
  std::memcpy(buf, src, static_cast<size_t>(n));
  return _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
}
TERNARY_INLINE __m256i lane_mask(int64_t n) {  // first n of 8 dword lanes
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// ---------------------------------------------------------------------------------------------
void quantize_impl(const float* x, int64_t ldx, int64_t K, int64_t m0, int64_t m1, int8_t* q,
                   int64_t ldq, float* inv, int32_t* sum) {
  const __m256i absmask = _mm256_set1_epi32(static_cast<int>(kF32AbsMask));
  const __m256 lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
  // Low byte of each dword (truncation, like the portable static_cast) into bytes 0-3 of each
  // 128-bit lane, then both lanes' 4 bytes into the low 8 bytes.
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i gather = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
  for (int64_t m = m0; m < m1; ++m) {
    const float* xr = x + m * ldx;
    int8_t* qr = q + m * ldq;
    // max |x| over bit patterns (act_row_finite): NaN and Inf are the largest.
    __m256i vmax0 = _mm256_setzero_si256(), vmax1 = _mm256_setzero_si256();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m256i* xv = reinterpret_cast<const __m256i*>(xr + k);
      vmax0 = _mm256_max_epu32(_mm256_and_si256(_mm256_loadu_si256(xv), absmask), vmax0);
      vmax1 = _mm256_max_epu32(_mm256_and_si256(_mm256_loadu_si256(xv + 1), absmask), vmax1);
    }
    uint32_t amax_bits = hmax_epu32(_mm256_max_epu32(vmax0, vmax1));
    for (; k < K; ++k) {
      const uint32_t a = f32_abs_bits(xr[k]);
      amax_bits = amax_bits < a ? a : amax_bits;
    }
    if (!act_row_finite(amax_bits)) {
      store_nonfinite_row(m, q, ldq, inv, sum);
      continue;
    }
    const float s = quant_scale(f32_from_bits(amax_bits));
    const __m256 vs = _mm256_set1_ps(s);
    __m256i acc = _mm256_setzero_si256();
    for (k = 0; k + 8 <= K; k += 8) {
      __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xr + k), vs);
      v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm256_min_ps(hi, _mm256_max_ps(lo, v));
      const __m256i c = _mm256_cvtps_epi32(v);
      acc = _mm256_add_epi32(acc, c);
      const __m256i b = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(c, pick), gather);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(qr + k), _mm256_castsi256_si128(b));
    }
    int32_t total = hsum_epi32(acc) + quantize_tail(xr, k, K, s, qr);
    if (ldq > K) std::memset(qr + K, 0, static_cast<size_t>(ldq - K));
    inv[m] = s;
    sum[m] = total;
  }
}

// ---------------------------------------------------------------------------------------------
// act="int8", i2.
#if defined(TERNARY_X86_AVXVNNI)
// vpdpbusd accumulates in int32 directly: planes may be scaled (4^s * code), undone at the end.
constexpr int kPlaneShift[4] = {0, 2, 4, 2};
TERNARY_INLINE void i2_planes(__m256i w, __m256i pl[4]) {
  const __m256i m03 = _mm256_set1_epi8(0x03), m0c = _mm256_set1_epi8(0x0C),
                m30 = _mm256_set1_epi8(0x30);
  pl[0] = _mm256_and_si256(w, m03);
  pl[1] = _mm256_and_si256(w, m0c);
  pl[2] = _mm256_and_si256(w, m30);
  pl[3] = _mm256_and_si256(_mm256_srli_epi16(w, 4), m0c);
}
// Accumulates in place (asm): with the intrinsic GCC 12 copies each accumulator through a
// fresh register on every loop iteration. {vex}: the AVX-VNNI encoding, not AVX512-VNNI.
TERNARY_INLINE __m256i dot_acc(__m256i acc, __m256i u8, __m256i s8) {
  __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u8), "x"(s8));
  return acc;
}
constexpr int64_t kFlushSteps = int64_t(1) << 40;  // never: int32 accumulators
#else
// vpmaddubsw needs the plain codes 0..2 (int16 pair sums <= 512).
constexpr int kPlaneShift[4] = {0, 0, 0, 0};
TERNARY_INLINE void i2_planes(__m256i w, __m256i pl[4]) {
  const __m256i m03 = _mm256_set1_epi8(0x03);
  pl[0] = _mm256_and_si256(w, m03);
  pl[1] = _mm256_and_si256(_mm256_srli_epi16(w, 2), m03);
  pl[2] = _mm256_and_si256(_mm256_srli_epi16(w, 4), m03);
  pl[3] = _mm256_and_si256(_mm256_srli_epi16(w, 6), m03);
}
// The add accumulates in place (asm): GCC 12 otherwise copies each accumulator every iteration.
TERNARY_INLINE __m256i dot_acc(__m256i acc16, __m256i u8, __m256i s8) {
  const __m256i prod = _mm256_maddubs_epi16(u8, s8);
  __asm__("vpaddw %1, %0, %0" : "+x"(acc16) : "x"(prod));
  return acc16;
}
constexpr int64_t kFlushSteps = 32;  // 32 * 512 = 16384 < 32767
#endif

// Widens int16 accumulators into int32 ones (AVX2) / adds int32 (VNNI).
TERNARY_INLINE __m256i widen(__m256i acc) {
#if defined(TERNARY_X86_AVXVNNI)
  return acc;
#else
  return _mm256_madd_epi16(acc, _mm256_set1_epi16(1));
#endif
}

template <int RB, int MB>
void i2_int8_block(const Problem& p, const uint8_t* W, int64_t R, int64_t j, int64_t m) {
  const int64_t K = p.K;
  int32_t tot[RB][4][MB] = {};
  for (int64_t kb = 0; kb < K; kb += kKBlock) {
    const int64_t ke = min_of(K, kb + kKBlock);
    __m256i acc32[RB][4][MB];
    for (int rb = 0; rb < RB; ++rb)
      for (int r = 0; r < 4; ++r)
        for (int mb = 0; mb < MB; ++mb) acc32[rb][r][mb] = _mm256_setzero_si256();
    // The partial chunk first (see set_avx512.cpp: GCC 12 otherwise copies accumulators
    // on every iteration of the main loop).
    const int64_t kmain = kb + (ke - kb) / 32 * 32;
    int64_t k = kmain < ke ? kmain : kb;
    bool tail_chunk = kmain < ke;
    while (k < (tail_chunk ? ke : kmain)) {
      const int64_t ce = tail_chunk ? ke : min_of(kmain, k + 32 * kFlushSteps);
      __m256i acc[RB][4][MB];
      for (int rb = 0; rb < RB; ++rb)
        for (int r = 0; r < 4; ++r)
          for (int mb = 0; mb < MB; ++mb) acc[rb][r][mb] = _mm256_setzero_si256();
      auto step = [&](int64_t kk, bool tail) TERNARY_LAMBDA_INLINE {
        __m256i qv[MB];
        for (int mb = 0; mb < MB; ++mb)
          qv[mb] = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(p.xq + (m + mb) * p.ldq + kk));
        for (int rb = 0; rb < RB; ++rb) {
          const uint8_t* src = W + (j + rb) * K + kk;
          if (MB == 1) TERNARY_PREFETCH(src);
          const __m256i w = tail ? load_tail32(src, ke - kk)
                                 : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
          __m256i pl[4];
          i2_planes(w, pl);
          for (int r = 0; r < 4; ++r)
            for (int mb = 0; mb < MB; ++mb) acc[rb][r][mb] = dot_acc(acc[rb][r][mb], pl[r], qv[mb]);
        }
      };
      if (tail_chunk) {
        step(k, true);
      } else {
        for (; k < ce; k += 32) step(k, false);
      }
      for (int rb = 0; rb < RB; ++rb)
        for (int r = 0; r < 4; ++r)
          for (int mb = 0; mb < MB; ++mb)
            acc32[rb][r][mb] = _mm256_add_epi32(acc32[rb][r][mb], widen(acc[rb][r][mb]));
      if (tail_chunk) {
        tail_chunk = false;
        k = kb;
      }
    }
    for (int rb = 0; rb < RB; ++rb)
      for (int r = 0; r < 4; ++r)
        for (int mb = 0; mb < MB; ++mb)
          tot[rb][r][mb] += hsum_epi32(acc32[rb][r][mb]) >> kPlaneShift[r];
  }
  for (int rb = 0; rb < RB; ++rb)
    for (int r = 0; r < 4; ++r) {
      const int64_t n = j + rb + r * R;
      if (n >= p.N) continue;
      for (int mb = 0; mb < MB; ++mb)
        p.y[(m + mb) * p.ldy + n] = epilogue_int8(p, m + mb, n, tot[rb][r][mb] - p.x_sum[m + mb]);
    }
}

TERNARY_X86_I2_BLOCK(I2Int8, i2_int8_block);
void i2_int8_impl(const Problem& p, int64_t j0, int64_t j1) { tile_units<I2Int8, 1, 1, 2>(p, j0, j1); }

// act="int8", i8: code = w + 1.
template <int RB, int MB>
void i8_int8_block(const Problem& p, const int8_t* W, int64_t n, int64_t m) {
  const int64_t K = p.K;
  const __m256i one = _mm256_set1_epi8(1);
  __m256i acc32[RB][MB];
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb) acc32[rb][mb] = _mm256_setzero_si256();
  const int64_t kmain = K / 32 * 32;  // partial chunk first (see i2_int8_block)
  int64_t k = kmain < K ? kmain : 0;
  bool tail_chunk = kmain < K;
  while (k < (tail_chunk ? K : kmain)) {
    const int64_t ce = tail_chunk ? K : min_of(kmain, k + 32 * kFlushSteps);
    __m256i acc[RB][MB];
    for (int rb = 0; rb < RB; ++rb)
      for (int mb = 0; mb < MB; ++mb) acc[rb][mb] = _mm256_setzero_si256();
    auto step = [&](int64_t kk, bool tail) TERNARY_LAMBDA_INLINE {
      __m256i qv[MB];
      for (int mb = 0; mb < MB; ++mb)
        qv[mb] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.xq + (m + mb) * p.ldq + kk));
      for (int rb = 0; rb < RB; ++rb) {
        const int8_t* src = W + (n + rb) * K + kk;
        if (MB == 1) TERNARY_PREFETCH(src);
        // Zero-padded tail bytes are w = 0 (code 1) against zero activations.
        const __m256i w = tail ? load_tail32(src, ce - kk)
                               : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
        const __m256i c = _mm256_add_epi8(w, one);
        for (int mb = 0; mb < MB; ++mb) acc[rb][mb] = dot_acc(acc[rb][mb], c, qv[mb]);
      }
    };
    if (tail_chunk) {
      step(k, true);
    } else {
      for (; k < ce; k += 32) step(k, false);
    }
    for (int rb = 0; rb < RB; ++rb)
      for (int mb = 0; mb < MB; ++mb) acc32[rb][mb] = _mm256_add_epi32(acc32[rb][mb], widen(acc[rb][mb]));
    if (tail_chunk) {
      tail_chunk = false;
      k = 0;
    }
  }
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb)
      p.y[(m + mb) * p.ldy + n + rb] =
          epilogue_int8(p, m + mb, n + rb, hsum_epi32(acc32[rb][mb]) - p.x_sum[m + mb]);
}

TERNARY_X86_I8_BLOCK(I8Int8, i8_int8_block);
void i8_int8_impl(const Problem& p, int64_t n0, int64_t n1) { tile_units<I8Int8, 4, 2, 2>(p, n0, n1); }

// act="int8", q8 (any weight in [-127, 127]). AVX-VNNI: code = w + 128 (an unsigned 1..255) into
// int32 lanes, minus 128 * sum(q). AVX2: vpmaddubsw(|w|, q * sign(w)) pair sums stay within
// 2 * 127 * 128 < 32767 and are widened to int32 on every step.
template <int RB, int MB>
void q8_int8_block(const Problem& p, const int8_t* W, int64_t n, int64_t m) {
  const int64_t K = p.K;
  __m256i acc[RB][MB];
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb) acc[rb][mb] = _mm256_setzero_si256();
  auto step = [&](int64_t k, int64_t len) TERNARY_LAMBDA_INLINE {
    __m256i qv[MB];
    for (int mb = 0; mb < MB; ++mb)
      qv[mb] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.xq + (m + mb) * p.ldq + k));
    for (int rb = 0; rb < RB; ++rb) {
      const int8_t* src = W + (n + rb) * K + k;
      if (MB == 1) TERNARY_PREFETCH(src);
      // Zero-padded tail bytes are w = 0 against zero activations.
      const __m256i w = len < 32 ? load_tail32(src, len)
                                 : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
#if defined(TERNARY_X86_AVXVNNI)
      const __m256i c = _mm256_xor_si256(w, _mm256_set1_epi8(static_cast<char>(0x80)));
      for (int mb = 0; mb < MB; ++mb) acc[rb][mb] = dot_acc(acc[rb][mb], c, qv[mb]);
#else
      const __m256i u = _mm256_abs_epi8(w);
      for (int mb = 0; mb < MB; ++mb) {
        const __m256i pairs = _mm256_maddubs_epi16(u, _mm256_sign_epi8(qv[mb], w));
        acc[rb][mb] = _mm256_add_epi32(acc[rb][mb], _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
      }
#endif
    }
  };
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) step(k, 32);
  if (k < K) step(k, K - k);
#if defined(TERNARY_X86_AVXVNNI)
  constexpr int32_t kOffset = kQ8Offset;
#else
  constexpr int32_t kOffset = 0;
#endif
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb)
      p.y[(m + mb) * p.ldy + n + rb] = epilogue_int8(
          p, m + mb, n + rb, hsum_epi32(acc[rb][mb]) - kOffset * p.x_sum[m + mb]);
}

TERNARY_X86_I8_BLOCK(Q8Int8, q8_int8_block);
void q8_int8_impl(const Problem& p, int64_t n0, int64_t n1) { tile_units<Q8Int8, 4, 2, 2>(p, n0, n1); }

// ---------------------------------------------------------------------------------------------
// act="none", i2: 8 bytes -> 8 dwords; vpermps on the low 3 bits reads the float weight
// ((i & 3) - 1) of the plane shifted down to bits 0-1; FMA in fp32.
template <int RB, int MB>
void i2_none_block(const Problem& p, const uint8_t* W, int64_t R, int64_t j, int64_t m) {
  const int64_t K = p.K;
  const __m256 t = _mm256_setr_ps(-1, 0, 1, 2, -1, 0, 1, 2);
  __m256 acc[RB][4][MB];
  for (int rb = 0; rb < RB; ++rb)
    for (int r = 0; r < 4; ++r)
      for (int mb = 0; mb < MB; ++mb) acc[rb][r][mb] = _mm256_setzero_ps();
  auto step = [&](int64_t k, bool tail) TERNARY_LAMBDA_INLINE {
    __m256 xv[MB];
    for (int mb = 0; mb < MB; ++mb) {
      const float* src = p.xf + (m + mb) * p.ldx + k;
      xv[mb] = tail ? _mm256_maskload_ps(src, lane_mask(K - k)) : _mm256_loadu_ps(src);
    }
    for (int rb = 0; rb < RB; ++rb) {
      const uint8_t* src = W + (j + rb) * K + k;
      if (MB == 1) TERNARY_PREFETCH(src);
      const __m128i b = tail ? load_tail8(src, K - k)
                             : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
      const __m256i v = _mm256_cvtepu8_epi32(b);
      const __m256 f[4] = {_mm256_permutevar8x32_ps(t, v),
                           _mm256_permutevar8x32_ps(t, _mm256_srli_epi32(v, 2)),
                           _mm256_permutevar8x32_ps(t, _mm256_srli_epi32(v, 4)),
                           _mm256_permutevar8x32_ps(t, _mm256_srli_epi32(v, 6))};
      for (int r = 0; r < 4; ++r)
        for (int mb = 0; mb < MB; ++mb) acc[rb][r][mb] = _mm256_fmadd_ps(f[r], xv[mb], acc[rb][r][mb]);
    }
  };
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) step(k, false);
  if (k < K) step(k, true);
  for (int rb = 0; rb < RB; ++rb)
    for (int r = 0; r < 4; ++r) {
      const int64_t n = j + rb + r * R;
      if (n >= p.N) continue;
      for (int mb = 0; mb < MB; ++mb)
        p.y[(m + mb) * p.ldy + n] = epilogue_none(p, n, hsum_ps(acc[rb][r][mb]));
    }
}

TERNARY_X86_I2_BLOCK(I2None, i2_none_block);
void i2_none_impl(const Problem& p, int64_t j0, int64_t j1) { tile_units<I2None, 2, 1, 2>(p, j0, j1); }

// act="none", i8: sign-extend 8 bytes to dwords, convert, FMA.
template <int RB, int MB>
void i8_none_block(const Problem& p, const int8_t* W, int64_t n, int64_t m) {
  const int64_t K = p.K;
  __m256 acc[RB][MB];
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb) acc[rb][mb] = _mm256_setzero_ps();
  auto step = [&](int64_t k, bool tail) TERNARY_LAMBDA_INLINE {
    __m256 xv[MB];
    for (int mb = 0; mb < MB; ++mb) {
      const float* src = p.xf + (m + mb) * p.ldx + k;
      xv[mb] = tail ? _mm256_maskload_ps(src, lane_mask(K - k)) : _mm256_loadu_ps(src);
    }
    for (int rb = 0; rb < RB; ++rb) {
      const int8_t* src = W + (n + rb) * K + k;
      if (MB == 1) TERNARY_PREFETCH(src);
      const __m128i b = tail ? load_tail8(src, K - k)
                             : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
      const __m256 wf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
      for (int mb = 0; mb < MB; ++mb) acc[rb][mb] = _mm256_fmadd_ps(wf, xv[mb], acc[rb][mb]);
    }
  };
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) step(k, false);
  if (k < K) step(k, true);
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb)
      p.y[(m + mb) * p.ldy + n + rb] = epilogue_none(p, n + rb, hsum_ps(acc[rb][mb]));
}

TERNARY_X86_I8_BLOCK(I8None, i8_none_block);
void i8_none_impl(const Problem& p, int64_t n0, int64_t n1) { tile_units<I8None, 8, 4, 2>(p, n0, n1); }

}  // namespace

namespace detail {
const KernelSet& TERNARY_X86_SET_FN() {
  static const KernelSet set{TERNARY_X86_SET_NAME, quantize_impl, i8_int8_impl, i8_none_impl,
                             i2_int8_impl, i2_none_impl, q8_int8_impl};
  return set;
}
}  // namespace detail

}  // namespace ternary::cpu::x86
