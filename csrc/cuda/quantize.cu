// quantize.cu: the act="int8" pre-pass, for the shapes whose GEMV or tensor-core kernel does
// not quantize x itself: per-row q / inv / qsum into the scratch of Linear.
#include "launchers.cuh"
#include "quantize.cuh"

namespace ternary::cuda {
namespace {

// act="int8" pre-pass, for the shapes the fused GEMV does not quantize itself: one block per row
// of x (quantize_rows_threads) runs the fused kernel's own quantize_x_block (so both paths give
// the same q), q straight to global memory. It waits for its predecessor (x may be that kernel's
// output) before letting its dependent start: the dependent may read its weights before its own
// wait (the non-fused persistent GEMV does), and those must not be read while an earlier kernel
// may still write them.
template <typename T, int XNR>
__global__ void __launch_bounds__(kXBlockWarps * 32)
    quantize_rows_kernel(const Linear p, const bool xvec, const bool xregs) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t m = blockIdx.x;
  float inv[1];
  int32_t qsum[1];
  quantize_x_block<1, XNR, T>(static_cast<const T*>(p.x) + m * p.K, 1, p.K, xvec, xregs,
                              reinterpret_cast<unsigned char*>(p.q + m * act_padded_k(p.K)), inv, qsum,
                              [](int) {});
  if (threadIdx.x == 0) {
    p.inv[m] = inv[0];
    p.qsum[m] = qsum[0];
  }
}

// Threads of a pre-pass block: about four 4-column groups each (two 16-byte loads of 2-byte x),
// 64 to kXBlockWarps * 32.
int quantize_rows_threads(int64_t K) { return row_block_threads(K, 4, 2, kXBlockWarps); }

template <typename T>
cudaError_t quantize_rows_dtype(const Linear& p, cudaStream_t stream) {
  const dim3 block(quantize_rows_threads(p.K));
  const XAccess xa = x_access(p, static_cast<int>(sizeof(T)), true);
  const int nr = xa.regs ? x_regs_groups(p.K, block.x, kGroupsPer16<T>, 16) : 0;
  cudaError_t e = cudaErrorInvalidValue;
  with_x_path<1>(nr, [&](auto path) {
    e = launch(quantize_rows_kernel<T, decltype(path)::value>, dim3(static_cast<unsigned>(p.M)),
               block, stream, pdl_enabled(), p, xa.vec, xa.regs);
  });
  return e;
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

}  // namespace ternary::cuda
