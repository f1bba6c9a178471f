// kernels.h: the torch-free CPU kernel interface. Every CPU backend (portable C++, x86 SIMD,
// NEON) implements a KernelSet; the ATen glue splits work over threads and calls one. Raw
// pointers only, so kernels build alone for harnesses, qemu and sanitizers.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

#include "ternary_format.h"

namespace ternary::cpu {

// One linear problem: y[m, n] = s[n] * sum_k T[n, k] * a[m, k] (+ bias[n]).
struct Problem {
  int64_t M = 0, N = 0, K = 0;
  const void* weight = nullptr;  // i8, q8: int8 [N, K]; i2: uint8 [ceil(N/4), K]; row-major
  const float* scale = nullptr;  // s[n] = scale[n * scale_stride]
  int64_t scale_stride = 0;      // 0 (per tensor) or 1 (per output row)
  const float* bias = nullptr;   // [N] or nullptr
  // act="int8": q [M, ldq] int8 (ldq = act_padded_k(K), zero past K), per-row inv and sum of q.
  const int8_t* xq = nullptr;
  const float* x_inv = nullptr;
  const int32_t* x_sum = nullptr;
  int64_t ldq = 0;
  // act="none": float32 rows [M, ldx].
  const float* xf = nullptr;
  int64_t ldx = 0;
  float* y = nullptr;  // [M, ldy] float32 output
  int64_t ldy = 0;
};

// The output epilogues every CPU kernel set uses, so act="int8" outputs are bit-identical across
// sets (two statements: no compiler may fuse the bias add into an FMA). `static` gives each
// translation unit its own copy: a copy built with one TU's ISA flags is never linked in place
// of another's.
static inline float epilogue_int8(const Problem& p, int64_t m, int64_t n, int32_t dot) {
  float v = static_cast<float>(dot) / p.x_inv[m] * p.scale[n * p.scale_stride];
  return p.bias ? v + p.bias[n] : v;
}

static inline float epilogue_none(const Problem& p, int64_t n, float dot) {
  float v = dot * p.scale[n * p.scale_stride];
  return p.bias ? v + p.bias[n] : v;
}

// |x|'s bit pattern, and back (the amax pass works on bit patterns: act_row_finite).
static inline uint32_t f32_abs_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b & kF32AbsMask;
}
static inline float f32_from_bits(uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// What a quantizer stores for a row m holding NaN or +-Inf: q = 0, sum = 0 and inv = NaN, so
// that every epilogue (dot / inv) gives NaN across the row, as the reference does.
static inline void store_nonfinite_row(int64_t m, int8_t* q, int64_t ldq, float* inv,
                                       int32_t* sum) {
  std::memset(q + m * ldq, 0, static_cast<size_t>(ldq));
  inv[m] = std::numeric_limits<float>::quiet_NaN();
  sum[m] = 0;
}

// Computes the outputs of "row units" [u0, u1): output rows for i8, byte rows for i2 (byte row
// j gives outputs j, j+R, j+2R, j+3R that are < N). Threads call it on disjoint unit ranges.
using LinearFn = void (*)(const Problem& p, int64_t u0, int64_t u1);

// Quantizes rows m in [m0, m1) of x (float32, [M, ldx]) for act="int8": q [M, ldq] (zeros in
// columns K..ldq), inv[m] = 127 / max(max|x_m|, 1e-5), sum[m] = sum_k q[m, k]; a row holding
// NaN or +-Inf is stored by store_nonfinite_row.
// Must match the reference bit for bit: one float32 multiply x * inv, round half to even.
using QuantizeFn = void (*)(const float* x, int64_t ldx, int64_t K, int64_t m0, int64_t m1,
                            int8_t* q, int64_t ldq, float* inv, int32_t* sum);

// The input RMSNorm of the rms_norm_linear ops (docs/DESIGN.md) for rows m in [m0, m1) of x
// (float32, [M, K], K >= 1): z = x * gamma (float32 products, [M, K]) for the quantizer, and
// factor[m] = rms_norm_factor of the row, by which the quantizer's inv[m] is then multiplied.
// A row holding NaN or +-Inf gets factor 1 (its z is not finite either: the row's inv is NaN).
void rms_norm_rows(const float* x, const float* gamma, int64_t K, float eps, int64_t m0,
                   int64_t m1, float* z, float* factor);

// i8_* and i2_* take ternary weights; q8_int8 takes any int8 weights in [-127, 127] and K up to
// kQ8ActMaxK. act="none" on q8 weights runs i8_none, which every set writes for any int8 weight.
struct KernelSet {
  const char* name;  // e.g. "portable", "avx2", "avx512_vnni", "neon_dotprod"
  QuantizeFn quantize;
  LinearFn i8_int8, i8_none, i2_int8, i2_none, q8_int8;
};

// Always available: plain C++ that compilers vectorize.
const KernelSet& portable_kernels();

// Runtime dispatcher (dispatch.cpp): every kernel set this build and this CPU can run, best
// first, and the chosen one. TERNARY_OPS_KERNEL=<name> forces a set (read once, at first use);
// naming one that cannot run here is an error, not a silent fallback.
int available_kernel_count();
const KernelSet& available_kernel(int i);
const KernelSet& selected_kernels();
// Overrides the selection for this process (nullptr name restores the default). Returns false
// when no available set has that name.
bool select_kernels(const char* name);
// The set whose i2_int8 serves M = 1 (batch-1 decode): the selected set, except under the
// automatic choice on CPUs where another available set was measured faster for it (x86:
// decode_i2_kernels in cpu/x86/sets.h). Every set computes the same bits.
const KernelSet& decode_i2_kernels();

}  // namespace ternary::cpu
