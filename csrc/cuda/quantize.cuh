// quantize.cuh: act="int8" quantization of x by one thread block (quantize_x_block), shared by
// the per-row pre-pass (quantize.cu) and the persistent GEMV that quantizes x itself
// (gemv_persist.cu), so both give the same q. Internal to csrc/cuda.
#pragma once
#include <algorithm>
#include <type_traits>

#include "common.cuh"

namespace ternary::cuda {
namespace {

// Warps of a block that quantizes x: the pre-pass's block and, at most, the persistent GEMV's.
constexpr int kXBlockWarps = 16;

// Threads of a block that serves one row of K columns (the pre-passes): enough for about
// `groups` 4-column groups each, from min_warps to max_warps warps. A short row then does not
// leave most of a full block idle at its barriers, and more rows' blocks share an SM.
inline int row_block_threads(int64_t K, int64_t groups, int64_t min_warps, int64_t max_warps) {
  const int64_t per_warp = groups * 32;
  const int64_t warps = (act_padded_k(K) / 4 + per_warp - 1) / per_warp;
  return 32 * static_cast<int>(std::min(std::max(warps, min_warps), max_warps));
}

// Four consecutive elements of row xr from column k as floats, zeros past K. vec: K % 4 == 0
// and the row start is aligned to four elements, so one 8- or 16-byte load.
__device__ __forceinline__ void load_x4v(const float* p, float (&v)[4]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
// Four 2-byte elements (8 bytes in t) as floats.
__device__ __forceinline__ void unpack_x4(uint2 t, const __nv_bfloat16*, float (&v)[4]) {
  v[0] = __uint_as_float(t.x << 16); v[1] = __uint_as_float(t.x & 0xFFFF0000u);
  v[2] = __uint_as_float(t.y << 16); v[3] = __uint_as_float(t.y & 0xFFFF0000u);
}
__device__ __forceinline__ void unpack_x4(uint2 t, const __half*, float (&v)[4]) {
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&t.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&t.y));
  v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}
template <typename T>
__device__ __forceinline__ void load_x4v(const T* p, float (&v)[4]) {
  unpack_x4(*reinterpret_cast<const uint2*>(p), p, v);
}
// 16 bytes of x from the 16-byte aligned p: kGroupsPer16 groups of four elements.
template <typename T>
constexpr int kGroupsPer16 = 16 / (4 * static_cast<int>(sizeof(T)));
__device__ __forceinline__ void unpack_x16(uint4 t, const float*, float (&v)[1][4]) {
  v[0][0] = __uint_as_float(t.x); v[0][1] = __uint_as_float(t.y);
  v[0][2] = __uint_as_float(t.z); v[0][3] = __uint_as_float(t.w);
}
template <typename T>
__device__ __forceinline__ void unpack_x16(uint4 t, const T* p, float (&v)[2][4]) {
  unpack_x4(make_uint2(t.x, t.y), p, v[0]);
  unpack_x4(make_uint2(t.z, t.w), p, v[1]);
}

// Largest magnitude among the elements of x in the 16 bytes t, as bit patterns: a float's
// magnitude (sign bit cleared) orders as its bits, for every IEEE width. acc holds one maximum
// per element slot (4-byte x: one; 2-byte: two, in the halves). sm_90 does each max.u16x2 /
// max.u32 in one instruction; on earlier GPUs the intrinsics are emulated.
__device__ __forceinline__ uint32_t max_abs_bits16(uint32_t acc, uint4 t, const float*) {
  constexpr uint32_t m = 0x7FFFFFFFu;
  return __vimax3_u32(__vimax3_u32(acc, t.x & m, t.y & m), t.z & m, t.w & m);
}
template <typename T>
__device__ __forceinline__ uint32_t max_abs_bits16(uint32_t acc, uint4 t, const T*) {
  constexpr uint32_t m = 0x7FFF7FFFu;
  return __vimax3_u16x2(__vimax3_u16x2(acc, t.x & m, t.y & m), t.z & m, t.w & m);
}
// The magnitude max_abs_bits16 accumulated in acc as a float; false when it is infinite or NaN
// (an all-ones exponent), where it is not the maximum the quantization needs.
__device__ __forceinline__ bool abs_bits_value(uint32_t acc, const float*, float& v) {
  v = __uint_as_float(acc);
  return acc < 0x7F800000u;
}
__device__ __forceinline__ bool abs_bits_value(uint32_t acc, const __nv_bfloat16*, float& v) {
  const uint32_t h = max(acc >> 16, acc & 0xFFFFu);
  v = __uint_as_float(h << 16);
  return h < 0x7F80u;
}
__device__ __forceinline__ bool abs_bits_value(uint32_t acc, const __half*, float& v) {
  const uint32_t h = max(acc >> 16, acc & 0xFFFFu);
  v = __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
  return h < 0x7C00u;
}
template <typename T>
__device__ __forceinline__ void load_x4(const T* xr, int64_t k, int64_t K, bool vec, float (&v)[4]) {
  if (vec && k + 4 <= K) {
    load_x4v(xr + k, v);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = k + i < K ? to_float(xr[k + i]) : 0.0f;
  }
}

// q = clamp(rint(x * s), -128, 127) (DESIGN.md) as the low byte of the result, for s =
// 127 / max(amax, eps) with |x| <= amax: adding 1.5 * 2^23 rounds x * s to an integer, half to
// even, like rintf. |x * s| <= 127 * (1 + 2^-24) rounds to at most 127 in magnitude, so only
// NaN (x NaN, or x infinite and s = 0) needs the clamp (kNaN): fmaxf sends it to -128 (the
// reference gives NaN no defined q). Without it NaN gives -1, so kNaN = false is only for x known
// to be finite. No F2I, no upper clamp.
template <bool kNaN>
__device__ __forceinline__ uint32_t quant_shifted(float x, float s) {
  constexpr float kShift = 12582912.0f;
  const float t = __fadd_rn(__fmul_rn(x, s), kShift);
  return __float_as_uint(kNaN ? fmaxf(t, kShift - 128.0f) : t);
}
template <bool kNaN = true>
__device__ __forceinline__ uint32_t quant_pack4(const float (&v)[4], float s) {
  const uint32_t lo =
      __byte_perm(quant_shifted<kNaN>(v[0], s), quant_shifted<kNaN>(v[1], s), 0x0040);
  const uint32_t hi =
      __byte_perm(quant_shifted<kNaN>(v[2], s), quant_shifted<kNaN>(v[3], s), 0x0040);
  return __byte_perm(lo, hi, 0x5410);
}

// Groups of 4 columns per thread that hold x [*, K] in registers for a block of `threads`, with
// g groups per 16-byte load: the fewest of 2, 4, 8, 16 that cover x, or 0 when more than `most`
// would be needed. Host and device use this one function, so a kernel instantiated for one
// count is launched only where that count covers x.
TERNARY_HD constexpr int x_regs_groups(int64_t K, int64_t threads, int g, int most) {
  const int64_t per_thread = (act_padded_k(K) / 4 + g * threads - 1) / (g * threads) * g;
  for (int nr = 2; nr <= most; nr *= 2)
    if (per_thread <= nr) return nr;
  return 0;
}
// The x path of a kernel (XNR): one register count (> 0), two passes over x, or any of them
// picked at run time (slower: every path's code sits in the kernel, and this code runs once per
// call, so its size is paid in instruction fetches).
constexpr int kXTwoPasses = -1, kXAnyPath = 0;

// Calls f(std::integral_constant<int, XNR>) with the x path for x_regs_groups' answer nr (most
// 16 / MT): that register count, or kXTwoPasses when x does not fit (0). The one mapping used
// by the launcher (which kernel) and by a kernel that picks its path at run time.
#pragma nv_exec_check_disable
template <int MT, typename F>
TERNARY_HD void with_x_path(int nr, F&& f) {
  switch (nr) {
    case 2: f(std::integral_constant<int, 2>()); return;
    case 4: f(std::integral_constant<int, 4>()); return;
    case 8: f(std::integral_constant<int, 8>()); return;
    case 16:
      if constexpr (MT == 1) {
        f(std::integral_constant<int, 16>());
        return;
      }
      break;
  }
  f(std::integral_constant<int, kXTwoPasses>());
}

// Points of quantize_x_block reported to its hook, in order: x is in registers (this thread's
// part: its amax is taken); inv is known (block reduction done); and, first from registers,
// last in two passes, x's loads are out.
enum XPhase : int { kXLoadsIssued, kXLanded, kXScaled };

// x [M, K] (M <= MT) quantized by the whole block into q ([M][act_padded_k(K)], zeros past K: shared
// memory in the fused GEMV, global in the pre-pass); every thread gets inv and qsum of each row.
// Ends with a block barrier. xvec: K % 4 == 0 and rows 4-element aligned; xregs: every row
// 16-byte aligned, quantize from registers when x fits (kXRegs groups of 4 per thread); else
// two passes over x. x_hook(phase) runs at each XPhase point: the GEMV requests its first
// weights there.
// NORM (the rms_norm_linear ops, docs/DESIGN.md): q and qsum are those of z = x * norm_weight
// (norm_weight [K] in x's dtype, aligned as x's rows), and inv is z's multiplied by the row's
// rms_norm_factor, from the exact sum of squares of x in kNormQMax steps: what the pre-pass
// in rms_norm.cu gives, bit for bit.
template <int MT, int XNR, typename T, bool NORM = false, typename F>
__device__ void quantize_x_block(const T* __restrict__ X, int M, int64_t K, bool xvec, bool xregs,
                                 unsigned char* smem_q, float (&inv)[MT], int32_t (&qsum)[MT],
                                 F&& x_hook, const T* __restrict__ norm_weight = nullptr,
                                 float norm_eps = 0.0f) {
  __shared__ float red_f[kXBlockWarps * MT];
  __shared__ int32_t red_i[kXBlockWarps * MT];
  // NORM: per-warp max |x| and sums of squares.
  __shared__ float red_xmax[NORM ? kXBlockWarps * MT : 1];
  __shared__ unsigned long long red_ss[NORM ? kXBlockWarps * MT : 1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  const int64_t ldq = act_padded_k(K);
  const int64_t qgroups = ldq / 4;  // groups of 4 columns, zero past K
  auto* qs = reinterpret_cast<uint32_t*>(smem_q);
  float amax[MT];  // NORM: of z
  int32_t part_sum[MT];
  // NORM: max |x| (as bits), then a = max(max|x|, kNormAmaxMin) and kNormQMax / a; the
  // squares' sum; whether z is finite.
  float xmax[MT], norm_a[MT], norm_unit[MT];
  unsigned long long sq_sum[MT];
  bool z_finite[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    amax[m] = 0.0f;
    part_sum[m] = 0;
    xmax[m] = 0.0f;
    sq_sum[m] = 0;
  }
  auto add_amax = [](float& a, const float (&v)[4]) {
    a = fmaxf(fmaxf(fmaxf(a, fabsf(v[0])), fmaxf(fabsf(v[1]), fabsf(v[2]))), fabsf(v[3]));
  };
  // The same as a maximum of |x|'s bit patterns (act_row_finite): a NaN stays in it, as do
  // infinities, where fmaxf drops the NaN.
  auto add_amax_bits = [](float& a, const float (&v)[4]) {
    const uint32_t m = kF32AbsMask;
    const uint32_t b = max(max(__float_as_uint(v[0]) & m, __float_as_uint(v[1]) & m),
                           max(__float_as_uint(v[2]) & m, __float_as_uint(v[3]) & m));
    a = __uint_as_float(max(__float_as_uint(a), b));
  };
  // Block-wide amax of each row -> inv; with check_rows, inv = NaN for a row whose amax is Inf
  // or NaN (its output row is NaN, docs/DESIGN.md). Returns whether any thread passed
  // nonfinite (x holds an infinity or NaN), by the same barrier.
  auto reduce_amax = [&](bool nonfinite, auto check_rows) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float a = warp_max_nonneg(amax[m]);  // amax: max of |x| (fmaxf drops NaN)
      if (lane == 0) red_f[warp * MT + m] = a;
    }
    const bool any_nonfinite = __syncthreads_or(nonfinite);
    // Every warp combines the per-warp values by one load and one warp reduction, not a loop of
    // dependent shared-memory loads (this runs once per call, on the critical path).
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float a = warp_max_nonneg(lane < nwarps ? red_f[lane * MT + m] : 0.0f);
      inv[m] = __fdiv_rn(kActQMax, fmaxf(a, kActEps));
      if constexpr (decltype(check_rows)::value)
        if (!act_row_finite(__float_as_uint(a))) inv[m] = __uint_as_float(0x7FC00000u);
    }
    return any_nonfinite;
  };
  auto store_q = [&](int m, int64_t g, const float (&v)[4]) {
    const uint32_t wq = quant_pack4(v, inv[m]);
    qs[m * qgroups + g] = wq;
    part_sum[m] = __dp4a(int(wq), 0x01010101, part_sum[m]);
  };
  // NORM: z = x * norm_weight for four elements (the reference's float32 product).
  auto norm_z = [](const float (&v)[4], const float (&w)[4], float (&z)[4]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) z[e] = __fmul_rn(v[e], w[e]);
  };
  // NORM: max |x| and max |z| of four elements, as bit patterns (NaN and +-Inf above every
  // finite value).
  auto add_norm_amax = [&](int m, const float (&v)[4], const float (&z)[4]) {
    add_amax_bits(xmax[m], v);
    add_amax_bits(amax[m], z);
  };
  // NORM: the squares of four elements of x in kNormQMax steps of a (|p| <= 32767).
  auto add_squares = [&](int m, const float (&v)[4]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int32_t pk = __float2int_rn(__fmul_rn(v[e], norm_unit[m]));
      sq_sum[m] += static_cast<unsigned long long>(pk * pk);
    }
  };
  // NORM: block-wide max |z| -> inv (NaN for a row whose z holds NaN or +-Inf: its output row is
  // NaN) and max |x| -> the step of the squares.
  auto reduce_norm_amax = [&] {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float az = warp_max_nonneg(amax[m]), ax = warp_max_nonneg(xmax[m]);
      if (lane == 0) {
        red_f[warp * MT + m] = az;
        red_xmax[warp * MT + m] = ax;
      }
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float az = warp_max_nonneg(lane < nwarps ? red_f[lane * MT + m] : 0.0f);
      const float ax = warp_max_nonneg(lane < nwarps ? red_xmax[lane * MT + m] : 0.0f);
      z_finite[m] = act_row_finite(__float_as_uint(az));
      inv[m] = z_finite[m] ? __fdiv_rn(kActQMax, fmaxf(az, kActEps))
                           : __uint_as_float(0x7FC00000u);
      norm_a[m] = fmaxf(ax, kNormAmaxMin);
      norm_unit[m] = __fdiv_rn(kNormQMax, norm_a[m]);
    }
  };
  // xregs and at most kXRegs groups per thread: every load is issued at once and x is
  // quantized from registers: one L2 round trip. Otherwise two passes over x. One 16-byte load
  // per G = kGroupsPer16<T> groups (bf16 / half: two; 8-byte loads, twice as many, are
  // slower); thread t holds groups G * (t + j * blockDim.x) + h.
  // Groups past K (or rows past M) are not loaded, only zeroed: loading a dummy in-range
  // address instead sent up to 15 loads per thread to x's first line, from every block at once,
  // and that one L2 line became the call's bottleneck.
  // NR groups per thread, the fewest that hold x: this code runs once per call, so its size is
  // paid in instruction fetches.
  constexpr int G = kGroupsPer16<T>;
  auto group_of = [&](int i) { return G * (threadIdx.x + int64_t(i / G) * blockDim.x) + i % G; };
  auto from_regs = [&](auto nr) {
    constexpr int NR = decltype(nr)::value;
    const int64_t groups = K / 4;  // xregs: K % (4 * G) == 0
    uint4 xr[MT][NR / G];  // x as loaded: converted to float only to be quantized
    [[maybe_unused]] uint4 gr[NORM ? NR / G : 1];  // NORM: norm_weight at the same columns
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int i = 0; i < NR; i += G) {
        const int64_t g = group_of(i);
        xr[m][i / G] = m < M && g < groups ? *reinterpret_cast<const uint4*>(X + m * K + 4 * g)
                                           : make_uint4(0, 0, 0, 0);
      }
    if constexpr (NORM) {
#pragma unroll
      for (int i = 0; i < NR; i += G) {
        const int64_t g = group_of(i);
        gr[i / G] = g < groups ? *reinterpret_cast<const uint4*>(norm_weight + 4 * g)
                               : make_uint4(0, 0, 0, 0);
      }
    }
    x_hook(kXLoadsIssued);
    if constexpr (NORM) {
      // z's maximum needs z in floats; x's is taken from the same floats.
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < NR / G; ++j) {
          float v[G][4], w[G][4];
          unpack_x16(xr[m][j], X, v);
          unpack_x16(gr[j], X, w);
#pragma unroll
          for (int h = 0; h < G; ++h) {
            float z[4];
            norm_z(v[h], w[h], z);
            add_norm_amax(m, v[h], z);
          }
        }
      x_hook(kXLanded);
      reduce_norm_amax();
      x_hook(kXScaled);
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int i = 0; i < NR; i += G) {
          const int64_t g = group_of(i);
          if (m < M && g < qgroups) {
            float v[G][4], w[G][4];
            unpack_x16(xr[m][i / G], X, v);
            unpack_x16(gr[i / G], X, w);
            uint32_t wq[G];
#pragma unroll
            for (int h = 0; h < G; ++h) {
              float z[4];
              norm_z(v[h], w[h], z);
              wq[h] = quant_pack4(z, inv[m]);  // clamps the NaN of a non-finite row
              part_sum[m] = __dp4a(int(wq[h]), 0x01010101, part_sum[m]);
              add_squares(m, v[h]);
            }
            if constexpr (G == 2) {
              *reinterpret_cast<uint2*>(qs + m * qgroups + g) = make_uint2(wq[0], wq[1]);
            } else {
              qs[m * qgroups + g] = wq[0];
            }
          }
        }
      return;
    }
    // amax from the bit patterns (no conversion; one instruction per 2-6 elements on sm_90).
    // Where this thread's x holds an infinity or NaN, its amax is taken again from floats and
    // the block takes the NaN branch below, which also makes such rows' inv NaN. Finite x pays
    // for none of it: this path's code is what docs/perf-notes.md measured.
    bool nonfinite = false;
    uint32_t bad_rows = 0;  // bit m: this thread's part of row m holds an infinity or NaN
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      uint32_t bits = 0;
#pragma unroll
      for (int j = 0; j < NR / G; ++j) bits = max_abs_bits16(bits, xr[m][j], X);
      if (!abs_bits_value(bits, X, amax[m])) {
        nonfinite = true;
        bad_rows |= 1u << m;
        amax[m] = 0.0f;
#pragma unroll
        for (int j = 0; j < NR / G; ++j) {
          float v[G][4];
          unpack_x16(xr[m][j], X, v);
#pragma unroll
          for (int h = 0; h < G; ++h) add_amax(amax[m], v[h]);
        }
      }
    }
    x_hook(kXLanded);
    const bool clamp_nan = reduce_amax(nonfinite, std::false_type());
    x_hook(kXScaled);
    // The G groups of one load are adjacent in q: one store of 4 * G bytes (G = 2: a warp's
    // 4-byte stores would hit every other word, two per bank). g is a multiple of G, and so are
    // qgroups and the row starts (act_padded_k: whole 16 bytes), so a run is wholly inside or past q.
    auto write_q = [&](auto nan_clamp) {
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int i = 0; i < NR; i += G) {
          const int64_t g = group_of(i);
          if (m < M && g < qgroups) {
            float v[G][4];
            unpack_x16(xr[m][i / G], X, v);
            uint32_t wq[G];
#pragma unroll
            for (int h = 0; h < G; ++h) {
              wq[h] = quant_pack4<decltype(nan_clamp)::value>(v[h], inv[m]);
              part_sum[m] = __dp4a(int(wq[h]), 0x01010101, part_sum[m]);
            }
            if constexpr (G == 2) {
              *reinterpret_cast<uint2*>(qs + m * qgroups + g) = make_uint2(wq[0], wq[1]);
            } else {
              qs[m * qgroups + g] = wq[0];
            }
          }
        }
    };
    if (clamp_nan) {
      // A row holding NaN or +-Inf gets inv = NaN: its output row is NaN (docs/DESIGN.md).
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (__syncthreads_or((bad_rows >> m) & 1u)) inv[m] = __uint_as_float(0x7FC00000u);
      write_q(std::true_type());
    } else {
      write_q(std::false_type());
    }
  };
  // Two passes over x, each calling f(m, g, four values of group g of row m).
  auto two_passes = [&] {
    auto each_x4 = [&](auto&& f) {
#pragma unroll 4
      for (int64_t g = threadIdx.x; g < qgroups; g += blockDim.x)
#pragma unroll
        for (int m = 0; m < MT; ++m)
          if (m < M) {
            float v[4];
            load_x4(X + m * K, 4 * g, K, xvec, v);
            f(m, g, v);
          }
    };
    if constexpr (NORM) {
      auto with_z = [&](auto&& f) {
        each_x4([&](int m, int64_t g, const float (&v)[4]) {
          float w[4], z[4];
          load_x4(norm_weight, 4 * g, K, xvec, w);
          norm_z(v, w, z);
          f(m, g, v, z);
        });
      };
      with_z([&](int m, int64_t, const float (&v)[4], const float (&z)[4]) {
        add_norm_amax(m, v, z);
      });
      x_hook(kXLanded);
      reduce_norm_amax();
      x_hook(kXScaled);
      x_hook(kXLoadsIssued);
      with_z([&](int m, int64_t g, const float (&v)[4], const float (&z)[4]) {
        store_q(m, g, z);
        add_squares(m, v);
      });
      return;
    }
    each_x4([&](int m, int64_t, const float (&v)[4]) { add_amax_bits(amax[m], v); });
    x_hook(kXLanded);
    reduce_amax(false, std::true_type());  // store_q clamps NaN whatever x holds
    x_hook(kXScaled);
    x_hook(kXLoadsIssued);  // the second pass re-reads x from L1
    each_x4([&](int m, int64_t g, const float (&v)[4]) { store_q(m, g, v); });
  };
  auto run = [&](auto path) {
    if constexpr (decltype(path)::value > 0) {
      from_regs(path);
    } else {
      two_passes();
    }
  };
  if constexpr (XNR != kXAnyPath) {
    run(std::integral_constant<int, XNR>());
  } else {
    constexpr int kXRegs = 16 / MT;  // most groups per thread held in registers
    with_x_path<MT>(xregs ? x_regs_groups(K, blockDim.x, G, kXRegs) : 0, run);
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const int32_t t = warp_sum(part_sum[m]);
    if (lane == 0) red_i[warp * MT + m] = t;
    if constexpr (NORM) {
      const unsigned long long s = warp_sum_u64(sq_sum[m]);
      if (lane == 0) red_ss[warp * MT + m] = s;
    }
  }
  __syncthreads();  // q and the partial sums are complete
#pragma unroll
  for (int m = 0; m < MT; ++m) qsum[m] = warp_sum(lane < nwarps ? red_i[lane * MT + m] : 0);
  if constexpr (NORM) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const unsigned long long s = warp_sum_u64(lane < nwarps ? red_ss[lane * MT + m] : 0ull);
      if (z_finite[m]) inv[m] = __fmul_rn(inv[m], rms_norm_factor(s, norm_a[m], K, norm_eps));
    }
  }
}

// How quantize_x_block may read x [*, K] at p.x (x_elem-byte elements), and p.norm_weight where
// set: xvec, K % 4 == 0 and rows 4-element aligned; xregs (where `regs` allows it), rows 16-byte
// aligned: from registers where x fits.
struct XAccess {
  bool vec = false, regs = false;
};
inline XAccess x_access(const Linear& p, int x_elem, bool regs) {
  // Both pointers' low bits: aligned together or not at all (a null norm_weight adds none).
  const auto xp = reinterpret_cast<uintptr_t>(p.x) | reinterpret_cast<uintptr_t>(p.norm_weight);
  return {p.K % 4 == 0 && xp % (4 * x_elem) == 0,
          regs && p.K % (16 / x_elem) == 0 && xp % 16 == 0};
}

}  // namespace
}  // namespace ternary::cuda
