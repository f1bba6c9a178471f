// cpu/x86/common.h: small helpers shared by the x86 kernel TUs (set_*.cpp). Everything here
// has internal linkage (anonymous namespace): each TU is built with different ISA flags, and an
// inline function with external linkage could be merged by the linker into a copy that uses
// instructions the running CPU lacks.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/kernels.h"

// Forced inlining for the kernels' helpers and step lambdas.
#define TERNARY_INLINE inline __attribute__((always_inline))
#define TERNARY_LAMBDA_INLINE __attribute__((always_inline))
// GCC 12 warns about its own _mm512_reduce_* intrinsics (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

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

// M = 1 kernels prefetch each weight stream this many bytes ahead, on top of the hardware
// prefetchers (why and how far: docs/perf-notes.md).
constexpr int64_t kPrefetchBytes = 512;
#define TERNARY_PREFETCH(p) _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0)

// Runs Block::run<RB, MB>(p, u, m) for MB = rem if 0 < rem <= MB, else nothing: the M tail.
template <class Block, int RB, int MB>
inline void run_m_tail(const Problem& p, int64_t u, int64_t m, int64_t rem) {
  if constexpr (MB > 0) {
    if (rem == MB) Block::template run<RB, MB>(p, u, m);
    else run_m_tail<Block, RB, MB - 1>(p, u, m, rem);
  }
}

// The tile walk every x86 kernel shares. Block is a struct with
// `template <int RB, int MB> static void run(const Problem&, int64_t u, int64_t m)` computing RB
// row units x MB activation rows. M = 1 (decode): tiles of RB1 units, then single units. M > 1:
// tiles of RBM units x MBMax activation rows (each weight tile stays in L1 while the activation
// rows pass over it), then the unit and row tails.
template <class Block, int RB1, int RBM, int MBMax>
inline void tile_units(const Problem& p, int64_t u0, int64_t u1) {
  int64_t u = u0;
  if (p.M == 1) {
    for (; u + RB1 <= u1; u += RB1) Block::template run<RB1, 1>(p, u, 0);
    for (; u < u1; ++u) Block::template run<1, 1>(p, u, 0);
    return;
  }
  auto rows = [&](int64_t uu, auto rb_tag) {
    constexpr int RB = decltype(rb_tag)::value;
    int64_t m = 0;
    for (; m + MBMax <= p.M; m += MBMax) Block::template run<RB, MBMax>(p, uu, m);
    run_m_tail<Block, RB, MBMax - 1>(p, uu, m, p.M - m);
  };
  for (; u + RBM <= u1; u += RBM) rows(u, std::integral_constant<int, RBM>());
  for (; u < u1; ++u) rows(u, std::integral_constant<int, 1>());
}

// Adapters from the kernels' block functions (weight pointer and, for i2, R passed in) to
// tile_units' Block interface.
#define TERNARY_X86_I2_BLOCK(Name, fn)                                                       \
  struct Name {                                                                              \
    template <int RB, int MB>                                                                \
    static void run(const Problem& p, int64_t j, int64_t m) {                                \
      fn<RB, MB>(p, static_cast<const uint8_t*>(p.weight), i2_packed_rows(p.N), j, m);       \
    }                                                                                        \
  }
#define TERNARY_X86_I8_BLOCK(Name, fn)                                                       \
  struct Name {                                                                              \
    template <int RB, int MB>                                                                \
    static void run(const Problem& p, int64_t n, int64_t m) {                                \
      fn<RB, MB>(p, static_cast<const int8_t*>(p.weight), n, m);                             \
    }                                                                                        \
  }

}  // namespace
}  // namespace ternary::cpu::x86
