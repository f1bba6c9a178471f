// router.cu: the one place that decides which kernels serve a problem, for both act modes (the
// CUDA counterpart of the CPU dispatcher), and launches them.
#include "launchers.cuh"

namespace ternary::cuda {
namespace {

int64_t elem_bytes(DType d) { return d == DType::F32 ? 4 : 2; }

}  // namespace

Plan plan_linear(const Linear& p, Act act, bool library_gemm) {
  Plan plan;
  if (act == Act::Int8) {
    if (int8_quantized_in_gemv(p)) {
      plan.path = Path::kInt8Fused;
    } else {
      plan.path = p.M <= kGemvMaxM                             ? Path::kInt8Gemv
                  : library_gemm && library_gemm_pays(p, true) ? Path::kInt8Library
                                                               : Path::kInt8Mma;
      // q [M, act_padded_k(K)], then inv [M] float32 and qsum [M] int32.
      plan.scratch_bytes = p.M * act_padded_k(p.K) + 8 * p.M;
    }
  } else if (p.M <= kGemvMaxM && !p.q8) {  // the float paths decode ternary weights only
    plan.path = Path::kNoneGemv;
  } else if (library_gemm && p.dtype != DType::F32 && library_gemm_pays(p, false)) {
    plan.path = Path::kNoneLibrary;
  } else if (!p.q8 && linear_none_mma_ok(p)) {
    plan.path = Path::kNoneMma;
  } else {
    plan.path = Path::kNoneDense;
    plan.scratch_bytes = p.N * p.K * elem_bytes(p.dtype);
  }
  return plan;
}

cudaError_t run_linear(const Plan& plan, Linear p, void* scratch, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  const bool pdl = pdl_enabled();
  switch (plan.path) {
    case Path::kInt8Fused:
      return gemv_int8_persistent(p, stream, pdl);
    case Path::kInt8Gemv:
    case Path::kInt8Mma:
    case Path::kInt8Library: {
      auto* base = static_cast<uint8_t*>(scratch);
      const int64_t qbytes = p.M * act_padded_k(p.K);
      p.q = reinterpret_cast<int8_t*>(base);
      p.inv = reinterpret_cast<float*>(base + qbytes);
      p.qsum = reinterpret_cast<int32_t*>(base + qbytes + 4 * p.M);
      const cudaError_t e =
          p.norm_weight != nullptr ? rms_norm_quantize_rows(p, stream) : quantize_rows(p, stream);
      if (e != cudaSuccess || plan.path == Path::kInt8Library) return e;
      if (plan.path == Path::kInt8Mma) return launch_mma_int8(p, stream, pdl);
      return p.M <= kPersistMaxM ? gemv_int8_persistent(p, stream, pdl)
                                 : gemv_int8_block(p, stream, pdl);
    }
    case Path::kNoneGemv:
      return gemv_none(p, stream);
    case Path::kNoneLibrary:
      return cudaSuccess;
    case Path::kNoneMma:
      return linear_none_mma(p, stream);
    case Path::kNoneDense:
      return dequantize(p, scratch, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace ternary::cuda
