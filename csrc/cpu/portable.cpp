// portable.cpp: plain C++ kernels for every CPU. Simple loops a compiler can vectorize; the
// reference the SIMD backends are tested against in the native harness.
#include <algorithm>
#include <cmath>

#include "cpu/kernels.h"

namespace ternary::cpu {
namespace {

void quantize_rows(const float* x, int64_t ldx, int64_t K, int64_t m0, int64_t m1, int8_t* q,
                   int64_t ldq, float* inv, int32_t* sum) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* xr = x + m * ldx;
    uint32_t amax_bits = 0;
    for (int64_t k = 0; k < K; ++k) amax_bits = std::max(amax_bits, f32_abs_bits(xr[k]));
    if (!act_row_finite(amax_bits)) {
      store_nonfinite_row(m, q, ldq, inv, sum);
      continue;
    }
    const float s = kActQMax / std::max(f32_from_bits(amax_bits), kActEps);
    int8_t* qr = q + m * ldq;
    int32_t total = 0;
    for (int64_t k = 0; k < K; ++k) {
      // nearbyint rounds half to even in the default rounding mode, like torch.round.
      const float v = std::nearbyint(xr[k] * s);
      const int32_t c = static_cast<int32_t>(std::min(std::max(v, -128.0f), 127.0f));
      qr[k] = static_cast<int8_t>(c);
      total += c;
    }
    for (int64_t k = K; k < ldq; ++k) qr[k] = 0;
    inv[m] = s;
    sum[m] = total;
  }
}

// Any int8 weight: i8 and q8 (int32 products, no offset).
void i8_int8(const Problem& p, int64_t n0, int64_t n1) {
  const auto* W = static_cast<const int8_t*>(p.weight);
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = W + n * p.K;
    for (int64_t m = 0; m < p.M; ++m) {
      const int8_t* q = p.xq + m * p.ldq;
      int32_t acc = 0;
      for (int64_t k = 0; k < p.K; ++k) acc += int32_t(w[k]) * int32_t(q[k]);
      p.y[m * p.ldy + n] = epilogue_int8(p, m, n, acc);
    }
  }
}

void i8_none(const Problem& p, int64_t n0, int64_t n1) {
  const auto* W = static_cast<const int8_t*>(p.weight);
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = W + n * p.K;
    for (int64_t m = 0; m < p.M; ++m) {
      const float* x = p.xf + m * p.ldx;
      float acc = 0.0f;
      for (int64_t k = 0; k < p.K; ++k) acc += float(w[k]) * x[k];
      p.y[m * p.ldy + n] = epilogue_none(p, n, acc);
    }
  }
}

// i2: one byte row feeds four outputs. Dot the unsigned codes (w + 1) with q, then subtract
// sum(q) once per output: sum_k (c_k - 1) q_k = sum_k c_k q_k - sum_k q_k.
void i2_int8(const Problem& p, int64_t j0, int64_t j1) {
  const auto* W = static_cast<const uint8_t*>(p.weight);
  const int64_t R = i2_packed_rows(p.N);
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* w = W + j * p.K;
    for (int64_t m = 0; m < p.M; ++m) {
      const int8_t* q = p.xq + m * p.ldq;
      int32_t acc[kI2RowsPerByte] = {0, 0, 0, 0};
      for (int64_t k = 0; k < p.K; ++k) {
        const int32_t b = w[k], a = q[k];
        acc[0] += (b & 3) * a;
        acc[1] += ((b >> 2) & 3) * a;
        acc[2] += ((b >> 4) & 3) * a;
        acc[3] += (b >> 6) * a;
      }
      for (int r = 0; r < kI2RowsPerByte; ++r) {
        const int64_t n = j + r * R;
        if (n < p.N) p.y[m * p.ldy + n] = epilogue_int8(p, m, n, acc[r] - p.x_sum[m]);
      }
    }
  }
}

void i2_none(const Problem& p, int64_t j0, int64_t j1) {
  const auto* W = static_cast<const uint8_t*>(p.weight);
  const int64_t R = i2_packed_rows(p.N);
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* w = W + j * p.K;
    for (int64_t m = 0; m < p.M; ++m) {
      const float* x = p.xf + m * p.ldx;
      float acc[kI2RowsPerByte] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int64_t k = 0; k < p.K; ++k) {
        const int b = w[k];
        acc[0] += float((b & 3) - 1) * x[k];
        acc[1] += float(((b >> 2) & 3) - 1) * x[k];
        acc[2] += float(((b >> 4) & 3) - 1) * x[k];
        acc[3] += float((b >> 6) - 1) * x[k];
      }
      for (int r = 0; r < kI2RowsPerByte; ++r) {
        const int64_t n = j + r * R;
        if (n < p.N) p.y[m * p.ldy + n] = epilogue_none(p, n, acc[r]);
      }
    }
  }
}

}  // namespace

const KernelSet& portable_kernels() {
  static const KernelSet set{"portable", quantize_rows, i8_int8, i8_none, i2_int8, i2_none,
                             i8_int8};
  return set;
}

}  // namespace ternary::cpu
