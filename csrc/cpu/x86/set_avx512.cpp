// cpu/x86/set_avx512.cpp: AVX-512 (F/BW/VL/DQ) + VNNI kernels. Built with the "_avx512" flags
// (tools/kernel_build.py); runs only after the avx512_vnni probe accepted the CPU.
//
// act="int8": vpdpbusd multiplies unsigned codes (w + 1, in 0..2; q8: w + 128) by signed int8
// activations into int32 lanes, exact for any int8 input (no int16 intermediate); the offset
// times the activation sum is subtracted once per output. For i2 the four code planes of a byte are isolated with masks
// (plane r comes out as 4^s * code, undone exactly after the horizontal sum).
// act="none": 16 bytes are widened to dwords once; vpermps looks the float weight up from a
// 16-entry table by the code bits (two planes per table, no per-weight decode), then FMA.
// M = 1 streams each weight byte once over several rows' accumulators; M > 1 keeps each
// decoded weight vector in registers across a block of activation rows (register blocking).
#include <immintrin.h>

#include <type_traits>

#include "cpu/x86/avx512.h"
#include "cpu/x86/common.h"
#include "cpu/x86/sets.h"

namespace ternary::cpu::x86 {
namespace {

// acc += dot(u8, s8). GCC 12's register allocator sometimes copies every accumulator through
// a fresh register on each iteration around vpdpbusd (two extra moves per dot product); which
// form avoids it depends on the loop, so each kernel uses the one that compiles clean (checked
// by disassembly of the inner loops): the intrinsic, or asm that accumulates in place.
TERNARY_INLINE __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) {
  return _mm512_dpbusd_epi32(acc, u8, s8);
}
TERNARY_INLINE __m512i dpbusd_asm(__m512i acc, __m512i u8, __m512i s8) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
  return acc;
}

// Horizontal sums of accumulators, through memory and out of line: with _mm512_reduce_add_*
// inlined on the loop's accumulators, GCC 12 copies every accumulator through a fresh register
// on each iteration (two extra moves per vpdpbusd/FMA).
__attribute__((noinline)) void hsum_epi32_n(const __m512i* v, int n, int32_t* out) {
  for (int i = 0; i < n; ++i) out[i] = _mm512_reduce_add_epi32(_mm512_load_si512(v + i));
}
__attribute__((noinline)) void hsum_ps_n(const __m512* v, int n, float* out) {
  for (int i = 0; i < n; ++i) out[i] = _mm512_reduce_add_ps(_mm512_load_ps(reinterpret_cast<const float*>(v + i)));
}

// ---------------------------------------------------------------------------------------------
// Quantization: bit-exact with the portable kernel (one float multiply, round half to even).

void quantize_impl(const float* x, int64_t ldx, int64_t K, int64_t m0, int64_t m1, int8_t* q,
                   int64_t ldq, float* inv, int32_t* sum) {
  const __m512i absmask = _mm512_set1_epi32(static_cast<int>(kF32AbsMask));
  const __m512 lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t m = m0; m < m1; ++m) {
    const float* xr = x + m * ldx;
    int8_t* qr = q + m * ldq;
    // max |x| over bit patterns (act_row_finite): NaN and Inf are the largest.
    __m512i vmax0 = _mm512_setzero_si512(), vmax1 = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      vmax0 = _mm512_max_epu32(_mm512_and_si512(_mm512_loadu_si512(xr + k), absmask), vmax0);
      vmax1 = _mm512_max_epu32(_mm512_and_si512(_mm512_loadu_si512(xr + k + 16), absmask), vmax1);
    }
    for (; k < K; k += 16) {
      const __m512i v = _mm512_maskz_loadu_epi32(tail_mask16(K - k), xr + k);
      vmax0 = _mm512_max_epu32(_mm512_and_si512(v, absmask), vmax0);
    }
    const uint32_t amax_bits = _mm512_reduce_max_epu32(_mm512_max_epu32(vmax0, vmax1));
    if (!act_row_finite(amax_bits)) {
      store_nonfinite_row(m, q, ldq, inv, sum);
      continue;
    }
    const float s = quant_scale(f32_from_bits(amax_bits));
    const __m512 vs = _mm512_set1_ps(s);
    __m512i acc = _mm512_setzero_si512();
    for (k = 0; k < K; k += 16) {
      const __mmask16 mk = tail_mask16(K - k);
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xr + k), vs);
      v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
      const __m512i c = _mm512_cvtps_epi32(v);
      acc = _mm512_add_epi32(acc, c);
      _mm512_mask_cvtepi32_storeu_epi8(qr + k, mk, c);
    }
    if (ldq > K) std::memset(qr + K, 0, static_cast<size_t>(ldq - K));
    inv[m] = s;
    sum[m] = _mm512_reduce_add_epi32(acc);
  }
}

// ---------------------------------------------------------------------------------------------
// act="int8", i2. Plane r of a byte (bits 2r, 2r+1) as 4^shift * code with one and (plus one
// shift for the top plane); kPlaneShift undoes the factor after the horizontal sum.
constexpr int kPlaneShift[4] = {0, 2, 4, 2};

TERNARY_INLINE void i2_planes(__m512i w, __m512i pl[4]) {
  const __m512i m03 = _mm512_set1_epi8(0x03), m0c = _mm512_set1_epi8(0x0C),
                m30 = _mm512_set1_epi8(0x30);
  pl[0] = _mm512_and_si512(w, m03);
  pl[1] = _mm512_and_si512(w, m0c);
  pl[2] = _mm512_and_si512(w, m30);
  pl[3] = _mm512_and_si512(_mm512_srli_epi16(w, 4), m0c);
}

// Byte rows j..j+RB-1 (each gives outputs j + r*R) times activation rows m..m+MB-1.
template <int RB, int MB>
void i2_int8_block(const Problem& p, const uint8_t* W, int64_t R, int64_t j, int64_t m) {
  const int64_t K = p.K;
  int32_t tot[RB][4][MB] = {};
  for (int64_t kb = 0; kb < K; kb += kKBlock) {
    const int64_t ke = min_of(K, kb + kKBlock);
    __m512i acc[RB][4][MB];
    for (int rb = 0; rb < RB; ++rb)
      for (int r = 0; r < 4; ++r)
        for (int mb = 0; mb < MB; ++mb) acc[rb][r][mb] = _mm512_setzero_si512();
    auto step = [&](int64_t k, bool tail) TERNARY_LAMBDA_INLINE {
      __m512i qv[MB];
      for (int mb = 0; mb < MB; ++mb)
        qv[mb] = _mm512_loadu_si512(p.xq + (m + mb) * p.ldq + k);  // padded: whole 64 bytes
      for (int rb = 0; rb < RB; ++rb) {
        const uint8_t* src = W + (j + rb) * K + k;
        if (MB == 1) TERNARY_PREFETCH(src);
        const __m512i w = tail ? _mm512_maskz_loadu_epi8(tail_mask64(ke - k), src)
                               : _mm512_loadu_si512(src);
        __m512i pl[4];
        i2_planes(w, pl);
        for (int r = 0; r < 4; ++r)
          for (int mb = 0; mb < MB; ++mb)
            acc[rb][r][mb] = dpbusd(acc[rb][r][mb], pl[r], qv[mb]);
      }
    };
    // The partial chunk first: after the main loop, GCC 12 would copy every accumulator
    // through a fresh register on each iteration (two extra moves per vpdpbusd).
    const int64_t kmain = kb + (ke - kb) / 64 * 64;
    if (kmain < ke) step(kmain, true);
    for (int64_t k = kb; k < kmain; k += 64) step(k, false);
    alignas(64) __m512i tmp[RB][4][MB];
    int32_t sums[RB][4][MB];
    for (int rb = 0; rb < RB; ++rb)
      for (int r = 0; r < 4; ++r)
        for (int mb = 0; mb < MB; ++mb) tmp[rb][r][mb] = acc[rb][r][mb];
    hsum_epi32_n(&tmp[0][0][0], RB * 4 * MB, &sums[0][0][0]);
    for (int rb = 0; rb < RB; ++rb)
      for (int r = 0; r < 4; ++r)
        for (int mb = 0; mb < MB; ++mb) tot[rb][r][mb] += sums[rb][r][mb] >> kPlaneShift[r];
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
// M > 1: one byte row's K codes stay in L1 while every block of 4 activation rows passes over them.
void i2_int8_impl(const Problem& p, int64_t j0, int64_t j1) { tile_units<I2Int8, 4, 1, 4>(p, j0, j1); }

// ---------------------------------------------------------------------------------------------
// act="int8", i8: code = w + 1 (vpaddb), vpdpbusd, minus the activation sum. q8 (Q8): code =
// w + 128 (vpxorb 0x80, an unsigned 1..255), minus 128 times the activation sum.
template <bool Q8>
struct I8Code {
  static constexpr int32_t kOffset = Q8 ? kQ8Offset : 1;
  TERNARY_INLINE static __m512i code(__m512i w) {
    return Q8 ? _mm512_xor_si512(w, _mm512_set1_epi8(static_cast<char>(0x80)))
              : _mm512_add_epi8(w, _mm512_set1_epi8(1));
  }
};

template <bool Q8, int RB, int MB>
void int8_rows_block(const Problem& p, const int8_t* W, int64_t n, int64_t m) {
  using Code = I8Code<Q8>;
  const int64_t K = p.K;
  __m512i acc[RB][MB];
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb) acc[rb][mb] = _mm512_setzero_si512();
  auto step = [&](int64_t k, bool tail) TERNARY_LAMBDA_INLINE {
    __m512i qv[MB];
    for (int mb = 0; mb < MB; ++mb) qv[mb] = _mm512_loadu_si512(p.xq + (m + mb) * p.ldq + k);
    for (int rb = 0; rb < RB; ++rb) {
      const int8_t* src = W + (n + rb) * K + k;
      if (MB == 1) TERNARY_PREFETCH(src);
      // Masked-off bytes load as w = 0 against zero activations: no contribution.
      const __m512i w = tail ? _mm512_maskz_loadu_epi8(tail_mask64(K - k), src)
                             : _mm512_loadu_si512(src);
      const __m512i c = Code::code(w);
      for (int mb = 0; mb < MB; ++mb) acc[rb][mb] = dpbusd_asm(acc[rb][mb], c, qv[mb]);
    }
  };
  const int64_t kmain = K / 64 * 64;  // partial chunk first (see i2_int8_block)
  if (kmain < K) step(kmain, true);
  for (int64_t k = 0; k < kmain; k += 64) step(k, false);
  alignas(64) __m512i tmp[RB][MB];
  int32_t sums[RB][MB];
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb) tmp[rb][mb] = acc[rb][mb];
  hsum_epi32_n(&tmp[0][0], RB * MB, &sums[0][0]);
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb)
      p.y[(m + mb) * p.ldy + n + rb] = epilogue_int8(
          p, m + mb, n + rb, sums[rb][mb] - Code::kOffset * p.x_sum[m + mb]);
}
template <int RB, int MB>
void i8_int8_block(const Problem& p, const int8_t* W, int64_t n, int64_t m) {
  int8_rows_block<false, RB, MB>(p, W, n, m);
}
template <int RB, int MB>
void q8_int8_block(const Problem& p, const int8_t* W, int64_t n, int64_t m) {
  int8_rows_block<true, RB, MB>(p, W, n, m);
}

TERNARY_X86_I8_BLOCK(I8Int8, i8_int8_block);
void i8_int8_impl(const Problem& p, int64_t n0, int64_t n1) { tile_units<I8Int8, 8, 4, 4>(p, n0, n1); }
TERNARY_X86_I8_BLOCK(Q8Int8, q8_int8_block);
void q8_int8_impl(const Problem& p, int64_t n0, int64_t n1) { tile_units<Q8Int8, 8, 4, 4>(p, n0, n1); }

// ---------------------------------------------------------------------------------------------
// act="none", i2: 16 bytes -> 16 dwords; vpermps reads the float weight of planes 0/1 (table
// t01 / t23 on bits 0-3) and of planes 2/3 (the same tables on bits 4-7); FMA in fp32.
template <int RB, int MB>
void i2_none_block(const Problem& p, const uint8_t* W, int64_t R, int64_t j, int64_t m) {
  const int64_t K = p.K;
  const __m512 t01 = _mm512_setr_ps(-1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2);
  const __m512 t23 = _mm512_setr_ps(-1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2);
  __m512 acc[RB][4][MB];
  for (int rb = 0; rb < RB; ++rb)
    for (int r = 0; r < 4; ++r)
      for (int mb = 0; mb < MB; ++mb) acc[rb][r][mb] = _mm512_setzero_ps();
  auto step = [&](int64_t k, bool tail) TERNARY_LAMBDA_INLINE {
    const __mmask16 mk = tail ? tail_mask16(K - k) : __mmask16(0xFFFF);
    __m512 xv[MB];
    for (int mb = 0; mb < MB; ++mb) {
      const float* src = p.xf + (m + mb) * p.ldx + k;
      xv[mb] = tail ? _mm512_maskz_loadu_ps(mk, src) : _mm512_loadu_ps(src);
    }
    for (int rb = 0; rb < RB; ++rb) {
      const uint8_t* src = W + (j + rb) * K + k;
      if (MB == 1) TERNARY_PREFETCH(src);
      const __m128i b = tail ? _mm_maskz_loadu_epi8(mk, src)
                             : _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
      const __m512i v = _mm512_cvtepu8_epi32(b);
      const __m512i v4 = _mm512_srli_epi32(v, 4);
      const __m512 f[4] = {_mm512_permutexvar_ps(v, t01), _mm512_permutexvar_ps(v, t23),
                           _mm512_permutexvar_ps(v4, t01), _mm512_permutexvar_ps(v4, t23)};
      for (int r = 0; r < 4; ++r)
        for (int mb = 0; mb < MB; ++mb) acc[rb][r][mb] = _mm512_fmadd_ps(f[r], xv[mb], acc[rb][r][mb]);
    }
  };
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) step(k, false);
  if (k < K) step(k, true);
  alignas(64) __m512 tmp[RB][4][MB];
  float sums[RB][4][MB];
  for (int rb = 0; rb < RB; ++rb)
    for (int r = 0; r < 4; ++r)
      for (int mb = 0; mb < MB; ++mb) tmp[rb][r][mb] = acc[rb][r][mb];
  hsum_ps_n(&tmp[0][0][0], RB * 4 * MB, &sums[0][0][0]);
  for (int rb = 0; rb < RB; ++rb)
    for (int r = 0; r < 4; ++r) {
      const int64_t n = j + rb + r * R;
      if (n >= p.N) continue;
      for (int mb = 0; mb < MB; ++mb)
        p.y[(m + mb) * p.ldy + n] = epilogue_none(p, n, sums[rb][r][mb]);
    }
}

TERNARY_X86_I2_BLOCK(I2None, i2_none_block);
void i2_none_impl(const Problem& p, int64_t j0, int64_t j1) { tile_units<I2None, 2, 1, 4>(p, j0, j1); }

// act="none", i8: sign-extend 16 bytes to dwords, convert, FMA.
template <int RB, int MB>
void i8_none_block(const Problem& p, const int8_t* W, int64_t n, int64_t m) {
  const int64_t K = p.K;
  __m512 acc[RB][MB];
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb) acc[rb][mb] = _mm512_setzero_ps();
  auto step = [&](int64_t k, bool tail) TERNARY_LAMBDA_INLINE {
    const __mmask16 mk = tail ? tail_mask16(K - k) : __mmask16(0xFFFF);
    __m512 xv[MB];
    for (int mb = 0; mb < MB; ++mb) {
      const float* src = p.xf + (m + mb) * p.ldx + k;
      xv[mb] = tail ? _mm512_maskz_loadu_ps(mk, src) : _mm512_loadu_ps(src);
    }
    for (int rb = 0; rb < RB; ++rb) {
      const int8_t* src = W + (n + rb) * K + k;
      if (MB == 1) TERNARY_PREFETCH(src);
      const __m128i b = tail ? _mm_maskz_loadu_epi8(mk, src)
                             : _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
      const __m512 wf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
      for (int mb = 0; mb < MB; ++mb) acc[rb][mb] = _mm512_fmadd_ps(wf, xv[mb], acc[rb][mb]);
    }
  };
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) step(k, false);
  if (k < K) step(k, true);
  alignas(64) __m512 tmp[RB][MB];
  float sums[RB][MB];
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb) tmp[rb][mb] = acc[rb][mb];
  hsum_ps_n(&tmp[0][0], RB * MB, &sums[0][0]);
  for (int rb = 0; rb < RB; ++rb)
    for (int mb = 0; mb < MB; ++mb)
      p.y[(m + mb) * p.ldy + n + rb] = epilogue_none(p, n + rb, sums[rb][mb]);
}

TERNARY_X86_I8_BLOCK(I8None, i8_none_block);
void i8_none_impl(const Problem& p, int64_t n0, int64_t n1) { tile_units<I8None, 8, 4, 4>(p, n0, n1); }

}  // namespace

namespace avx512 {
void quantize(const float* x, int64_t ldx, int64_t K, int64_t m0, int64_t m1, int8_t* q,
              int64_t ldq, float* inv, int32_t* sum) {
  quantize_impl(x, ldx, K, m0, m1, q, ldq, inv, sum);
}
void i8_int8(const Problem& p, int64_t n0, int64_t n1) { i8_int8_impl(p, n0, n1); }
void i8_none(const Problem& p, int64_t n0, int64_t n1) { i8_none_impl(p, n0, n1); }
void i2_int8(const Problem& p, int64_t j0, int64_t j1) { i2_int8_impl(p, j0, j1); }
void i2_none(const Problem& p, int64_t j0, int64_t j1) { i2_none_impl(p, j0, j1); }
void q8_int8(const Problem& p, int64_t n0, int64_t n1) { q8_int8_impl(p, n0, n1); }
}  // namespace avx512

namespace detail {
const KernelSet& avx512_vnni_set() {
  static const KernelSet set{"avx512_vnni", quantize_impl, i8_int8_impl, i8_none_impl,
                             i2_int8_impl, i2_none_impl, q8_int8_impl};
  return set;
}
}  // namespace detail

}  // namespace ternary::cpu::x86
