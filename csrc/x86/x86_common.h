// x86_common.h: small helpers shared by the x86 kernel TUs. Everything here has internal
// linkage (anonymous namespace): each TU is built with different ISA flags, and an inline
// function with external linkage could be merged by the linker into a copy that uses
// instructions the running CPU lacks.
#pragma once
#include <cstdint>
#include <cstring>

#include "../cpu/kernels.h"

namespace ternary::cpu::x86 {
namespace {

template <typename T>
inline T min_of(T a, T b) { return b < a ? b : a; }

// Scalar quantization of x[k0, K) for one row, exactly as the portable kernel (for tails).
// Returns the partial sum of the codes.
inline int32_t quantize_tail(const float* xr, int64_t k0, int64_t K, float s, int8_t* qr) {
  int32_t total = 0;
  for (int64_t k = k0; k < K; ++k) {
    const float v = __builtin_nearbyintf(xr[k] * s);
    const float lo = v < -128.0f ? -128.0f : v;
    const float c = 127.0f < lo ? 127.0f : lo;
    const int32_t ci = static_cast<int32_t>(c);
    qr[k] = static_cast<int8_t>(ci);
    total += ci;
  }
  return total;
}

// 127 / max(amax, eps), as the portable kernel computes it.
inline float quant_scale(float amax) { return kActQMax / (amax < kActEps ? kActEps : amax); }

// K is processed in blocks this long so int32 accumulators of scaled (4^r * code) products
// cannot overflow: 16 * 2 * 128 * 65536 < 2^31.
constexpr int64_t kKBlock = 65536;

// M = 1 kernels prefetch each weight stream this many bytes ahead: 13-15% faster than the
// hardware prefetchers alone (hot and cold, 2 threads, 4096x4096 i2), 512 best of 512-4096.
constexpr int64_t kPrefetchBytes = 512;
#define TERNARY_PREFETCH(p) _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0)

}  // namespace
}  // namespace ternary::cpu::x86
