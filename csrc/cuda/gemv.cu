// gemv.cu: activation quantization and the M <= 8 (decode) kernels.
//
// act="int8": the packed weights are streamed once in 16-byte loads, per weight "unit" (i8: one
// output row; i2: one byte row = four output rows j, j+R, j+2R, j+3R), decoded in registers and
// dotted with the int8 activations by __dp4a (dot16). M <= 2: gemv_int8_persistent_kernel, a
// persistent grid with one warp (or a few, for few long rows) per unit that, for small M * K,
// quantizes x in its own prologue (quantize_x_block; one launch per op). 2 < M <= 8: the per-row
// quantize pre-pass, then gemv_int8_block_kernel, blocks of RB units with threads striding over
// K. act="none" (gemv_none_kernel): the same block layout, float32 FMA on decoded weights.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "common.cuh"

namespace ternary::cuda {

// Attribute A of the current device, read once per device; `fallback` when it cannot be read
// (or is below 1: every attribute read here is a positive count or version).
template <cudaDeviceAttr A>
int device_attr(int fallback) {
  static int value_of[64] = {0};  // per device, 0 = not yet read
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return fallback;
  if (value_of[dev] == 0) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, A, dev) != cudaSuccess || v < 1) return fallback;
    value_of[dev] = v;
  }
  return value_of[dev];
}

bool pdl_enabled() {
  static const bool env_on = [] {
    const char* v = std::getenv("TERNARY_OPS_CUDA_PDL");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return env_on && device_attr<cudaDevAttrComputeCapabilityMajor>(0) >= 9;
}

int device_sms() { return device_attr<cudaDevAttrMultiProcessorCount>(1); }

int64_t device_l2_bytes() { return device_attr<cudaDevAttrL2CacheSize>(0); }

namespace {

constexpr int kThreads = 256;

// Units per block and outputs per unit: keeps RB * RPU * MT accumulators at <= 32 registers.
// The float path (act="none") decodes per weight, so it takes half as many units.
template <int MT, bool I2, bool FLOAT = false>
struct GemvCfg {
  static constexpr int RPU = I2 ? kI2RowsPerByte : 1;
  static constexpr int RB0 = I2 ? (MT <= 2 ? 4 : (MT <= 4 ? 2 : 1)) : (MT <= 2 ? 8 : 4);
  static constexpr int RB = FLOAT && RB0 > 1 ? RB0 / 2 : RB0;
  static constexpr int NACC = RB * RPU * MT;
};

// Sums each accumulator over the block; thread i < NACC returns the total of accumulator i.
template <int NACC, typename A>
__device__ __forceinline__ A block_sum_acc(A (&acc)[NACC], A* red) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
#pragma unroll
  for (int i = 0; i < NACC; ++i) {
    const A v = warp_sum(acc[i]);
    if (lane == 0) red[warp * NACC + i] = v;
  }
  __syncthreads();
  A t = A(0);
  if (threadIdx.x < NACC)
    for (int w = 0; w < nwarps; ++w) t += red[w * NACC + threadIdx.x];
  return t;
}

// Output row of accumulator (r, s) of the block whose first unit is u0; -1 when out of range.
template <bool I2>
__device__ __forceinline__ int64_t out_row(int64_t u0, int r, int s, int64_t units, int64_t N) {
  const int64_t u = u0 + r;
  if (u >= units) return -1;
  const int64_t n = I2 ? u + s * units : u;
  return n < N ? n : -1;
}

// ---- act="int8", M <= 8: decode, dot and epilogue shared by both GEMV kernels ---------------

// q of rows m < M at 16-byte chunk c; zeros for the rows >= M that the tile rounds up to. SMEM:
// q was quantized into shared memory by the kernel itself; else it is the pre-pass's output,
// read through the read-only cache.
template <int MT, bool SMEM>
__device__ __forceinline__ void load_q16(const int8_t* q, int64_t ldq, int64_t c, int M,
                                         uint4 (&qv)[MT]) {
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const auto* qp = reinterpret_cast<const uint4*>(q + m * ldq + c * 16);
    qv[m] = m >= M ? make_uint4(0, 0, 0, 0) : (SMEM ? *qp : __ldg(qp));
  }
}

// acc[s][m] += 16-byte dot of unit output s with q row m. i8: the bytes are the weights. i2:
// (w >> 2s) & 0x03030303 are the codes w + 1 of output s (row j + sR), two ALU ops per word;
// the offset is removed once per output by store_int8 (common.cuh).
template <int MT, bool I2>
__device__ __forceinline__ void dot16(const uint4& w, const uint4 (&qv)[MT],
                                      int32_t (&acc)[I2 ? kI2RowsPerByte : 1][MT]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t wd = word(w, i);
#pragma unroll
    for (int s = 0; s < (I2 ? kI2RowsPerByte : 1); ++s) {
      const int a = I2 ? int((wd >> (2 * s)) & 0x03030303u) : int(wd);
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[s][m] = __dp4a(a, int(word(qv[m], i)), acc[s][m]);
    }
  }
}


// ---- act="int8", 2 < M <= 8: block GEMV after the quantize pre-pass ------------------------
//
// A block owns RB units and its threads stride over K in 16-byte chunks, keeping the next
// chunk's loads in flight while decoding the current one; partial sums meet in shared memory at
// the end. At M = 4 it beats the persistent kernel below on every i2 shape (measured on H100:
// e.g. 14336x4096 17.2 vs 20.2 us): many small blocks keep more loads in flight than one
// warp per unit with a batch of 4 chunks, and x is quantized once, not once per block.
template <int MT, bool I2, bool VEC>
__global__ void __launch_bounds__(kThreads) gemv_int8_block_kernel(const Linear p) {
  using C = GemvCfg<MT, I2>;
  __shared__ int32_t red[(kThreads / 32) * C::NACC];
  const int64_t units = units_of(I2, p.N);
  const int64_t u0 = int64_t(blockIdx.x) * C::RB;
  const int64_t K = p.K, ldq = q_ld(K), nchunks = (K + 15) / 16;
  const auto* W = static_cast<const uint8_t*>(p.weight);
  const int M = static_cast<int>(p.M);

  int32_t acc[C::RB][C::RPU][MT] = {};

  int64_t c = threadIdx.x;
  auto load = [&](uint4 (&w)[C::RB], int64_t chunk) {
#pragma unroll
    for (int r = 0; r < C::RB; ++r)
      w[r] = load_w16<VEC>(W + (u0 + r) * K, chunk * 16, K, u0 + r < units);
  };
  // Two register sets used in turn, no copy between them (see the persistent kernel's Stage).
  uint4 wa[C::RB], wb[C::RB];
  load(wa, c);
  pdl_wait();  // weights above need nothing from the quantize pre-pass; q below does
  auto step = [&](const uint4 (&w)[C::RB], uint4 (&wn)[C::RB]) {
    uint4 qv[MT];
    load_q16<MT, false>(p.q, ldq, c, M, qv);
    load(wn, c + blockDim.x);
#pragma unroll
    for (int r = 0; r < C::RB; ++r) dot16<MT, I2>(w[r], qv, acc[r]);
    c += blockDim.x;
    return c < nchunks;
  };
  if (c < nchunks)
    while (step(wa, wb) && step(wb, wa)) {
    }

  const int32_t total = block_sum_acc<C::NACC>(reinterpret_cast<int32_t(&)[C::NACC]>(acc), red);
  if (threadIdx.x < C::NACC) {
    const int i = threadIdx.x;
    const int r = i / (C::RPU * MT), s = (i / MT) % C::RPU, m = i % MT;
    const int64_t n = out_row<I2>(u0, r, s, units, p.N);
    if (m < M && n >= 0)
      store_int8<I2>(p, m, n, total, p.inv[m], p.qsum[m], scale_of(p, n), bias_of(p, n));
  }
}

// ---- act="int8", M <= 2: persistent dp4a GEMV ----------------------------------------------
//
// One block per SM (at most kPersistWarps warps). Warps form groups of `split` warps; a group
// owns whole weight units in turn (unit u goes to group u % total_groups, numbered group-major
// so every block gets the same share). A unit is streamed in batches of kPersistBatch 16-byte
// chunks per lane (32 lanes x 4 x 16 bytes contiguous); warp `part` of a group takes batches
// part, part + split, ... (split > 1 only when units are too few to give every warp slot one,
// e.g. 4096x14336 i2: 1024 units for 132 x 16 warps). Each warp loads its next batch (of this
// unit or the next) before decoding the current one, so 2 x 4 x 16 bytes per lane are in flight
// (2 x 8 measured 0.6 us slower on both large shapes: two stages of 8 did not fit the register
// budget and the compiler split a stage's loads around the other's decode).
// A unit's sums meet in one warp reduction, then (split > 1) in shared memory, added by the
// group's first warp in part order behind a named barrier of the group: integer sums in a fixed
// order, so results do not depend on the split. No block barrier after the prologue. Fused
// (small M * K): the prologue quantizes x into shared memory once per block (quantize_x_block,
// which the pre-pass runs too), so act="int8" is a single launch; otherwise q / inv / qsum come
// from the pre-pass. Before waiting on its predecessor (PDL), each block asks L2 for its first
// weight rows (kPersistPrefetchBytes), so under back-to-back calls the stream starts during the
// previous call's tail; where the remaining fixed time goes is measured by
// benchmarks/cuda_trace.cu and benchmarks/cuda_floor.cu (CUDA_RESULTS.md).
constexpr int kPersistWarps = 16;
constexpr int kPersistMaxSplit = 4;
constexpr int kPersistBatch = 4;
// Bytes per block asked of L2 before the wait. Enough to keep HBM busy through the wait and the
// quantization of x (about 4 MB over 132 SMs, 1.4 us at 3 TB/s), no more: x's loads, issued
// after the wait, queue behind whatever the prefetch still has in flight. Measured on H100
// (benchmarks/cuda_floor.cu, i2 M=1): 14336x4096 7.84 us with the whole share (27-28 rows of
// 4 KB), 6.88 with 8 rows; 4096x14336 9.29 with all 8 rows of 14 KB, 7.94 with 2.
constexpr int64_t kPersistPrefetchBytes = 32768;

// Per-launch choices of the persistent GEMV (persist_opts below picks them).
struct PersistOpts {
  int split = 1;               // warps per unit
  int prefetch_units = 0;      // weight rows per block asked of L2 up front (0: none)
  bool prefetch_lines = false;  // per 128-byte line from every thread, not one bulk op per row
  bool xvec = false;           // x rows 4-element aligned, K % 4 == 0
  bool xregs = false;          // from registers (one pass) when x fits: rows 16-byte aligned
  bool weights_first = false;  // first weight batch issued before x is read
  bool overlap = false;        // first weight batch issued once x has landed (quantize_x_block)
};

__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
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
  const int64_t per_thread = (q_ld(K) / 4 + g * threads - 1) / (g * threads) * g;
  for (int nr = 2; nr <= most; nr *= 2)
    if (per_thread <= nr) return nr;
  return 0;
}
// The x path of a kernel (XNR): one register count (> 0), two passes over x, or any of them
// picked at run time (slower: every path's code sits in the kernel, and this code runs once per
// call, so its size is paid in instruction fetches; H100, i2 M=1: 14336x4096 6.82 -> 6.60 us,
// 4096x14336 7.95 -> 7.70 with one path per kernel).
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

// x [M, K] (M <= MT) quantized by the whole block into q ([M][q_ld(K)], zeros past K: shared
// memory in the fused GEMV, global in the pre-pass); every thread gets inv and qsum of each row.
// Ends with a block barrier. xvec: K % 4 == 0 and rows 4-element aligned; xregs: every row
// 16-byte aligned, quantize from registers when x fits (kXRegs groups of 4 per thread); else
// two passes over x. x_hook(phase) runs at each XPhase point: the GEMV requests its first
// weights there, the trace build records the time.
template <int MT, int XNR, typename T, typename F>
__device__ void quantize_x_block(const T* __restrict__ X, int M, int64_t K, bool xvec, bool xregs,
                                 unsigned char* smem_q, float (&inv)[MT], int32_t (&qsum)[MT],
                                 F&& x_hook) {
  __shared__ float red_f[kPersistWarps * MT];
  __shared__ int32_t red_i[kPersistWarps * MT];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  const int64_t ldq = q_ld(K);
  const int64_t qgroups = ldq / 4;  // groups of 4 columns, zero past K
  auto* qs = reinterpret_cast<uint32_t*>(smem_q);
  float amax[MT];
  int32_t part_sum[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    amax[m] = 0.0f;
    part_sum[m] = 0;
  }
  auto add_amax = [](float& a, const float (&v)[4]) {
    a = fmaxf(fmaxf(fmaxf(a, fabsf(v[0])), fmaxf(fabsf(v[1]), fabsf(v[2]))), fabsf(v[3]));
  };
  // Block-wide amax of each row -> inv. Returns whether any thread passed nonfinite (x holds
  // an infinity or NaN), by the same barrier.
  auto reduce_amax = [&](bool nonfinite) {
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
    }
    return any_nonfinite;
  };
  auto store_q = [&](int m, int64_t g, const float (&v)[4]) {
    const uint32_t wq = quant_pack4(v, inv[m]);
    qs[m * qgroups + g] = wq;
    part_sum[m] = __dp4a(int(wq), 0x01010101, part_sum[m]);
  };
  // xregs and at most kXRegs groups per thread: every load is issued at once and x is
  // quantized from registers: one L2 round trip. Otherwise two passes over x. One 16-byte load
  // per G = kGroupsPer16<T> groups (bf16 / half: two; 8-byte loads, twice as many, measured
  // slightly slower on H100: CUDA_RESULTS.md); thread t holds groups G * (t + j * blockDim.x) + h.
  // Groups past K (or rows past M) are not loaded, only zeroed: loading a dummy in-range
  // address instead sent up to 15 loads per thread to x's first line, from every block at once,
  // and that one L2 line cost ~1 us per call (H100: x of 64 elements took 2.4 us to quantize).
  // NR groups per thread, the fewest that hold x: this code runs once per call, so its size is
  // paid in instruction fetches (H100, 4096x14336 i2 M=1: NR = 16 9.07 us, NR = 8 8.78).
  constexpr int G = kGroupsPer16<T>;
  auto group_of = [&](int i) { return G * (threadIdx.x + int64_t(i / G) * blockDim.x) + i % G; };
  auto from_regs = [&](auto nr) {
    constexpr int NR = decltype(nr)::value;
    const int64_t groups = K / 4;  // xregs: K % (4 * G) == 0
    uint4 xr[MT][NR / G];  // x as loaded: converted to float only to be quantized
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int i = 0; i < NR; i += G) {
        const int64_t g = group_of(i);
        xr[m][i / G] = m < M && g < groups ? *reinterpret_cast<const uint4*>(X + m * K + 4 * g)
                                           : make_uint4(0, 0, 0, 0);
      }
    x_hook(kXLoadsIssued);
    // amax from the bit patterns (no conversion; one instruction per 2-6 elements on sm_90).
    // Where this thread's x holds an infinity or NaN, its amax is taken again from floats, as
    // the two-pass path takes it (fmaxf drops NaN), and the block quantizes with the NaN clamp.
    bool nonfinite = false;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      uint32_t bits = 0;
#pragma unroll
      for (int j = 0; j < NR / G; ++j) bits = max_abs_bits16(bits, xr[m][j], X);
      if (!abs_bits_value(bits, X, amax[m])) {
        nonfinite = true;
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
    const bool clamp_nan = reduce_amax(nonfinite);
    x_hook(kXScaled);
    // The G groups of one load are adjacent in q: one store of 4 * G bytes (G = 2: a warp's
    // 4-byte stores would hit every other word, two per bank). g is a multiple of G, and so are
    // qgroups and the row starts (q_ld: whole 16 bytes), so a run is wholly inside or past q.
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
    each_x4([&](int m, int64_t, const float (&v)[4]) { add_amax(amax[m], v); });
    x_hook(kXLanded);
    reduce_amax(false);  // store_q clamps NaN whatever x holds
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
  }
  __syncthreads();  // q and the partial sums are complete
#pragma unroll
  for (int m = 0; m < MT; ++m) qsum[m] = warp_sum(lane < nwarps ? red_i[lane * MT + m] : 0);
}

// One batch of a warp's weight stream in registers, with the epilogue values it needs.
template <int B>
struct Stage {
  uint4 w[B];
  float sc, bi;
};

template <int MT, bool I2, bool FUSED, bool VEC, typename T, int XNR>
__global__ void __launch_bounds__(kPersistWarps * 32, 1)
    gemv_int8_persistent_kernel(const Linear p, const PersistOpts o) {
  constexpr int RPU = I2 ? kI2RowsPerByte : 1;
  constexpr int NOUT = RPU * MT;  // outputs per unit; lane i < NOUT holds output (i / MT, i % MT)
  constexpr int B = kPersistBatch;
  extern __shared__ __align__(16) unsigned char smem_q[];  // FUSED: q [M][ldq]
  __shared__ int32_t red_split[2][kPersistWarps][NOUT];  // [unit parity][warp][output]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  const int split = o.split;
  const int group = warp / split, part = warp % split, ngroups = nwarps / split;
  const int M = static_cast<int>(p.M);
  const int64_t units = units_of(I2, p.N), K = p.K, ldq = q_ld(K), nchunks = (K + 15) / 16;
  const int64_t nbatch = (nchunks + 32 * B - 1) / (32 * B);  // >= split (launcher)
  const int64_t stride = int64_t(ngroups) * gridDim.x;
  int64_t item = int64_t(group) * gridDim.x + blockIdx.x, batch = part;
  const auto* W = static_cast<const uint8_t*>(p.weight);

  // A stage: batch b of unit u (16-byte chunks, zeros past K or past the last unit) and, when
  // it is this warp's last batch of the unit, the scale and bias of its output (lane < NOUT of
  // the group's first warp), so the unit's epilogue waits for no other load.
  auto load_stage = [&](Stage<B>& st, int64_t u, int64_t b) {
    const bool ok = u < units;
    const uint8_t* row = W + (ok ? u : 0) * K;
#pragma unroll
    for (int j = 0; j < B; ++j)
      st.w[j] = load_w16<VEC>(row, ((b * B + j) * 32 + lane) * 16, K, ok);
    const int64_t n = I2 ? u + (lane / MT) * units : u;
    const bool epi = part == 0 && lane < NOUT && ok && n < p.N && b + split >= nbatch;
    st.sc = epi ? scale_of(p, n) : 0.0f;
    st.bi = epi ? bias_of(p, n) : 0.0f;
  };

  TRACE_BEGIN
  // The next kernel may be scheduled at once: it waits for this one before reading anything.
  pdl_launch_dependents();
  // Ask L2 for the block's first prefetch_units rows (unit blockIdx.x + j * gridDim.x, in the
  // order the groups take them) before waiting on the predecessor: the weight stream starts
  // during its tail and runs through this kernel's prologue.
  if constexpr (VEC) {
    if (o.prefetch_lines) {  // one 128-byte line per thread in turn, a row's lines together
      const int64_t lines = (K + 127) / 128;
      for (int64_t l = threadIdx.x; l < o.prefetch_units * lines; l += blockDim.x) {
        const int64_t u = blockIdx.x + (l / lines) * gridDim.x;
        if (u < units) prefetch_l2_line(W + u * K + (l % lines) * 128);
      }
    } else {
      for (int64_t j = threadIdx.x; j < o.prefetch_units; j += blockDim.x) {
        const int64_t u = blockIdx.x + j * gridDim.x;
        if (u < units) prefetch_l2(W + u * K, static_cast<uint32_t>(K));
      }
    }
  }

  // Two stages of the stream, used in turn: a warp loads one while it sums the other. There is
  // no copy from one to the other: a register copy would wait for the loads to land and hold
  // back the next loads behind it (measured: one batch in flight instead of two).
  Stage<B> sa, sb;
  float inv[MT];
  int32_t qsum[MT];
  const int8_t* q;
  if constexpr (FUSED) {
    // The predecessor may have written x (or anything else): wait before the first read.
    pdl_wait();
    TRACE_POINT(1, true)
    // overlap (default): the first batch is requested once this thread's x has landed (its
    // amax taken), so it is in flight through the block reduction and the quantization;
    // weights_first: before x's loads; neither: once q is ready. Requesting it as soon as x's
    // loads were out gained up to 0.1 us on small shapes, but only where the compiler happened
    // to put x's loads and the batch's on separate scoreboards; where it did not, x's
    // quantization waited for the batch's HBM loads (+1.1 us). After x has landed, nothing of x
    // is left to wait for (CUDA_RESULTS.md, "Why small code changes move the time").
    if (o.weights_first) load_stage(sa, item, batch);
    auto x_hook = [&](int phase) {
      if (phase == kXLanded && o.overlap) load_stage(sa, item, batch);
      TRACE_POINT(4, phase == kXLanded)
      TRACE_POINT(5, phase == kXScaled)
    };
    quantize_x_block<MT, XNR, T>(static_cast<const T*>(p.x), M, K, o.xvec, o.xregs, smem_q, inv,
                                 qsum, x_hook);
    q = reinterpret_cast<const int8_t*>(smem_q);
    TRACE_POINT(2, true)
    if (!o.weights_first && !o.overlap) load_stage(sa, item, batch);
  } else {
    // The predecessor is quantize_rows_kernel, which writes only q / inv / qsum: the weights
    // can be requested before waiting for it.
    load_stage(sa, item, batch);
    pdl_wait();
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      inv[m] = m < M ? p.inv[m] : 1.0f;
      qsum[m] = m < M ? p.qsum[m] : 0;
    }
    q = p.q;
  }

  int32_t acc[RPU][MT] = {};
  int parity = 0;
  // One step: request the warp's next batch into `next`, sum the batch in `cur`, and finish
  // the unit if that was its last batch. False when the warp has nothing left.
  auto step = [&](const Stage<B>& cur, Stage<B>& next) {
    int64_t next_item = item, next_batch = batch + split;
    const bool unit_done = next_batch >= nbatch;
    if (unit_done) {
      next_batch = part;
      next_item += stride;
    }
    load_stage(next, next_item, next_batch);
    // No per-chunk branch: a chunk past K has zero weight bytes (load_w16), which add nothing
    // to the code dot whatever q holds, so its q index is only clamped in range. M == MT here.
#pragma unroll
    for (int j = 0; j < B; ++j) {
      const int64_t c = (batch * B + j) * 32 + lane;
      uint4 qv[MT];
      load_q16<MT, FUSED>(q, ldq, c < nchunks ? c : nchunks - 1, MT, qv);
      dot16<MT, I2>(cur.w[j], qv, acc);
    }
    if (unit_done) {
      TRACE_POINT(3, trace_t_[6] == 0)  // thread 0's first unit is summed
      int32_t t = 0;  // lane i < NOUT: this warp's sum of output i
#pragma unroll
      for (int s = 0; s < RPU; ++s)
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const int32_t v = warp_sum(acc[s][m]);
          acc[s][m] = 0;
          if (lane == s * MT + m) t = v;
        }
      if (split > 1) {
        // Double-buffered by unit parity: a warp can only write this slot again after the next
        // unit's barrier, which the reading warp reaches after its reads.
        if (lane < NOUT) red_split[parity][warp][lane] = t;
        named_barrier(1 + group, 32 * split);
        if (part == 0 && lane < NOUT) {
          t = 0;
          for (int i = 0; i < split; ++i) t += red_split[parity][group * split + i][lane];
        }
        parity ^= 1;
      }
      const int s = lane / MT, m = lane % MT;
      const int64_t n = I2 ? item + s * units : item;
      if (part == 0 && lane < NOUT && n < p.N) {
        float iv = inv[0];
        int32_t qs = qsum[0];
#pragma unroll
        for (int i = 1; i < MT; ++i)  // register select, no local-memory indexing
          if (m == i) {
            iv = inv[i];
            qs = qsum[i];
          }
        store_int8<I2>(p, m, n, t, iv, qs, cur.sc, cur.bi);
      }
    }
    item = next_item;
    batch = next_batch;
    return item < units;  // uniform over the group: its warps share item and the unit count
  };
  if (item < units)
    while (step(sa, sb) && step(sb, sa)) {
    }
  TRACE_END
}

// The weight of byte b (0..3) of word wd as a float, without a (quarter-rate) int-to-float
// conversion. i2: code c = (wd >> 8b+2s) & 3 -> float bits 0x4B000000 | c = 2^23 + c, minus
// 2^23 + 1 gives c - 1 exactly. i8: the byte is 0x01, 0x00 or 0xFF: bit 0 says nonzero, bit 1
// says negative.
template <bool I2>
__device__ __forceinline__ float weight_f(uint32_t wd, int b, int s) {
  if constexpr (I2) {
    return __int_as_float(0x4B000000u | ((wd >> (8 * b + 2 * s)) & 3u)) - 8388609.0f;
  } else {
    const uint32_t t = wd >> (8 * b);
    return __int_as_float(((t & 1u) * 0x3F800000u) | ((t & 2u) << 30));
  }
}

// act="none", M <= MT: float32 accumulation of w * x over the block's units.
template <int MT, bool I2, typename T>
__global__ void __launch_bounds__(kThreads) gemv_none_kernel(const Linear p, bool vec) {
  using C = GemvCfg<MT, I2, true>;
  __shared__ float red[(kThreads / 32) * C::NACC];
  const int64_t units = units_of(I2, p.N);
  const int64_t u0 = int64_t(blockIdx.x) * C::RB;
  const int64_t K = p.K, nchunks = (K + 15) / 16;
  const auto* W = static_cast<const uint8_t*>(p.weight);
  const T* X = static_cast<const T*>(p.x);
  const int M = static_cast<int>(p.M);

  float acc[C::RB][C::RPU][MT] = {};

  for (int64_t c = threadIdx.x; c < nchunks; c += blockDim.x) {
    uint4 w[C::RB];
#pragma unroll
    for (int r = 0; r < C::RB; ++r) {
      const uint8_t* row = W + (u0 + r) * K;
      w[r] = vec ? load_w16<true>(row, c * 16, K, u0 + r < units)
                 : load_w16<false>(row, c * 16, K, u0 + r < units);
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= M) break;
      const T* xr = X + m * K + c * 16;
      const int kn = static_cast<int>(K - c * 16 < 16 ? K - c * 16 : 16);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const int kk = 4 * i + b;
          const float xv = kk < kn ? to_float(__ldg(xr + kk)) : 0.0f;
#pragma unroll
          for (int r = 0; r < C::RB; ++r) {
            const uint32_t wd = word(w[r], i);
#pragma unroll
            for (int s = 0; s < C::RPU; ++s)
              acc[r][s][m] = fmaf(weight_f<I2>(wd, b, s), xv, acc[r][s][m]);
          }
        }
    }
  }

  const float total = block_sum_acc<C::NACC>(reinterpret_cast<float(&)[C::NACC]>(acc), red);
  if (threadIdx.x < C::NACC) {
    const int i = threadIdx.x;
    const int r = i / (C::RPU * MT), s = (i / MT) % C::RPU, m = i % MT;
    const int64_t n = out_row<I2>(u0, r, s, units, p.N);
    if (m < M && n >= 0)
      store_out(p.y, m * p.N + n, epilogue_none(total, scale_of(p, n), p.bias, n),
                p.dtype);
  }
}

// act="int8" pre-pass, for the shapes the fused GEMV does not quantize itself: one block per row
// of x runs the fused kernel's own quantize_x_block (so both paths give the same q), q straight
// to global memory. It waits for its predecessor (x may be that kernel's output) before letting
// its dependent start: the dependent may read its weights before its own wait (the non-fused
// persistent GEMV does), and those must not be read while an earlier kernel may still write them.
template <typename T, int XNR>
__global__ void __launch_bounds__(kPersistWarps * 32)
    quantize_rows_kernel(const Linear p, const bool xvec, const bool xregs) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t m = blockIdx.x;
  float inv[1];
  int32_t qsum[1];
  quantize_x_block<1, XNR, T>(static_cast<const T*>(p.x) + m * p.K, 1, p.K, xvec, xregs,
                              reinterpret_cast<unsigned char*>(p.q + m * q_ld(p.K)), inv, qsum,
                              [](int) {});
  if (threadIdx.x == 0) {
    p.inv[m] = inv[0];
    p.qsum[m] = qsum[0];
  }
}

// How quantize_x_block may read x [*, K] at p.x (x_elem-byte elements): xvec, K % 4 == 0 and
// rows 4-element aligned; xregs (where `regs` allows it), rows 16-byte aligned: from registers
// where x fits.
struct XAccess {
  bool vec = false, regs = false;
};
XAccess x_access(const Linear& p, int x_elem, bool regs) {
  const auto xp = reinterpret_cast<uintptr_t>(p.x);
  return {p.K % 4 == 0 && xp % (4 * x_elem) == 0,
          regs && p.K % (16 / x_elem) == 0 && xp % 16 == 0};
}

template <typename T>
cudaError_t quantize_rows_dtype(const Linear& p, cudaStream_t stream) {
  const dim3 block(kPersistWarps * 32);
  const XAccess xa = x_access(p, static_cast<int>(sizeof(T)), true);
  const int nr = xa.regs ? x_regs_groups(p.K, block.x, kGroupsPer16<T>, 16) : 0;
  cudaError_t e = cudaErrorInvalidValue;
  with_x_path<1>(nr, [&](auto path) {
    e = launch(quantize_rows_kernel<T, decltype(path)::value>, dim3(static_cast<unsigned>(p.M)),
               block, stream, pdl_enabled(), p, xa.vec, xa.regs);
  });
  return e;
}

// Threads per block: at least two 16-byte chunks per thread (so the next chunk's loads overlap
// the current one's decode, and smaller blocks fit the whole grid in one wave), whole warps,
// at most kThreads.
unsigned gemv_threads(int64_t K) {
  const int64_t chunks = (K + 15) / 16;
  const int64_t t = (chunks / 2 + 31) / 32 * 32;
  return static_cast<unsigned>(t < 32 ? 32 : (t > kThreads ? kThreads : t));
}

// Grid shape of the persistent GEMV: one block of up to kPersistWarps warps per SM, units split
// over up to kPersistMaxSplit warps by default; TERNARY_OPS_CUDA_GEMV_GRID="<blocks per SM
// (1-2)>,<warps per block (1-16)>[,<max warps per unit (1-4)>]" overrides it, for measuring
// other shapes (e.g. "1,16,1": no split).
struct PersistGrid {
  int blocks_per_sm = 1, max_warps = kPersistWarps, max_split = kPersistMaxSplit;
};

PersistGrid persist_grid() {
  static const PersistGrid g = [] {
    PersistGrid r;
    const char* v = std::getenv("TERNARY_OPS_CUDA_GEMV_GRID");
    int b = 0, w = 0, s = kPersistMaxSplit;
    if (v && std::sscanf(v, "%d,%d,%d", &b, &w, &s) >= 2 && b >= 1 && b <= 2 && w >= 1 &&
        w <= kPersistWarps && s >= 1 && s <= kPersistMaxSplit) {
      r.blocks_per_sm = b;
      r.max_warps = w;
      r.max_split = s;
    }
    return r;
  }();
  return g;
}

// Switches of the persistent GEMV, for measuring its choices; persist_switches() reads them
// from the environment once: TERNARY_OPS_CUDA_PREFETCH=0 / lines,
// TERNARY_OPS_CUDA_PREFETCH_BYTES=<bytes per block>, TERNARY_OPS_CUDA_GEMV_XREGS=0 / 1
// (default 1: from registers wherever x fits), TERNARY_OPS_CUDA_GEMV_WEIGHTS_FIRST=1,
// TERNARY_OPS_CUDA_GEMV_OVERLAP=0 / 1 (default 1).
struct PersistSwitches {
  int prefetch = 1;  // 0: off, 1: bulk, 2: per line
  bool xregs = true;
  bool weights_first = false, overlap = true;
  int64_t prefetch_bytes = kPersistPrefetchBytes;  // per block, see persist_opts
};

const PersistSwitches& persist_switches() {
  static const PersistSwitches env = [] {
    PersistSwitches e;
    if (const char* v = std::getenv("TERNARY_OPS_CUDA_PREFETCH"))
      e.prefetch = std::strcmp(v, "0") == 0 ? 0 : std::strcmp(v, "lines") == 0 ? 2 : 1;
    if (const char* v = std::getenv("TERNARY_OPS_CUDA_PREFETCH_BYTES")) {
      const long long b = std::atoll(v);
      if (b > 0) e.prefetch_bytes = b;
    }
    if (const char* v = std::getenv("TERNARY_OPS_CUDA_GEMV_XREGS"))
      e.xregs = std::strcmp(v, "0") != 0;
    const char* w = std::getenv("TERNARY_OPS_CUDA_GEMV_WEIGHTS_FIRST");
    e.weights_first = w && std::strcmp(w, "1") == 0;
    if (const char* v = std::getenv("TERNARY_OPS_CUDA_GEMV_OVERLAP"))
      e.overlap = std::strcmp(v, "0") != 0;
    return e;
  }();
  return env;
}

// The persistent GEMV's choices for one launch. The prefetch asks L2 for a block's first rows,
// up to kPersistPrefetchBytes (and the grid's total within half the L2, at least one row).
PersistOpts persist_opts(const Linear& p, int64_t units, int64_t blocks, int split, int x_elem,
                         const PersistSwitches& env) {
  PersistOpts o;
  o.split = split;
  if (env.prefetch != 0 && p.K <= (int64_t(1) << 30)) {
    const int64_t own = (units + blocks - 1) / blocks;
    const int64_t fit = device_l2_bytes() / 2 / (blocks * p.K);
    o.prefetch_units = static_cast<int>(own < fit ? own : (fit > 1 ? fit : 1));
    const int64_t budget = env.prefetch_bytes / p.K;
    if (budget < o.prefetch_units) o.prefetch_units = static_cast<int>(budget > 1 ? budget : 1);
    o.prefetch_lines = env.prefetch == 2;
  }
  const XAccess xa = x_access(p, x_elem, env.xregs);
  o.xvec = xa.vec;
  o.xregs = xa.regs;
  o.weights_first = env.weights_first;
  o.overlap = env.overlap && !o.weights_first;
  return o;
}

template <int MT, bool I2, bool FUSED, typename T>
cudaError_t gemv_int8_persistent(const Linear& p, cudaStream_t stream, bool pdl,
                                 const PersistSwitches& sw = persist_switches()) {
  const int64_t units = units_of(I2, p.N);
  // One block per SM while there is a unit for each of its warps; fewer groups per block when
  // units are few, so small layers still spread over every SM.
  const PersistGrid g = persist_grid();
  const int64_t slots = int64_t(device_sms()) * g.blocks_per_sm;
  const int64_t blocks = units < slots ? units : slots;
  const int64_t need = (units + blocks - 1) / blocks;
  const int64_t groups = need < g.max_warps ? need : g.max_warps;
  // Warps per unit: fill the idle warp slots, each warp at least one batch, fewest batches per
  // warp (ties: fewer warps, fewer barriers).
  const int64_t nbatch = ((p.K + 15) / 16 + 32 * kPersistBatch - 1) / (32 * kPersistBatch);
  int split = 1;
  for (int s = 2; s <= g.max_split && s <= nbatch && groups * s <= g.max_warps; ++s)
    if ((nbatch + s - 1) / s < (nbatch + split - 1) / split) split = s;
  const dim3 grid(static_cast<unsigned>(blocks));
  const dim3 block(static_cast<unsigned>(32 * groups * split));
  const size_t smem = FUSED ? static_cast<size_t>(p.M * q_ld(p.K)) : 0;
  const bool vec = p.K % 16 == 0 && reinterpret_cast<uintptr_t>(p.weight) % 16 == 0;
  const PersistOpts o = persist_opts(p, units, blocks, split, static_cast<int>(sizeof(T)), sw);
  // Fused with aligned weights (the shapes that matter): a kernel with only the x path it
  // takes; otherwise one that picks it at run time.
  using Kernel = void (*)(const Linear, const PersistOpts);
  const Kernel kernel = [&]() -> Kernel {
    if (!vec) return gemv_int8_persistent_kernel<MT, I2, FUSED, false, T, kXAnyPath>;
    if constexpr (!FUSED) {
      return gemv_int8_persistent_kernel<MT, I2, false, true, T, kXAnyPath>;
    } else {
      Kernel k = nullptr;
      const int nr = o.xregs ? x_regs_groups(p.K, block.x, kGroupsPer16<T>, 16 / MT) : 0;
      with_x_path<MT>(nr, [&](auto path) {
        k = gemv_int8_persistent_kernel<MT, I2, true, true, T, decltype(path)::value>;
      });
      return k;
    }
  }();
  return launch_smem(kernel, grid, block, smem, stream, pdl, p, o);
}

template <int MT, bool I2>
cudaError_t gemv_int8_persistent_dtype(const Linear& p, cudaStream_t stream, bool pdl) {
  if (int8_needs_scratch(p.M, p.K))
    return gemv_int8_persistent<MT, I2, false, float>(p, stream, pdl);  // x is not read
  switch (p.dtype) {
    case DType::F32: return gemv_int8_persistent<MT, I2, true, float>(p, stream, pdl);
    case DType::BF16: return gemv_int8_persistent<MT, I2, true, __nv_bfloat16>(p, stream, pdl);
    case DType::F16: return gemv_int8_persistent<MT, I2, true, __half>(p, stream, pdl);
  }
  return cudaErrorInvalidValue;
}

template <int MT, bool I2>
cudaError_t gemv_int8_block(const Linear& p, cudaStream_t stream, bool pdl) {
  using C = GemvCfg<MT, I2>;
  const int64_t units = units_of(I2, p.N);
  const dim3 grid(static_cast<unsigned>((units + C::RB - 1) / C::RB));
  const bool vec = p.K % 16 == 0 && reinterpret_cast<uintptr_t>(p.weight) % 16 == 0;
  auto* kernel = vec ? gemv_int8_block_kernel<MT, I2, true> : gemv_int8_block_kernel<MT, I2, false>;
  return launch(kernel, grid, dim3(gemv_threads(p.K)), stream, pdl, p);
}

// M <= kPersistMaxM: persistent kernel; larger M: block kernel (after the pre-pass).
template <bool I2>
cudaError_t gemv_int8(const Linear& p, cudaStream_t stream, bool pdl) {
  static_assert(kPersistMaxM == 2, "the persistent kernel is instantiated for M = 1 and 2");
  if (p.M <= 1) return gemv_int8_persistent_dtype<1, I2>(p, stream, pdl);
  if (p.M <= 2) return gemv_int8_persistent_dtype<2, I2>(p, stream, pdl);
  if (p.M <= 4) return gemv_int8_block<4, I2>(p, stream, pdl);
  return gemv_int8_block<8, I2>(p, stream, pdl);
}

template <int MT, bool I2, typename T>
cudaError_t gemv_none_mt(const Linear& p, cudaStream_t stream) {
  using C = GemvCfg<MT, I2, true>;
  const int64_t units = units_of(I2, p.N);
  const dim3 grid(static_cast<unsigned>((units + C::RB - 1) / C::RB));
  const bool vec = p.K % 16 == 0 && reinterpret_cast<uintptr_t>(p.weight) % 16 == 0;
  gemv_none_kernel<MT, I2, T><<<grid, gemv_threads(p.K), 0, stream>>>(p, vec);
  return cudaGetLastError();
}

template <bool I2, typename T>
cudaError_t gemv_none(const Linear& p, cudaStream_t stream) {
  if (p.M <= 1) return gemv_none_mt<1, I2, T>(p, stream);
  if (p.M <= 2) return gemv_none_mt<2, I2, T>(p, stream);
  if (p.M <= 4) return gemv_none_mt<4, I2, T>(p, stream);
  return gemv_none_mt<8, I2, T>(p, stream);
}

}  // namespace

cudaError_t quantize_rows(const Linear& p, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::F32: return quantize_rows_dtype<float>(p, stream);
    case DType::BF16: return quantize_rows_dtype<__nv_bfloat16>(p, stream);
    case DType::F16: return quantize_rows_dtype<__half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t linear_int8(const Linear& p, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;
  const bool pdl = pdl_enabled();
  if (int8_needs_scratch(p.M, p.K)) {
    const cudaError_t e = quantize_rows(p, stream);
    if (e != cudaSuccess) return e;
  }
  if (p.M <= kGemvMaxM) return p.i2 ? gemv_int8<true>(p, stream, pdl) : gemv_int8<false>(p, stream, pdl);
  return launch_mma_int8(p, stream, pdl);
}

cudaError_t linear_none_gemv(const Linear& p, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::F32:
      return p.i2 ? gemv_none<true, float>(p, stream) : gemv_none<false, float>(p, stream);
    case DType::BF16:
      return p.i2 ? gemv_none<true, __nv_bfloat16>(p, stream)
                  : gemv_none<false, __nv_bfloat16>(p, stream);
    case DType::F16:
      return p.i2 ? gemv_none<true, __half>(p, stream) : gemv_none<false, __half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace ternary::cuda
