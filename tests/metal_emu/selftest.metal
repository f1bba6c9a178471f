// selftest.metal: small kernels that check the emulator (metal_emu.h) itself: collectives give
// the GPU's answers, and the bugs it exists to catch are caught. Test-only; not shipped.
#include <metal_stdlib>
using namespace metal;

#ifdef METAL_EMU
#define SELFTEST_SMEM_ARG
#else
#define SELFTEST_SMEM_ARG [[threadgroup(0)]]
#endif

// case 0: correct kernel. out[tid * 5 + ...]: simd_sum, simd_max, simd_shuffle,
// simd_shuffle_down, and a neighbour's value exchanged through threadgroup memory.
// case 1: a barrier inside a branch; case 2: simd_sum inside a branch; case 3: the exchange
// without its barrier; case 4: a store past the threadgroup memory the launch declared.
kernel void selftest(device int* out [[buffer(0)]],
                     constant uint& which [[buffer(1)]],
                     threadgroup int* smem SELFTEST_SMEM_ARG,
                     uint3 group [[threadgroup_position_in_grid]],
                     uint tid [[thread_index_in_threadgroup]],
                     uint nthreads [[threads_per_threadgroup]],
                     uint lane [[thread_index_in_simdgroup]]) {
  device int* o = out + (group.x * nthreads + tid) * 5;
  if (which == 1 && tid < 32) threadgroup_barrier(mem_flags::mem_threadgroup);
  int v = int(lane);
  if (which == 2) {
    if (lane < 16) v = simd_sum(v);
  } else {
    o[0] = simd_sum(v);
    o[1] = int(simd_max(float(lane)));
    o[2] = simd_shuffle(v * 2, ushort(5));
    o[3] = simd_shuffle_down(v, ushort(3));
  }
  smem[tid] = int(group.x * 1000 + tid);
  if (which == 4 && tid < 4) smem[nthreads + tid] = 7;
  if (which != 3) threadgroup_barrier(mem_flags::mem_threadgroup);
  o[4] = smem[(tid + 1) % nthreads];
}
