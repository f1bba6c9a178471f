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

}  // namespace

void rms_norm_rows(const float* x, const float* gamma, int64_t K, float eps, int64_t m0,
                   int64_t m1, float* z, float* factor) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* xr = x + m * K;
    float* zr = z + m * K;
    uint32_t amax_bits = 0;
    for (int64_t k = 0; k < K; ++k) {
      amax_bits = std::max(amax_bits, f32_abs_bits(xr[k]));
      zr[k] = xr[k] * gamma[k];
    }
    if (!act_row_finite(amax_bits)) {  // z holds NaN or +-Inf too: the output row is NaN
      factor[m] = 1.0f;
      continue;
    }
    const float a = std::max(f32_from_bits(amax_bits), kNormAmaxMin);
    const float u = kNormQMax / a;
    int64_t ss = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t p = static_cast<int32_t>(std::nearbyint(xr[k] * u));  // |p| <= 32767
      ss += static_cast<int64_t>(p * p);
    }
    factor[m] = rms_norm_factor(ss, K, a, eps);
  }
}

}  // namespace ternary::cpu
