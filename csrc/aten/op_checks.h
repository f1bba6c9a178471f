// op_checks.h: argument validation shared by every device's ATen glue (CPU, CUDA, MPS), so a
// bad call fails with the same message everywhere. Messages say what was expected and got.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "ternary_format.h"

namespace ternary {

// I8, I2: ternary weights (int8 direct, 2-bit packed); Q8: int8 weights in [-127, 127].
enum class WeightFormat { I8, I2, Q8 };
enum class ActMode { Int8, None };

struct LinearShape {
  int64_t M, N, K;
  ActMode act;
};

// rms_norm: the op with an input RMSNorm (rms_norm_linear_i8 / _i2).
inline const char* op_name(WeightFormat f, bool rms_norm = false) {
  if (rms_norm) return f == WeightFormat::I2 ? "ternary.rms_norm_linear_i2"
                                             : "ternary.rms_norm_linear_i8";
  return f == WeightFormat::I8 ? "ternary.linear_i8"
         : f == WeightFormat::I2 ? "ternary.linear_i2"
                                 : "ternary.linear_q8";
}

inline ActMode parse_act(const char* op, c10::string_view act) {
  if (act == "int8") return ActMode::Int8;
  if (act == "none") return ActMode::None;
  TORCH_CHECK_VALUE(false, op, ": act must be 'int8' or 'none', got '", std::string(act), "'");
}

// An input RMSNorm folded into act="int8" (the rms_norm_linear ops): its weight [K] and eps.
struct RmsNormArgs {
  at::Tensor weight;
  double eps = 0.0;
  // eps as the kernels add it: float32, 0 below float32's smallest normal number (GPUs that
  // flush subnormals would drop it).
  float eps_f32() const {
    const float e = static_cast<float>(eps);
    return e < kF32MinNormal ? 0.0f : e;
  }
};

// Validates the arguments of linear_i8 / linear_i2 / linear_q8 (out_features is used by i2
// only), and of rms_norm_linear_i8 / _i2 where `norm` is given (act is then "int8").
inline LinearShape check_linear_args(WeightFormat f, const at::Tensor& x, const at::Tensor& weight,
                                     const at::Tensor& scale, int64_t out_features,
                                     const c10::optional<at::Tensor>& bias, c10::string_view act,
                                     const RmsNormArgs* norm = nullptr) {
  const char* op = op_name(f, norm != nullptr);
  const ActMode mode = parse_act(op, act);
  const auto xt = x.scalar_type();
  TORCH_CHECK_VALUE(xt == at::kFloat || xt == at::kBFloat16 || xt == at::kHalf, op,
              ": x must be float32, bfloat16 or float16, got ", xt);
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have shape [..., K], got a 0-d tensor");
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D, got shape ", weight.sizes());
  const int64_t K = x.size(-1);
  int64_t N;
  if (f != WeightFormat::I2) {
    TORCH_CHECK_VALUE(weight.scalar_type() == at::kChar, op, ": weight must be int8 (format ",
                      f == WeightFormat::I8 ? "i8" : "q8", "), got ", weight.scalar_type());
    N = weight.size(0);
  } else {
    TORCH_CHECK_VALUE(weight.scalar_type() == at::kByte, op, ": weight must be uint8 (format i2), got ",
                weight.scalar_type());
    TORCH_CHECK_VALUE(out_features >= 1, op, ": out_features must be >= 1, got ", out_features);
    N = out_features;
    TORCH_CHECK_VALUE(weight.size(0) == i2_packed_rows(N), op,
                ": weight must have ceil(out_features / 4) = ", i2_packed_rows(N),
                " rows for out_features = ", N, ", got weight of shape ", weight.sizes());
  }
  // The weight fixes in_features; a wrong x is the likelier mistake, so the message names x.
  TORCH_CHECK_VALUE(weight.size(1) == K, op, ": x must have shape [..., in_features] with in_features = ",
              "weight.size(1) = ", weight.size(1), ", got x of shape ", x.sizes());
  const int64_t max_k = f == WeightFormat::Q8 ? kQ8ActMaxK : kActMaxK;
  TORCH_CHECK_VALUE(mode != ActMode::Int8 || K <= max_k, op,
              ": act='int8' sums int32 dot products, exact for in_features <= ", max_k,
              "; got in_features = ", K, " (use act='none')");
  TORCH_CHECK_VALUE(scale.is_floating_point(), op, ": scale must be a floating tensor, got ",
              scale.scalar_type());
  TORCH_CHECK_VALUE(scale.numel() == 1 || (scale.dim() == 1 && scale.size(0) == N), op,
              ": scale must be a scalar or have shape [N] = [", N, "], got ", scale.sizes());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->is_floating_point(), op, ": bias must be a floating tensor, got ",
                bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, op, ": bias must have shape [N] = [", N,
                "], got ", bias->sizes());
  }
  const auto dev = x.device();
  auto same_device = [&](const at::Tensor& t, const char* what) {
    TORCH_CHECK_VALUE(t.device() == dev, op, ": all tensors must be on x's device (", dev, "), got ",
                what, " on ", t.device());
  };
  same_device(weight, "weight");
  same_device(scale, "scale");
  if (bias.has_value()) same_device(*bias, "bias");
  if (norm != nullptr) {
    const at::Tensor& g = norm->weight;
    TORCH_CHECK_VALUE(g.is_floating_point(), op, ": norm_weight must be a floating tensor, got ",
                      g.scalar_type());
    TORCH_CHECK_VALUE(g.dim() == 1 && g.size(0) == K, op,
                      ": norm_weight must have shape [in_features] = [", K, "], got ", g.sizes());
    same_device(g, "norm_weight");
    TORCH_CHECK_VALUE(std::isfinite(norm->eps) && norm->eps >= 0.0, op,
                      ": eps must be finite and >= 0, got ", norm->eps);
  }
  const int64_t M = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  return LinearShape{M, N, K, mode};
}

}  // namespace ternary
