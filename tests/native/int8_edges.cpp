// int8_edges.cpp: feeds int8 activations straight to every kernel set (the op's quantizer never
// makes -128) and compares the integer dots with int64 sums, exactly; K up to past the
// 65536-column block in which the kernels accumulate scaled i2 code planes. Run by
// tests/test_x86.py; built with tools/native_build.py (program int8_edges). Exit code 0 = all
// passed.
#include <cstdio>
#include <random>
#include <vector>
#include "cpu/kernels.h"
using namespace ternary;
using namespace ternary::cpu;
int main() {
  int fails = 0, checks = 0;
  std::mt19937 rng(1234);
  struct Case { int64_t M, N, K; };
  const Case cases[] = {{1, 67, 4099}, {5, 33, 8191}, {17, 64, 1000}, {33, 20, 4483},
                        {4, 9, 65536 + 77}, {1, 5, 131072 + 64}};
  for (int s = 0; s < available_kernel_count(); ++s) {
    const KernelSet& ks = available_kernel(s);
    for (const Case& c : cases)
      for (int pattern = 0; pattern < 5; ++pattern) {
        const int64_t ldq = act_padded_k(c.K), R = i2_packed_rows(c.N);
        std::vector<int8_t> w8(c.N * c.K), q(c.M * ldq, 0);
        std::uniform_int_distribution<int> bit(0, 1), tri(-1, 1), any(-128, 127);
        for (auto& v : w8)
          v = pattern == 0 ? -1 : pattern == 1 || pattern == 2 ? 1
              : pattern == 3 ? (bit(rng) ? 1 : -1) : tri(rng);
        for (int64_t m = 0; m < c.M; ++m)
          for (int64_t k = 0; k < c.K; ++k)
            q[m * ldq + k] = pattern <= 1 ? -128 : pattern == 2 ? 127
                             : pattern == 3 ? (bit(rng) ? 127 : -128) : any(rng);
        std::vector<uint8_t> w2(R * c.K, kI2ZeroByte);
        for (int64_t n = 0; n < c.N; ++n)
          for (int64_t k = 0; k < c.K; ++k) {
            uint8_t& b = w2[i2_byte_row(n, R) * c.K + k];
            const int sh = i2_shift(n, R);
            b = uint8_t((b & ~(kI2CodeMask << sh)) | ((w8[n * c.K + k] + 1) << sh));
          }
        std::vector<int32_t> sum(c.M, 0);
        for (int64_t m = 0; m < c.M; ++m)
          for (int64_t k = 0; k < c.K; ++k) sum[m] += q[m * ldq + k];
        std::vector<float> inv(c.M, 1.0f), scale(1, 1.0f);
        for (int fmt = 0; fmt < 2; ++fmt) {
          std::vector<float> y(c.M * c.N, -1.0f);
          Problem p;
          p.M = c.M; p.N = c.N; p.K = c.K;
          p.weight = fmt ? static_cast<const void*>(w2.data()) : static_cast<const void*>(w8.data());
          p.scale = scale.data(); p.scale_stride = 0;
          p.xq = q.data(); p.x_inv = inv.data(); p.x_sum = sum.data(); p.ldq = ldq;
          p.y = y.data(); p.ldy = c.N;
          const int64_t units = fmt ? R : c.N;
          for (int64_t u = 0, step = 1; u < units; step = step * 2 + 1) {
            const int64_t e = u + step < units ? u + step : units;
            (fmt ? ks.i2_int8 : ks.i8_int8)(p, u, e);
            u = e;
          }
          int bad = 0;
          for (int64_t m = 0; m < c.M; ++m)
            for (int64_t n = 0; n < c.N; ++n) {
              long long dot = 0;
              for (int64_t k = 0; k < c.K; ++k) dot += (long long)w8[n * c.K + k] * q[m * ldq + k];
              if (y[m * c.N + n] != float(dot)) ++bad;  // |dot| <= 128 K < 2^24: exact
            }
          ++checks;
          if (bad) {
            ++fails;
            std::printf("FAIL %s %s M=%lld N=%lld K=%lld pattern=%d: %d wrong\n", ks.name,
                        fmt ? "i2" : "i8", (long long)c.M, (long long)c.N, (long long)c.K,
                        pattern, bad);
          }
        }
      }
  }
  std::printf("%d passed, %d failed\n", checks - fails, fails);
  return fails ? 1 : 0;
}
