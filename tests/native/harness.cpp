// harness.cpp: torch-free test of every CPU kernel set this build and CPU can run, against the
// portable kernels and a scalar definition of the op. Integer paths (act=int8) must match bit
// for bit; float paths (act=none) to float rounding. Also built for aarch64 (run under qemu)
// and under AddressSanitizer/UBSan. Exit code 0 = all passed.
//
//   harness [--expect NAME] [--seed S] [--list]
//     --expect NAME  fail unless the dispatcher's default choice is NAME
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/kernels.h"

using namespace ternary;
using namespace ternary::cpu;

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond, ...)                          \
  do {                                            \
    ++g_checks;                                   \
    if (!(cond)) {                                \
      ++g_failures;                               \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                   \
      std::printf("\n");                          \
    }                                             \
  } while (0)

struct Case {
  int64_t M, N, K;
  bool per_row_scale, with_bias;
  int mode;  // 0 random, 1 saturating (+-127/-128 activations, +-1 weights), 2 zeros in x,
             // 3 NaN / +Inf / -Inf in every other row of x (act=int8 only)
};

// Row m of a mode-3 case holds a non-finite value (NaN, +Inf, -Inf in turn) at one column.
bool nonfinite_row(const Case& c, int64_t m) { return c.mode == 3 && c.K > 0 && m % 2 == 0; }

bool same_or_both_nan(float a, float b) { return a == b || (std::isnan(a) && std::isnan(b)); }

struct Data {
  std::vector<int8_t> w8;    // [N, K]
  std::vector<int8_t> wq;    // [N, K] q8 weights in [-127, 127] (mode 1: +-127)
  std::vector<uint8_t> w2;   // [R, K]
  std::vector<float> x, scale, bias;
};

Data make_data(const Case& c, std::mt19937& rng) {
  Data d;
  const int64_t R = i2_packed_rows(c.N);
  d.w8.resize(c.N * c.K);
  std::uniform_int_distribution<int> tri(-1, 1), pm(0, 1);
  for (auto& v : d.w8) v = static_cast<int8_t>(c.mode == 1 ? (pm(rng) ? 1 : -1) : tri(rng));
  std::uniform_int_distribution<int> any8(-127, 127);
  d.wq.resize(c.N * c.K);
  for (auto& v : d.wq) v = static_cast<int8_t>(c.mode == 1 ? (pm(rng) ? 127 : -127) : any8(rng));
  d.w2.assign(R * c.K, kI2ZeroByte);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t k = 0; k < c.K; ++k) {
      uint8_t& b = d.w2[i2_byte_row(n, R) * c.K + k];
      const int sh = i2_shift(n, R);
      b = static_cast<uint8_t>((b & ~(kI2CodeMask << sh)) | ((d.w8[n * c.K + k] + 1) << sh));
    }
  std::normal_distribution<float> nd(0.0f, 1.0f);
  d.x.resize(c.M * c.K);
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t k = 0; k < c.K; ++k) {
      float v = nd(rng) * (m % 3 == 0 ? 100.0f : 1.0f);
      if (c.mode == 1) v = pm(rng) ? 1.0f : -1.0f;   // scaled to +-127 by quantization
      if (c.mode == 1 && k % 7 == 3) v = -128.0f / 127.0f;  // clamps to -128 once inv = 127
      if (c.mode == 2 && (k % 5 == 0 || m == 1)) v = 0.0f;
      d.x[m * c.K + k] = v;
    }
  for (int64_t m = 0; m < c.M; ++m)
    if (nonfinite_row(c, m)) {
      const float bad[3] = {std::nanf(""), INFINITY, -INFINITY};
      d.x[m * c.K + (m * 7 + 3) % c.K] = bad[(m / 2) % 3];
    }
  d.scale.resize(c.per_row_scale ? c.N : 1);
  for (auto& s : d.scale) s = 0.01f + std::fabs(nd(rng));
  if (c.with_bias) {
    d.bias.resize(c.N);
    for (auto& b : d.bias) b = nd(rng);
  }
  return d;
}

// Scalar definition of the integer dots, independent of every kernel set.
std::vector<int64_t> scalar_dots(const Case& c, const std::vector<int8_t>& w,
                                 const std::vector<int8_t>& q, int64_t ldq) {
  std::vector<int64_t> dots(c.M * c.N);
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < c.N; ++n) {
      int64_t acc = 0;
      for (int64_t k = 0; k < c.K; ++k) acc += int64_t(w[n * c.K + k]) * q[m * ldq + k];
      dots[m * c.N + n] = acc;
    }
  return dots;
}

struct Run {
  std::vector<int8_t> q;
  std::vector<float> inv, y;
  std::vector<int32_t> sum;
};

// Runs one kernel set on one case, splitting units into uneven chunks like threads would.
enum Fmt { kFmtI8 = 0, kFmtI2 = 1, kFmtQ8 = 2 };
const char* const kFmtNames[] = {"i8", "i2", "q8"};

Run run_set(const KernelSet& ks, const Case& c, const Data& d, int fmt, bool int8_act) {
  const bool i2 = fmt == kFmtI2;
  Run r;
  const int64_t ldq = act_padded_k(c.K);
  Problem p;
  p.M = c.M; p.N = c.N; p.K = c.K;
  p.weight = i2 ? static_cast<const void*>(d.w2.data())
                : static_cast<const void*>(fmt == kFmtQ8 ? d.wq.data() : d.w8.data());
  p.scale = d.scale.data();
  p.scale_stride = c.per_row_scale ? 1 : 0;
  p.bias = c.with_bias ? d.bias.data() : nullptr;
  r.y.assign(c.M * c.N, std::nanf(""));
  p.y = r.y.data();
  p.ldy = c.N;
  if (int8_act) {
    r.q.assign(c.M * ldq, 99);  // poison: quantize must zero the padding
    r.inv.resize(c.M);
    r.sum.resize(c.M);
    ks.quantize(d.x.data(), c.K, c.K, 0, c.M, r.q.data(), ldq, r.inv.data(), r.sum.data());
    p.xq = r.q.data(); p.x_inv = r.inv.data(); p.x_sum = r.sum.data(); p.ldq = ldq;
  } else {
    p.xf = d.x.data();
    p.ldx = c.K;
  }
  LinearFn fn = i2 ? (int8_act ? ks.i2_int8 : ks.i2_none)
                  : (int8_act ? (fmt == kFmtQ8 ? ks.q8_int8 : ks.i8_int8) : ks.i8_none);
  const int64_t units = i2 ? i2_packed_rows(c.N) : c.N;
  // Uneven splits (1, 3, 7, ... units) exercise every kernel's row tails.
  int64_t u = 0, step = 1;
  while (u < units) {
    const int64_t e = std::min(units, u + step);
    fn(p, u, e);
    u = e;
    step = step * 2 + 1;
  }
  return r;
}

void check_case(const KernelSet& ks, const Case& c, std::mt19937& rng) {
  const Data d = make_data(c, rng);
  const KernelSet& ref = portable_kernels();
  char tag[200];
  for (int fmt = 0; fmt < 3; ++fmt)
    for (int act = 0; act < 2; ++act) {
      const bool int8_act = act == 0;
      const std::vector<int8_t>& w = fmt == kFmtQ8 ? d.wq : d.w8;  // i2 packs w8
      if (c.mode == 3 && !int8_act) continue;
      if (fmt == kFmtQ8 && int8_act && c.K > kQ8ActMaxK) continue;
      std::snprintf(tag, sizeof tag, "[%s %s act=%s M=%lld N=%lld K=%lld mode=%d]", ks.name,
                    kFmtNames[fmt], int8_act ? "int8" : "none", (long long)c.M,
                    (long long)c.N, (long long)c.K, c.mode);
      const Run got = run_set(ks, c, d, fmt, int8_act);
      const Run want = run_set(ref, c, d, fmt, int8_act);
      if (int8_act) {
        CHECK(got.q == want.q, "%s quantized activations differ", tag);
        int inv_bad = 0;
        for (int64_t m = 0; m < c.M; ++m) {
          inv_bad += !same_or_both_nan(got.inv[m], want.inv[m]);
          inv_bad += std::isnan(want.inv[m]) != nonfinite_row(c, m);  // NaN marks those rows
        }
        CHECK(inv_bad == 0, "%s inv scales differ or miss a non-finite row", tag);
        CHECK(got.sum == want.sum, "%s activation sums differ", tag);
        // Exactness of the integer dot: recover it from the kernel's float output with scale 1.
        const auto dots = scalar_dots(c, w, want.q, act_padded_k(c.K));
        int bad = 0;
        for (int64_t m = 0; m < c.M; ++m)
          for (int64_t n = 0; n < c.N; ++n) {
            const float s = d.scale[c.per_row_scale ? n : 0];
            float v = static_cast<float>(dots[m * c.N + n]) / want.inv[m] * s;
            if (c.with_bias) v += d.bias[n];
            const float g = got.y[m * c.N + n];
            if (!same_or_both_nan(g, v)) ++bad;  // bit-exact; NaN only in non-finite rows
            if (std::isnan(g) != nonfinite_row(c, m)) ++bad;
          }
        CHECK(bad == 0, "%s %d outputs differ from the exact integer dot epilogue", tag, bad);
      } else {
        // Float path: against a double-precision sum, within a random-walk bound of float
        // rounding (an indexing slip costs a whole term, far more than this).
        int bad = 0;
        for (int64_t m = 0; m < c.M; ++m)
          for (int64_t n = 0; n < c.N; ++n) {
            double acc = 0.0, mag = 0.0;
            for (int64_t k = 0; k < c.K; ++k) {
              acc += double(w[n * c.K + k]) * d.x[m * c.K + k];
              mag += std::fabs(double(w[n * c.K + k]) * d.x[m * c.K + k]);
            }
            const double s = d.scale[c.per_row_scale ? n : 0];
            const double want = acc * s + (c.with_bias ? d.bias[n] : 0.0);
            const double tol = 8.0 * std::sqrt(double(c.K) + 1.0) * 6e-8 * mag * s +
                               1e-6 * (1.0 + std::fabs(want));
            if (!(std::fabs(double(got.y[m * c.N + n]) - want) <= tol)) ++bad;
          }
        CHECK(bad == 0, "%s %d outputs differ from the float reference beyond rounding", tag, bad);
      }
    }
}

}  // namespace

int main(int argc, char** argv) {
  const char* expect = nullptr;
  unsigned seed = std::random_device{}();
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--expect") && i + 1 < argc) expect = argv[++i];
    else if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) seed = std::strtoul(argv[++i], nullptr, 10);
    else if (!std::strcmp(argv[i], "--list")) {
      for (int s = 0; s < available_kernel_count(); ++s) std::printf("%s\n", available_kernel(s).name);
      return 0;
    } else {
      std::fprintf(stderr, "usage: %s [--expect NAME] [--seed S] [--list]\n", argv[0]);
      return 2;
    }
  }
  std::printf("seed %u; kernel sets:", seed);
  for (int s = 0; s < available_kernel_count(); ++s) std::printf(" %s", available_kernel(s).name);
  std::printf("; selected: %s\n", selected_kernels().name);
  if (expect) CHECK(std::strcmp(selected_kernels().name, expect) == 0,
                    "dispatcher selected %s, expected %s", selected_kernels().name, expect);

  std::mt19937 rng(seed);
  const int64_t dims[] = {1, 3, 5, 17, 63, 64, 65, 257};
  std::vector<Case> cases;
  for (int64_t N : dims)
    for (int64_t K : dims) cases.push_back({1 + (N + K) % 5, N, K, (N & 1) != 0, (K & 1) == 0, 0});
  cases.push_back({1, 1000, 1000, true, true, 0});
  cases.push_back({9, 129, 1000, false, true, 0});
  cases.push_back({16, 256, 512, true, false, 0});
  cases.push_back({33, 67, 131, false, false, 0});
  cases.push_back({2, 64, 4096, false, false, 1});   // int16-saturation worst case
  cases.push_back({5, 33, 2049, true, true, 1});
  cases.push_back({4, 31, 77, true, false, 2});
  cases.push_back({1, 1, 1, false, false, 0});
  cases.push_back({1, 40, 77, true, true, 3});     // non-finite x: GEMV, tiles, AMX
  cases.push_back({12, 33, 300, false, true, 3});
  cases.push_back({19, 70, 45, true, false, 3});
  cases.push_back({1, 9, 0, true, true, 0});       // K = 0: the bias, at every M
  cases.push_back({16, 40, 0, false, true, 0});
  cases.push_back({33, 9, 0, true, false, 0});
  // K past 2^16: kernels that flush integer accumulators per K block (NEON) cross a block edge.
  cases.push_back({3, 6, 70001, true, true, 1});
  for (int s = 0; s < available_kernel_count(); ++s)
    for (const Case& c : cases) check_case(available_kernel(s), c, rng);
  std::printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
  return g_failures == 0 ? 0 : 1;
}
