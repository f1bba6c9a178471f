// gemv_persist.cu: act="int8", M <= 2: the persistent dp4a GEMV. Weight units are streamed
// once in 16-byte loads, decoded in registers and dotted with the int8 activations by __dp4a;
// for small M * K the kernel quantizes x in its own prologue (quantize_x_block; one launch per
// op), and at M = 1 applies the input RMSNorm of the rms_norm_linear ops there too.
#include "gemv.cuh"
#include "launchers.cuh"
#include "quantize.cuh"

namespace ternary::cuda {
namespace {

// ---- act="int8", M <= 2: persistent dp4a GEMV ----------------------------------------------
//
// One block per SM (at most kPersistWarps warps). Warps form groups of `split` warps; a group
// owns whole weight units in turn (unit u goes to group u % total_groups, numbered group-major
// so every block gets the same share). A unit is streamed in batches of kPersistBatch 16-byte
// chunks per lane (32 lanes x 4 x 16 bytes contiguous); warp `part` of a group takes batches
// part, part + split, ... (split > 1 only when units are too few to give every warp slot one,
// e.g. 4096x14336 i2: 1024 units for 132 x 16 warps). Each warp loads its next batch (of this
// unit or the next) before decoding the current one, so 2 x 4 x 16 bytes per lane are in flight
// (two stages of 8 do not fit the register budget: the compiler splits a stage's loads around
// the other's decode).
// A unit's sums meet in one warp reduction, then (split > 1) in shared memory, added by the
// group's first warp in part order behind a named barrier of the group: integer sums in a fixed
// order, so results do not depend on the split. No block barrier after the prologue. Fused
// (small M * K): the prologue quantizes x into shared memory once per block (quantize_x_block,
// which the pre-pass runs too), so act="int8" is a single launch; otherwise q / inv / qsum come
// from the pre-pass. Before waiting on its predecessor (PDL), each block asks L2 for its first
// weight rows (kPersistPrefetchBytes), so under back-to-back calls the stream starts during the
// previous call's tail (benchmarks/cuda/floor.cu measures what such a call could cost at best).
constexpr int kPersistWarps = kXBlockWarps;  // quantize_x_block runs in these blocks
constexpr int kPersistMaxSplit = 4;
constexpr int kPersistBatch = 4;
// Bytes per block asked of L2 before the wait. Enough to keep HBM busy through the wait and the
// quantization of x (about 4 MB over 132 SMs, 1.4 us at 3 TB/s), no more: x's loads, issued
// after the wait, queue behind whatever the prefetch still has in flight (docs/perf-notes.md).
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

template <int B>
struct Stage {
  uint4 w[B];
  float sc, bi;
};

// NORM (FUSED only): the prologue quantizes RMSNorm(x) * norm_weight (quantize_x_block's NORM).
template <int MT, bool I2, bool FUSED, bool VEC, typename T, int XNR, bool NORM = false>
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
  const int64_t units = weight_units(I2, p.N), K = p.K, ldq = act_padded_k(K), nchunks = (K + 15) / 16;
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
    // overlap (the launcher's choice): the first batch is requested once this thread's x has
    // landed (its amax taken), so it is in flight through the block reduction and the
    // quantization; weights_first: before x's loads; neither: once q is ready. Any earlier, x's
    // quantization may wait for the batch's HBM loads, depending on how the compiler assigns
    // scoreboards; after x has landed, nothing of x is left to wait for (docs/perf-notes.md).
    if (o.weights_first) load_stage(sa, item, batch);
    auto x_hook = [&](int phase) {
      if (phase == kXLanded && o.overlap) load_stage(sa, item, batch);
    };
    quantize_x_block<MT, XNR, T, NORM>(static_cast<const T*>(p.x), M, K, o.xvec, o.xregs, smem_q,
                                       inv, qsum, x_hook, static_cast<const T*>(p.norm_weight),
                                       p.norm_eps);
    q = reinterpret_cast<const int8_t*>(smem_q);
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
}

// The persistent GEMV's choices for one launch. The prefetch asks L2 for a block's first rows,
// up to kPersistPrefetchBytes (and the grid's total within half the L2, at least one row), in
// one bulk request per row; x is quantized from registers wherever it fits; the first weight
// batch is requested once x has landed (overlap). The alternatives (per-line prefetch, weights
// before x, no overlap) stay run-time fields of PersistOpts so that the kernel's code is the one
// measured (docs/perf-notes.md); the launcher never picks them.
PersistOpts persist_opts(const Linear& p, int64_t units, int64_t blocks, int split, int x_elem) {
  PersistOpts o;
  o.split = split;
  if (p.K <= (int64_t(1) << 30)) {
    const int64_t own = (units + blocks - 1) / blocks;
    const int64_t fit = device_l2_bytes() / 2 / (blocks * p.K);
    o.prefetch_units = static_cast<int>(own < fit ? own : (fit > 1 ? fit : 1));
    const int64_t budget = kPersistPrefetchBytes / p.K;
    if (budget < o.prefetch_units) o.prefetch_units = static_cast<int>(budget > 1 ? budget : 1);
  }
  const XAccess xa = x_access(p, x_elem, true);
  o.xvec = xa.vec;
  o.xregs = xa.regs;
  o.overlap = true;
  return o;
}

template <int MT, bool I2, bool FUSED, typename T, bool NORM = false>
cudaError_t gemv_int8_persistent_launch(const Linear& p, cudaStream_t stream, bool pdl) {
  const int64_t units = weight_units(I2, p.N);
  // One block per SM while there is a unit for each of its warps; fewer groups per block when
  // units are few, so small layers still spread over every SM.
  const int64_t slots = device_sms();
  const int64_t blocks = units < slots ? units : slots;
  const int64_t need = (units + blocks - 1) / blocks;
  const int64_t groups = need < kPersistWarps ? need : kPersistWarps;
  // Warps per unit: fill the idle warp slots, each warp at least one batch, fewest batches per
  // warp (ties: fewer warps, fewer barriers).
  const int64_t nbatch = ((p.K + 15) / 16 + 32 * kPersistBatch - 1) / (32 * kPersistBatch);
  int split = 1;
  for (int s = 2; s <= kPersistMaxSplit && s <= nbatch && groups * s <= kPersistWarps; ++s)
    if ((nbatch + s - 1) / s < (nbatch + split - 1) / split) split = s;
  const dim3 grid(static_cast<unsigned>(blocks));
  const dim3 block(static_cast<unsigned>(32 * groups * split));
  const size_t smem = FUSED ? static_cast<size_t>(p.M * act_padded_k(p.K)) : 0;
  const bool vec = p.K % 16 == 0 && reinterpret_cast<uintptr_t>(p.weight) % 16 == 0;
  const PersistOpts o = persist_opts(p, units, blocks, split, static_cast<int>(sizeof(T)));
  // Fused with aligned weights (the shapes that matter): a kernel with only the x path it
  // takes; otherwise one that picks it at run time.
  using Kernel = void (*)(const Linear, const PersistOpts);
  const Kernel kernel = [&]() -> Kernel {
    if (!vec) return gemv_int8_persistent_kernel<MT, I2, FUSED, false, T, kXAnyPath, NORM>;
    if constexpr (!FUSED) {
      return gemv_int8_persistent_kernel<MT, I2, false, true, T, kXAnyPath>;
    } else {
      Kernel k = nullptr;
      const int nr = o.xregs ? x_regs_groups(p.K, block.x, kGroupsPer16<T>, 16 / MT) : 0;
      with_x_path<MT>(nr, [&](auto path) {
        k = gemv_int8_persistent_kernel<MT, I2, true, true, T, decltype(path)::value, NORM>;
      });
      return k;
    }
  }();
  return launch_smem(kernel, grid, block, smem, stream, pdl, p, o);
}

template <int MT, bool I2>
cudaError_t gemv_int8_persistent_dtype(const Linear& p, cudaStream_t stream, bool pdl) {
  if (!int8_quantized_in_gemv(p))
    return gemv_int8_persistent_launch<MT, I2, false, float>(p, stream, pdl);  // x is not read
  if (p.norm_weight != nullptr) {  // int8_quantized_in_gemv: M = 1, norm_weight in x's dtype
    if constexpr (MT == 1) {
      switch (p.dtype) {
        case DType::F32: return gemv_int8_persistent_launch<1, I2, true, float, true>(p, stream, pdl);
        case DType::BF16:
          return gemv_int8_persistent_launch<1, I2, true, __nv_bfloat16, true>(p, stream, pdl);
        case DType::F16: return gemv_int8_persistent_launch<1, I2, true, __half, true>(p, stream, pdl);
      }
    }
    return cudaErrorInvalidValue;
  }
  switch (p.dtype) {
    case DType::F32: return gemv_int8_persistent_launch<MT, I2, true, float>(p, stream, pdl);
    case DType::BF16: return gemv_int8_persistent_launch<MT, I2, true, __nv_bfloat16>(p, stream, pdl);
    case DType::F16: return gemv_int8_persistent_launch<MT, I2, true, __half>(p, stream, pdl);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

// M <= kPersistMaxM.
cudaError_t gemv_int8_persistent(const Linear& p, cudaStream_t stream, bool pdl) {
  static_assert(kPersistMaxM == 2, "the persistent kernel is instantiated for M = 1 and 2");
  if (p.M <= 1) return p.i2 ? gemv_int8_persistent_dtype<1, true>(p, stream, pdl)
                            : gemv_int8_persistent_dtype<1, false>(p, stream, pdl);
  return p.i2 ? gemv_int8_persistent_dtype<2, true>(p, stream, pdl)
              : gemv_int8_persistent_dtype<2, false>(p, stream, pdl);
}

}  // namespace ternary::cuda
