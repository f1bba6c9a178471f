// rms_norm.cpp: the input RMSNorm of the rms_norm_linear ops, folded into act="int8" (the
// semantics: docs/DESIGN.md, "Op semantics"). Every kernel set shares it: it only prepares the
// rows their quantizer takes, and the factor their inv is multiplied by.
#include <algorithm>
#include <cmath>

#include "cpu/kernels.h"

namespace ternary::cpu {
namespace {

// sqrt(mean square + eps) of a row from its exact sum of squares ss of x rounded to kNormQMax
// steps of a (the clamped max|x|): the float32 steps of docs/DESIGN.md, in that order.
float rms_norm_factor(int64_t ss, int64_t K, float a, float eps) {
  const float d = a / kNormQMax;
  float t = static_cast<float>(ss) / static_cast<float>(K);
  t = t * d;
  t = t * d;
  if (t < kF32MinNormal) t = 0.0f;
  return std::sqrt(t + eps);
}

// v rounded to the nearest integer, ties to even, for |v| <= 2^22: adding and subtracting
// 1.5 * 2^23 leaves the rounded value (float addition rounds to nearest even). A loop of these
// vectorizes, where std::nearbyint is a library call per element on baseline x86-64.
inline float round_half_even(float v) {
  constexpr float kShift = 12582912.0f;
  return (v + kShift) - kShift;
}

// The two passes over a row, built for each x86 vector width where the compiler can clone a
// function and pick the clone at load time (GCC / Clang on Linux); elsewhere once. This file is
// not one of the per-ISA kernel sets, so without the clones it runs at the baseline ISA, which
// made the prologue cost more than the quantization it feeds. Every step is exact per element
// or an integer sum, so the width never changes a bit (-ffp-contract=off keeps x * u and the
// rounding apart).
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define TERNARY_ROW_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TERNARY_ROW_CLONES
#endif

// z = x * gamma (float32 products); returns max |x| as a bit pattern (act_row_finite).
TERNARY_ROW_CLONES
uint32_t scale_row(const float* x, const float* gamma, int64_t K, float* z) {
  uint32_t amax_bits = 0;
  for (int64_t k = 0; k < K; ++k) {
    amax_bits = std::max(amax_bits, f32_abs_bits(x[k]));
    z[k] = x[k] * gamma[k];
  }
  return amax_bits;
}

// sum_k round_half_even(x[k] * u)^2, exact (|x * u| <= 32767).
TERNARY_ROW_CLONES
int64_t sum_squares(const float* x, int64_t K, float u) {
  int64_t ss = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int32_t p = static_cast<int32_t>(round_half_even(x[k] * u));
    ss += static_cast<int64_t>(p * p);
  }
  return ss;
}

}  // namespace

void rms_norm_rows(const float* x, const float* gamma, int64_t K, float eps, int64_t m0,
                   int64_t m1, float* z, float* factor) {
  for (int64_t m = m0; m < m1; ++m) {
    const uint32_t amax_bits = scale_row(x + m * K, gamma, K, z + m * K);
    if (!act_row_finite(amax_bits)) {  // z holds NaN or +-Inf too: the output row is NaN
      factor[m] = 1.0f;
      continue;
    }
    const float a = std::max(f32_from_bits(amax_bits), kNormAmaxMin);
    factor[m] = rms_norm_factor(sum_squares(x + m * K, K, kNormQMax / a), K, a, eps);
  }
}

}  // namespace ternary::cpu
