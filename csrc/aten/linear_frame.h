// linear_frame.h: the frame every device's glue runs in (CPU, CUDA, MPS), so validation, the
// output's shape and dtype, and the empty cases are decided once. A backend's glue is then
// only "stage the inputs, launch the kernels":
//
//   at::Tensor linear_cuda(WeightFormat f, <op args>) {
//     LinearCall c = prepare_linear(f, c10::DeviceType::CUDA, <op args>);
//     if (c.done) return c.out;
//     ... kernels write c.out ...
//     return c.out;
//   }
//   m.impl("linear_i8", &linear_i8_entry<linear_cuda>);
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "aten/op_checks.h"

namespace ternary {

struct LinearCall {
  LinearShape shape;  // M (all leading dims of x), N, K, act
  at::Tensor out;     // x.shape[:-1] + [N], x's dtype and device, uninitialised
  at::Tensor x2d;     // x viewed (or copied, if it cannot be viewed) as [M, K]
  at::Tensor weight;  // contiguous
  // out is final and no kernel runs: M = 0 or N = 0 (out has no elements), or K = 0 (an empty
  // sum: out holds the bias, zeros without one).
  bool done = false;
};

// Validates the arguments (op_checks.h), checks that x lives on the device the glue serves,
// and allocates the output.
inline LinearCall prepare_linear(WeightFormat f, c10::DeviceType device, const at::Tensor& x,
                                 const at::Tensor& weight, const at::Tensor& scale,
                                 int64_t out_features, const c10::optional<at::Tensor>& bias,
                                 c10::string_view act, const RmsNormArgs* norm = nullptr) {
  LinearCall c;
  c.shape = check_linear_args(f, x, weight, scale, out_features, bias, act, norm);
  TORCH_CHECK(x.device().type() == device, op_name(f, norm != nullptr), ": the ",
              c10::DeviceTypeName(device),
              " kernel got x on ", x.device());
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = c.shape.N;
  c.out = at::empty(out_shape, x.options());
  c.done = c.out.numel() == 0 || c.shape.K == 0;
  if (c.shape.K == 0 && c.out.numel() > 0) {
    if (bias.has_value()) c.out.copy_(bias->to(at::kFloat).expand_as(c.out));
    else c.out.zero_();
  }
  if (c.done) return c;
  c.x2d = x.reshape({c.shape.M, c.shape.K});
  c.weight = weight.contiguous();
  return c;
}

// A backend's implementation of the ops: linear(format, x, weight, scale, out_features, bias,
// act, norm), out_features being used by i2 only; norm is nullptr except for the
// rms_norm_linear ops (act "int8").
using LinearImpl = at::Tensor (*)(WeightFormat, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, int64_t, const c10::optional<at::Tensor>&,
                                  c10::string_view, const RmsNormArgs*);

// The op entry points with the schemas' signatures (csrc/ops.cpp), for TORCH_LIBRARY_IMPL.
template <LinearImpl Impl>
at::Tensor linear_i8_entry(const at::Tensor& x, const at::Tensor& weight,
                           const at::Tensor& scale, const c10::optional<at::Tensor>& bias,
                           c10::string_view act) {
  return Impl(WeightFormat::I8, x, weight, scale, 0, bias, act, nullptr);
}

template <LinearImpl Impl>
at::Tensor linear_q8_entry(const at::Tensor& x, const at::Tensor& weight,
                           const at::Tensor& scale, const c10::optional<at::Tensor>& bias,
                           c10::string_view act) {
  return Impl(WeightFormat::Q8, x, weight, scale, 0, bias, act, nullptr);
}

template <LinearImpl Impl>
at::Tensor linear_i2_entry(const at::Tensor& x, const at::Tensor& weight,
                           const at::Tensor& scale, int64_t out_features,
                           const c10::optional<at::Tensor>& bias, c10::string_view act) {
  return Impl(WeightFormat::I2, x, weight, scale, out_features, bias, act, nullptr);
}

template <LinearImpl Impl>
at::Tensor rms_norm_linear_i8_entry(const at::Tensor& x, const at::Tensor& norm_weight,
                                    double eps, const at::Tensor& weight,
                                    const at::Tensor& scale,
                                    const c10::optional<at::Tensor>& bias) {
  const RmsNormArgs norm{norm_weight, eps};
  return Impl(WeightFormat::I8, x, weight, scale, 0, bias, "int8", &norm);
}

template <LinearImpl Impl>
at::Tensor rms_norm_linear_i2_entry(const at::Tensor& x, const at::Tensor& norm_weight,
                                    double eps, const at::Tensor& weight,
                                    const at::Tensor& scale, int64_t out_features,
                                    const c10::optional<at::Tensor>& bias) {
  const RmsNormArgs norm{norm_weight, eps};
  return Impl(WeightFormat::I2, x, weight, scale, out_features, bias, "int8", &norm);
}

}  // namespace ternary
