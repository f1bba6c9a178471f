// ternary_linear.metal: ternary linear kernels for Apple GPUs (the MPS backend).
//
//   y[m, n] = s[n] * sum_k T[n, k] * a[m, k]  (+ bias[n])      (semantics: docs/DESIGN.md)
//
// Two kernels per (weight format, act mode, dtype):
//   ternary_mv_*  M == 1 (decode). Memory-bound: every weight byte is read exactly once, 16 bytes
//                 per lane per step. One simdgroup owns a few output rows (an i2 byte row feeds
//                 4 of them); the activation row is staged once per threadgroup (quantized to
//                 int8 for act="int8"), so the K loop has no barrier; simd_sum reduces.
//   ternary_mm_*  M > 1 (prefill). Tiled: BM x BK activations and BN x BK dequantized weights in
//                 threadgroup memory, a TM x TN register block per thread.
// act="int8" dots are exact: int arithmetic in the matvec; in the matmul, products of
// integers <= 128 summed in float over one BK chunk (|sum| <= 4096, exact) and flushed to int.
//
// The weight format and the act constants (kI2*, i2_*, kAct*) come from csrc/ternary_format.h,
// included as in C++: tools/metal_source.py inlines it into the embedded source, which the
// Metal compiler gets with no include path. Geometry constants (TERNARY_*) come from
// csrc/metal/ternary_metal_config.h as preprocessor macros. This file compiles both as Metal
// and, for tests, as C++ against tests/metal_emu/metal_emu.h: keep to that subset (threadgroup
// memory only through TERNARY_SMEM_PARAM / TERNARY_SMEM_STORAGE below, never a threadgroup
// variable of its own).
#include <metal_stdlib>
using namespace metal;

#include "ternary_format.h"

#ifndef TERNARY_MV_SIMDGROUPS
#error "compile with the TERNARY_* macros of csrc/metal/ternary_metal_config.h"
#endif

// The threadgroup-memory argument's attribute. Spelled through a macro because the test
// emulation maps the `threadgroup` address space to nothing, after which [[threadgroup(0)]]
// would no longer parse; in Metal this is exactly [[threadgroup(0)]].
#ifdef METAL_EMU
#define TERNARY_SMEM_ARG
#else
#define TERNARY_SMEM_ARG [[threadgroup(0)]]
#endif

// Where a kernel's threadgroup memory `smem` comes from. By default it is the threadgroup(0)
// argument, whose length the native glue sets per dispatch (plan_launch's smem). Built with
// TERNARY_STATIC_SMEM defined (ternary_ops/mps_shader.py: torch.mps.compile_shader binds
// buffers and bytes but sets no threadgroup memory length), the kernels take no such argument
// and declare their storage themselves, under the same names: the matmul exactly
// TERNARY_MM_SMEM_BYTES, the matvec TERNARY_MV_STATIC_SMEM, which that path's launch plan
// takes as the device limit (longer rows run the matmul). The emulator hands every threadgroup
// one shared, poisoned and fenced block of that size instead of a per-thread local.
#ifdef TERNARY_STATIC_SMEM
#define TERNARY_SMEM_PARAM
#ifdef METAL_EMU
#define TERNARY_SMEM_STORAGE(bytes) threadgroup uchar* smem = metal_emu::threadgroup_static(bytes)
#else
#define TERNARY_SMEM_STORAGE(bytes)                           \
  threadgroup float4 ternary_smem_storage[((bytes) + 15) / 16]; \
  threadgroup uchar* smem = (threadgroup uchar*)ternary_smem_storage
#endif
#else
#define TERNARY_SMEM_PARAM threadgroup uchar* smem TERNARY_SMEM_ARG,
#define TERNARY_SMEM_STORAGE(bytes) (void)0
#endif

enum { FMT_I8 = 0, FMT_I2 = 1 };
enum { ACT_INT8 = 0, ACT_NONE = 1 };

// Mirrors ternary::metal::Params (ternary_metal_config.h).
struct LinearParams {
  uint M, N, K;
  uint units;         // i8: N rows; i2: R = i2_packed_rows(N) byte rows
  uint scale_stride;  // 0: one scale; 1: one per output row
  uint scale_dtype;   // TERNARY_DT_*
  uint has_bias;
  uint bias_dtype;    // TERNARY_DT_*
  uint w_aligned;     // 1: weight rows may be read 16 bytes at a time
};

// Element i of a float32 / float16 / bfloat16 vector (scale, bias) of any of those dtypes, so
// the glue never converts them. bfloat16 is the high half of a float32: no Metal 3.1 needed.
inline float load_any(device const uchar* v, uint i, uint dtype) {
  if (dtype == TERNARY_DT_F32) return ((device const float*)v)[i];
  if (dtype == TERNARY_DT_F16) return float(((device const half*)v)[i]);
  return as_type<float>(uint(((device const ushort*)v)[i]) << 16);
}

// y = v * s[n] (+ bias[n]); for act="int8" v is already dot / inv (the order of docs/DESIGN.md).
inline float finish(float v, uint n, device const uchar* scale, device const uchar* bias,
                    constant LinearParams& p) {
  v = v * load_any(scale, n * p.scale_stride, p.scale_dtype);
  if (p.has_bias != 0) v = v + load_any(bias, n, p.bias_dtype);
  return v;
}

// 16 weight bytes of one row: one uint4 load when rows are 16-byte aligned, else byte loads
// (odd K, or a weight tensor with an odd storage offset).
inline uint4 load16(device const uchar* src, bool aligned) {
  if (aligned) return *((device const uint4*)src);
  uint4 v;
  for (uint i = 0; i < 4; ++i)
    v[i] = uint(src[4 * i]) | (uint(src[4 * i + 1]) << 8) | (uint(src[4 * i + 2]) << 16) |
           (uint(src[4 * i + 3]) << 24);
  return v;
}

// Four i2 weights (-1, 0, +1) of one bit pair from four packed bytes: code - kI2CodeZero, as
// ternary::i2_decode does for one byte.
inline char4 i2_weights(uint packed, uint shift) {
  return as_type<char4>((packed >> shift) & ternary::kI2CodeMaskX4) -
         char4(char(ternary::kI2CodeZero));
}

// acc += dot(w, a) over four lanes: exact int for act="int8", float for act="none".
inline void mac(thread int& acc, char4 w, char4 q) {
  const int4 t = int4(w) * int4(q);
  acc += t.x + t.y + t.z + t.w;
}
inline void mac(thread float& acc, char4 w, float4 a) { acc += dot(float4(w), a); }

// How the matvec reads the staged activation row: int8 codes or x's own dtype.
template <int ACT, typename T>
struct Staged;
template <typename T>
struct Staged<ACT_INT8, T> {
  typedef int acc_t;
  typedef char4 vec_t;
  static vec_t get4(threadgroup const uchar* s, uint i) { return ((threadgroup const char4*)s)[i]; }
  static acc_t get1(threadgroup const uchar* s, uint k) { return int(((threadgroup const char*)s)[k]); }
};
template <typename T>
struct Staged<ACT_NONE, T> {
  typedef float acc_t;
  typedef float4 vec_t;
  static vec_t get4(threadgroup const uchar* s, uint i) {
    return float4(((threadgroup const vec<T, 4>*)s)[i]);
  }
  static acc_t get1(threadgroup const uchar* s, uint k) { return float(((threadgroup const T*)s)[k]); }
};

// act="int8" (docs/DESIGN.md). The amax pass takes the maximum of |x|'s bit pattern, which
// finds rows holding NaN or +-Inf (ternary::act_row_finite); such a row gets inv = NaN, codes 0,
// and so an all-NaN output row (dot / inv), as in the reference.
inline uint abs_bits(float v) { return as_type<uint>(v) & ternary::kF32AbsMask; }
inline float act_inv(uint amax_bits) {
  return ternary::act_row_finite(amax_bits)
             ? ternary::kActQMax / max(as_type<float>(amax_bits), ternary::kActEps)
             : NAN;
}
// One activation's code: round half to even, clamp to int8; 0 in a non-finite row.
inline float quantize(float v, float inv) {
  return isnan(inv) ? 0.0f : clamp(rint(v * inv), -128.0f, 127.0f);
}

// ---------------------------------------------------------------------------------------------
// matvec, M == 1. Grid: ceil(units / (SIMDGROUPS * ROWS)) threadgroups of SIMDGROUPS * 32.
// smem: TERNARY_MV_HEADER bytes of reduction scratch, then the staged row.
template <int FMT, int ACT, typename T>
kernel void ternary_mv(device const T* x [[buffer(0)]],
                       device const uchar* w [[buffer(1)]],
                       device const uchar* scale [[buffer(2)]],
                       device const uchar* bias [[buffer(3)]],
                       device T* y [[buffer(4)]],
                       constant LinearParams& p [[buffer(5)]],
                       TERNARY_SMEM_PARAM
                       uint3 group [[threadgroup_position_in_grid]],
                       uint tid [[thread_index_in_threadgroup]],
                       uint sg [[simdgroup_index_in_threadgroup]],
                       uint lane [[thread_index_in_simdgroup]]) {
  TERNARY_SMEM_STORAGE(TERNARY_MV_STATIC_SMEM);
  typedef Staged<ACT, T> S;
  typedef typename S::acc_t acc_t;
  const uint NSG = TERNARY_MV_SIMDGROUPS;
  const uint NT = NSG * TERNARY_SIMD_WIDTH;
  const uint ROWS = FMT == FMT_I2 ? TERNARY_MV_I2_ROWS : TERNARY_MV_I8_ROWS;
  const uint OUTS = FMT == FMT_I2 ? ternary::kI2RowsPerByte : 1;  // outputs per row unit
  const uint CH = TERNARY_MV_CHUNK;
  const uint K = p.K;
  threadgroup float* red = (threadgroup float*)smem;
  threadgroup uchar* stage = smem + TERNARY_MV_HEADER;

  // 1. Stage the activation row, once per threadgroup. The only barriers of this kernel.
  float inv = 1.0f;
  if (ACT == ACT_INT8) {
    threadgroup uint* red_bits = (threadgroup uint*)red;
    uint amax = 0;
    for (uint k = tid; k < K; k += NT) amax = max(amax, abs_bits(float(x[k])));
    amax = simd_max(amax);
    if (lane == 0) red_bits[sg] = amax;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    amax = red_bits[0];
    for (uint s = 1; s < NSG; ++s) amax = max(amax, red_bits[s]);
    inv = act_inv(amax);
    threadgroup char* q = (threadgroup char*)stage;
    for (uint k = tid; k < K; k += NT) q[k] = char(int(quantize(float(x[k]), inv)));
  } else {
    threadgroup T* xs = (threadgroup T*)stage;
    for (uint k = tid; k < K; k += NT) xs[k] = x[k];
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);

  // 2. This simdgroup's row units. Rows past the end are clamped for loading, never stored.
  const uint u0 = (group.x * NSG + sg) * ROWS;
  if (u0 >= p.units) return;
  ulong row[ROWS];
  acc_t acc[ROWS][OUTS];
  for (uint r = 0; r < ROWS; ++r) {
    row[r] = ulong(min(u0 + r, p.units - 1)) * K;
    for (uint o = 0; o < OUTS; ++o) acc[r][o] = acc_t(0);
  }

  // 3. K loop: lane handles chunks lane, lane + 32, ...; a simdgroup streams 512 contiguous
  //    bytes per row per step. The activations of a chunk serve all ROWS * OUTS outputs.
  const bool aligned = p.w_aligned != 0;
  const uint nchunks = K / CH;
  for (uint c = lane; c < nchunks; c += TERNARY_SIMD_WIDTH) {
    typename S::vec_t a[4];
    for (uint i = 0; i < 4; ++i) a[i] = S::get4(stage, c * 4 + i);
    for (uint r = 0; r < ROWS; ++r) {
      const uint4 wv = load16(w + row[r] + c * CH, aligned);
      for (uint i = 0; i < 4; ++i) {
        if (FMT == FMT_I8) {
          mac(acc[r][0], as_type<char4>(wv[i]), a[i]);
        } else {
          for (uint o = 0; o < OUTS; ++o)
            mac(acc[r][o], i2_weights(wv[i], o * ternary::kI2BitsPerCode), a[i]);
        }
      }
    }
  }
  // Tail: the last K % 16 columns, one per lane.
  const uint kt = nchunks * CH + lane;
  if (kt < K) {
    const acc_t a = S::get1(stage, kt);
    for (uint r = 0; r < ROWS; ++r) {
      const uint b = w[row[r] + kt];
      for (uint o = 0; o < OUTS; ++o) {
        const int wk = FMT == FMT_I8 ? int(as_type<char>(uchar(b)))
                                     : ternary::i2_decode(uchar(b), o * ternary::kI2BitsPerCode);
        acc[r][o] += acc_t(wk) * a;
      }
    }
  }

  // 4. Reduce over the simdgroup; lane r * OUTS + o stores output (r, o).
  for (uint r = 0; r < ROWS; ++r) {
    for (uint o = 0; o < OUTS; ++o) {
      const acc_t total = simd_sum(acc[r][o]);
      const uint u = u0 + r;
      const uint n = u + o * p.units;  // i2: byte row u, bit pair o -> row u + o * R
      if (lane == r * OUTS + o && u < p.units && n < p.N) {
        const float v = ACT == ACT_INT8 ? float(total) / inv : float(total);
        y[n] = T(finish(v, n, scale, bias, p));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// matmul, any M (used for M > 1). Grid: (ceil(units / units_per_tile), ceil(M / BM)),
// threadgroups of (BM / TM) * (BN / TN) threads. An i2 tile is BN / 4 byte rows; its local
// output index is o * (BN / 4) + j (bit pair o, byte row j), so a thread's TN outputs share o.
template <int FMT, int ACT, typename T>
kernel void ternary_mm(device const T* x [[buffer(0)]],
                       device const uchar* w [[buffer(1)]],
                       device const uchar* scale [[buffer(2)]],
                       device const uchar* bias [[buffer(3)]],
                       device T* y [[buffer(4)]],
                       constant LinearParams& p [[buffer(5)]],
                       TERNARY_SMEM_PARAM
                       uint3 group [[threadgroup_position_in_grid]],
                       uint tid [[thread_index_in_threadgroup]],
                       uint sg [[simdgroup_index_in_threadgroup]],
                       uint lane [[thread_index_in_simdgroup]]) {
  TERNARY_SMEM_STORAGE(TERNARY_MM_SMEM_BYTES);
  const uint BM = TERNARY_MM_BM, BN = TERNARY_MM_BN, BK = TERNARY_MM_BK;
  const uint TM = TERNARY_MM_TM, TN = TERNARY_MM_TN;
  const uint NT = (BM / TM) * (BN / TN);
  const uint JT = BN / ternary::kI2RowsPerByte;  // i2 byte rows per tile
  const uint M = p.M, N = p.N, K = p.K;
  threadgroup float* xs = (threadgroup float*)smem;  // [BK][BM], k-major
  threadgroup float* ws = xs + BK * BM;               // [BK][BN], k-major
  threadgroup float* inv = ws + BK * BN;              // [BM]
  const uint m0 = group.y * BM;
  const uint u0 = group.x * (FMT == FMT_I2 ? JT : BN);

  if (ACT == ACT_INT8) {  // per-row scale, one simdgroup per row
    for (uint r = sg; r < BM; r += NT / TERNARY_SIMD_WIDTH) {
      const uint m = m0 + r;
      uint amax = 0;
      if (m < M)
        for (uint k = lane; k < K; k += TERNARY_SIMD_WIDTH)
          amax = max(amax, abs_bits(float(x[ulong(m) * K + k])));
      amax = simd_max(amax);
      if (lane == 0) inv[r] = act_inv(amax);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  const uint tx = tid % (BN / TN), ty = tid / (BN / TN);
  float acc[TM][TN];
  int iacc[TM][TN];
  for (uint i = 0; i < TM; ++i)
    for (uint j = 0; j < TN; ++j) {
      acc[i][j] = 0.0f;
      iacc[i][j] = 0;
    }

  for (uint k0 = 0; k0 < K; k0 += BK) {
    for (uint e = tid; e < BM * BK; e += NT) {  // activations, coalesced along k
      const uint r = e / BK, kk = e % BK, m = m0 + r, k = k0 + kk;
      float v = 0.0f;
      if (m < M && k < K) {
        v = float(x[ulong(m) * K + k]);
        if (ACT == ACT_INT8) v = quantize(v, inv[r]);
      }
      xs[kk * BM + r] = v;
    }
    if (FMT == FMT_I8) {
      for (uint e = tid; e < BN * BK; e += NT) {
        const uint r = e / BK, kk = e % BK, n = u0 + r, k = k0 + kk;
        ws[kk * BN + r] = n < N && k < K ? float(as_type<char>(w[ulong(n) * K + k])) : 0.0f;
      }
    } else {
      for (uint e = tid; e < JT * BK; e += NT) {  // one byte -> four weights
        const uint j = e / BK, kk = e % BK, u = u0 + j, k = k0 + kk;
        const uint b =
            u < p.units && k < K ? uint(w[ulong(u) * K + k]) : uint(ternary::kI2ZeroByte);
        for (uint o = 0; o < ternary::kI2RowsPerByte; ++o) {
          const int wk = ternary::i2_decode(uchar(b), o * ternary::kI2BitsPerCode);
          ws[kk * BN + o * JT + j] = float(wk);
        }
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint kk = 0; kk < BK; ++kk) {
      const vec<float, TM> a = ((threadgroup const vec<float, TM>*)(xs + kk * BM))[ty];
      const vec<float, TN> b = ((threadgroup const vec<float, TN>*)(ws + kk * BN))[tx];
      for (uint i = 0; i < TM; ++i)
        for (uint j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (ACT == ACT_INT8) {  // exact: |chunk sum| <= BK * 128
      for (uint i = 0; i < TM; ++i)
        for (uint j = 0; j < TN; ++j) {
          iacc[i][j] += int(acc[i][j]);
          acc[i][j] = 0.0f;
        }
    }
  }

  for (uint i = 0; i < TM; ++i) {
    const uint r = ty * TM + i, m = m0 + r;
    if (m >= M) continue;
    for (uint j = 0; j < TN; ++j) {
      const uint nl = tx * TN + j;
      uint n = u0 + nl;
      bool ok = n < N;
      if (FMT == FMT_I2) {
        const uint u = u0 + nl % JT;
        n = u + (nl / JT) * p.units;
        ok = u < p.units && n < N;
      }
      if (!ok) continue;
      const float v = ACT == ACT_INT8 ? float(iacc[i][j]) / inv[r] : acc[i][j];
      y[ulong(m) * N + n] = T(finish(v, n, scale, bias, p));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Instances, named ternary_{mv|mm}_{i8|i2}_{int8|none}_{f32|f16|bf16}. The glue looks them up
// by name (ternary::metal::kernel_name); the emulation harness walks TERNARY_KERNELS.
typedef decltype(ternary_mv<FMT_I8, ACT_INT8, float>) ternary_kernel_f32;
typedef decltype(ternary_mv<FMT_I8, ACT_INT8, half>) ternary_kernel_f16;
#if __METAL_VERSION__ >= 310
typedef decltype(ternary_mv<FMT_I8, ACT_INT8, bfloat>) ternary_kernel_bf16;
#endif

#define TERNARY_KERNELS_OF(X, tname, T)                                                   \
  X(mv, i8, int8, tname, FMT_I8, ACT_INT8, T) X(mv, i8, none, tname, FMT_I8, ACT_NONE, T) \
  X(mv, i2, int8, tname, FMT_I2, ACT_INT8, T) X(mv, i2, none, tname, FMT_I2, ACT_NONE, T) \
  X(mm, i8, int8, tname, FMT_I8, ACT_INT8, T) X(mm, i8, none, tname, FMT_I8, ACT_NONE, T) \
  X(mm, i2, int8, tname, FMT_I2, ACT_INT8, T) X(mm, i2, none, tname, FMT_I2, ACT_NONE, T)
#if __METAL_VERSION__ >= 310  // bfloat is Metal 3.1 (macOS 14)
#define TERNARY_KERNELS(X) \
  TERNARY_KERNELS_OF(X, f32, float) TERNARY_KERNELS_OF(X, f16, half) TERNARY_KERNELS_OF(X, bf16, bfloat)
#else
#define TERNARY_KERNELS(X) TERNARY_KERNELS_OF(X, f32, float) TERNARY_KERNELS_OF(X, f16, half)
#endif

#define TERNARY_STR2(s) #s
#define TERNARY_STR(s) TERNARY_STR2(s)
#define TERNARY_INSTANCE(path, fmt, act, tname, FMT, ACT, T)                   \
  template [[host_name(TERNARY_STR(ternary_##path##_##fmt##_##act##_##tname))]] \
  kernel ternary_kernel_##tname ternary_##path<FMT, ACT, T>;
TERNARY_KERNELS(TERNARY_INSTANCE)
