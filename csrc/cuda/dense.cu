// dense.cu: act="none" for M > 8 where mma_float.cu does not apply (float32 x, unaligned x or
// weights, K % 8 != 0, i8 past 32 rows). Ternary weights are exact in every float type, so decoding
// them to a dense [N, K] matrix in x's dtype and handing it to the library GEMM (float32
// accumulation and a float32 result) computes exactly x @ T^T; the scale and bias follow in one
// elementwise pass. The result stays float32 until then: an unscaled dot, int8 (q8) weights
// above all, can pass float16's range although the scaled output does not.
#include "common.cuh"

namespace ternary::cuda {
namespace {

template <typename T>
__global__ void dequantize_kernel(const Linear p, T* __restrict__ out) {
  const int64_t total = p.N * p.K, R = i2_packed_rows(p.N);
  const auto* W = static_cast<const uint8_t*>(p.weight);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int w;
    if (p.i2) {
      const int64_t n = i / p.K, k = i % p.K;
      w = i2_decode(W[i2_byte_row(n, R) * p.K + k], i2_shift(n, R));
    } else {
      w = static_cast<int8_t>(W[i]);
    }
    out[i] = from_float<T>(static_cast<float>(w));
  }
}

__global__ void scale_bias_kernel(const Linear p, const float* __restrict__ acc) {
  const int64_t total = p.M * p.N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i % p.N;
    store_out(p.y, i, epilogue_none(acc[i], scale_of(p, n), p.bias, n), p.dtype);
  }
}

dim3 grid_for(int64_t total) {
  const int64_t blocks = (total + 255) / 256;
  return dim3(static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536));
}

}  // namespace

cudaError_t dequantize(const Linear& p, void* dense, cudaStream_t stream) {
  const dim3 grid = grid_for(p.N * p.K);
  switch (p.dtype) {
    case DType::F32:
      dequantize_kernel<<<grid, 256, 0, stream>>>(p, static_cast<float*>(dense));
      break;
    case DType::BF16:
      dequantize_kernel<<<grid, 256, 0, stream>>>(p, static_cast<__nv_bfloat16*>(dense));
      break;
    case DType::F16:
      dequantize_kernel<<<grid, 256, 0, stream>>>(p, static_cast<__half*>(dense));
      break;
  }
  return cudaGetLastError();
}

cudaError_t finish_dense(const Linear& p, const float* acc, cudaStream_t stream) {
  scale_bias_kernel<<<grid_for(p.M * p.N), 256, 0, stream>>>(p, acc);
  return cudaGetLastError();
}

}  // namespace ternary::cuda
