// ops_cuda.cpp: the CUDA glue for the ternary ops. Validates (linear_frame.h),
// asks the router (kernels.h) for a plan, allocates its scratch through the caching allocator,
// and runs it on the current stream (the dense fallback's GEMM is torch's, the library GEMMs at
// large M are the Python package's Triton kernels where registered). Nothing here synchronizes
// with the host, so the ops can be captured in CUDA graphs.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "aten/linear_frame.h"
#include "cuda/kernels.h"

namespace ternary {
namespace {

cuda::DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::DType::F32;
    case at::kBFloat16: return cuda::DType::BF16;
    default: return cuda::DType::F16;  // check_linear_args admits only these three
  }
}

// float32, contiguous: t itself when it already is (the usual case: no copy, no allocation).
at::Tensor as_f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// The library GEMM of an act mode, ternary::_mma_int8 or ternary::_mma_float (csrc/ops.cpp),
// where a CUDA kernel for it is registered, else nullptr: the Python package registers Triton
// ones where Triton is installed (ternary_ops/cuda_mma.py).
const c10::OperatorHandle* library_gemm(ActMode act) {
  static const c10::OperatorHandle int8_op =
      c10::Dispatcher::singleton().findSchemaOrThrow("ternary::_mma_int8", "");
  static const c10::OperatorHandle float_op =
      c10::Dispatcher::singleton().findSchemaOrThrow("ternary::_mma_float", "");
  const c10::OperatorHandle& op = act == ActMode::Int8 ? int8_op : float_op;
  return op.hasKernelForDispatchKey(c10::DispatchKey::CUDA) ? &op : nullptr;
}

using OptionalTensor = c10::optional<at::Tensor>;
using LibraryInt8Gemm = void(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, int64_t,
                             const OptionalTensor&, at::Tensor&);
using LibraryFloatGemm = void(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                              const OptionalTensor&, at::Tensor&);

at::Tensor linear_cuda(WeightFormat f, const at::Tensor& x, const at::Tensor& weight,
                       const at::Tensor& scale, int64_t out_features,
                       const c10::optional<at::Tensor>& bias, c10::string_view act,
                       const RmsNormArgs* norm) {
  LinearCall c =
      prepare_linear(f, c10::DeviceType::CUDA, x, weight, scale, out_features, bias, act,
                     norm);
  if (c.done) return c.out;
  const c10::cuda::CUDAGuard guard(x.device());  // the launches go to x's device's stream
  const LinearShape& s = c.shape;
  const at::Tensor& out = c.out;
  const at::Tensor x2 = c.x2d.contiguous();
  const at::Tensor sc = as_f32(scale.reshape({-1}));
  const at::Tensor b = bias.has_value() ? as_f32(*bias) : at::Tensor();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cuda::Linear p;
  p.M = s.M;
  p.N = s.N;
  p.K = s.K;
  p.i2 = f == WeightFormat::I2;
  p.q8 = f == WeightFormat::Q8;
  p.weight = c.weight.data_ptr();
  p.scale = sc.data_ptr<float>();
  p.scale_stride = sc.numel() == 1 ? 0 : 1;
  p.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  p.x = x2.data_ptr();
  p.y = out.data_ptr();
  p.dtype = dtype_of(x);
  at::Tensor gamma;  // kept alive until the launches are queued
  if (norm != nullptr) {
    const auto gt = norm->weight.scalar_type();
    gamma = gt == at::kFloat || gt == at::kBFloat16 || gt == at::kHalf
                ? norm->weight.contiguous()
                : norm->weight.to(at::kFloat).contiguous();
    p.norm_weight = gamma.data_ptr();
    p.norm_dtype = dtype_of(gamma);
    p.norm_eps = norm->eps_f32();
  }

  const c10::OperatorHandle* library =
      s.M >= cuda::kLibraryMinM ? library_gemm(s.act) : nullptr;
  const cuda::Plan plan = cuda::plan_linear(
      p, s.act == ActMode::Int8 ? cuda::Act::Int8 : cuda::Act::None, library != nullptr);
  at::Tensor scratch;  // kept alive until the launches are queued
  if (plan.scratch_bytes > 0)
    scratch = at::empty({plan.scratch_bytes}, x.options().dtype(at::kByte));
  C10_CUDA_CHECK(cuda::run_linear(plan, p, scratch.defined() ? scratch.data_ptr() : nullptr,
                                  stream));
  const bool library_path =
      plan.path == cuda::Path::kInt8Library || plan.path == cuda::Path::kNoneLibrary;
  if (library_path && s.M > 0 && s.N > 0) {
    const OptionalTensor bias_f32 = b.defined() ? OptionalTensor(b) : c10::nullopt;
    at::Tensor out2d = out.view({s.M, s.N});
    if (plan.path == cuda::Path::kInt8Library) {
      // The pre-pass's q [M, act_padded_k(K)] int8, inv [M] float32 and qsum [M] int32
      // (kernels.h).
      const int64_t kp = act_padded_k(s.K);
      const at::Tensor q = scratch.narrow(0, 0, s.M * kp).view(at::kChar).view({s.M, kp});
      const at::Tensor inv = scratch.narrow(0, s.M * kp, 4 * s.M).view(at::kFloat);
      const at::Tensor qsum = scratch.narrow(0, s.M * kp + 4 * s.M, 4 * s.M).view(at::kInt);
      library->typed<LibraryInt8Gemm>().call(q, inv, qsum, c.weight, sc, s.N, bias_f32, out2d);
    } else {
      library->typed<LibraryFloatGemm>().call(x2, c.weight, sc, s.N, bias_f32, out2d);
    }
  }
  if (plan.path == cuda::Path::kNoneDense) {
    const at::Tensor dense = scratch.view(x.scalar_type()).view({s.N, s.K});
    // float32 result: see dense.cu
    const at::Tensor acc = x.scalar_type() == at::kFloat ? at::mm(x2, dense.t())
                                                         : at::mm(x2, dense.t(), at::kFloat);
    C10_CUDA_CHECK(cuda::finish_dense(p, acc.data_ptr<float>(), stream));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ternary, CUDA, m) {
  m.impl("linear_i8", &linear_i8_entry<linear_cuda>);
  m.impl("linear_i2", &linear_i2_entry<linear_cuda>);
  m.impl("linear_q8", &linear_q8_entry<linear_cuda>);
  m.impl("rms_norm_linear_i8", &rms_norm_linear_i8_entry<linear_cuda>);
  m.impl("rms_norm_linear_i2", &rms_norm_linear_i2_entry<linear_cuda>);
}

}  // namespace ternary
