// ops_cpu.cpp: the CPU glue. Stages activations as float32 rows and splits output rows over
// at::parallel_for; the arithmetic lives in the torch-free kernel sets behind
// cpu::selected_kernels() (csrc/cpu/).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "aten/linear_frame.h"
#include "cpu/kernels.h"
#include "cpu/scratch.h"

namespace ternary {
namespace {

using cpu::scratch;

// The calling thread's scratch (cpu/scratch.h): kept between calls, trimmed after large ones.
struct Scratch {
  std::vector<float> xf, y, scale, bias, inv, gamma, z, factor;
  std::vector<int8_t> q;
  std::vector<int32_t> sum;
};
thread_local Scratch tls;

// Releases the large buffers when the call ends, however it ends.
struct ScratchTrim {
  ~ScratchTrim() {
    cpu::release_if_large(tls.xf);
    cpu::release_if_large(tls.y);
    cpu::release_if_large(tls.scale);
    cpu::release_if_large(tls.bias);
    cpu::release_if_large(tls.inv);
    cpu::release_if_large(tls.gamma);
    cpu::release_if_large(tls.z);
    cpu::release_if_large(tls.factor);
    cpu::release_if_large(tls.q);
    cpu::release_if_large(tls.sum);
  }
};

// Elements per task of the conversions below: a decode row converts inline, with no task.
constexpr int64_t kConvertGrain = int64_t(1) << 15;

// dst[i] = float(src[i]) for a contiguous bfloat16 / half t (exact), or false for other t.
// A plain loop: at decode sizes the tensor copy's own dispatch cost more than the conversion.
bool widen_16bit(const at::Tensor& t, float* dst) {
  if (!t.is_contiguous()) return false;
  auto run = [&](const auto* src) {
    at::parallel_for(0, t.numel(), kConvertGrain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) dst[i] = static_cast<float>(src[i]);
    });
  };
  if (t.scalar_type() == at::kBFloat16) {
    run(t.const_data_ptr<at::BFloat16>());
  } else if (t.scalar_type() == at::kHalf) {
    run(t.const_data_ptr<at::Half>());
  } else {
    return false;
  }
  return true;
}

// out (contiguous bfloat16 / half, n elements) = y rounded to nearest even, as Tensor.to does.
void narrow_16bit(const float* y, int64_t n, at::Tensor& out) {
  auto run = [&](auto* dst) {
    using T = std::remove_pointer_t<decltype(dst)>;
    at::parallel_for(0, n, kConvertGrain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) dst[i] = T(y[i]);
    });
  };
  if (out.scalar_type() == at::kBFloat16) {
    run(out.data_ptr<at::BFloat16>());
  } else {
    run(out.data_ptr<at::Half>());
  }
}

// float32 contiguous view of t's data: t itself when it already is, else a copy into buf.
const float* as_float(const at::Tensor& t, std::vector<float>& buf) {
  if (t.scalar_type() == at::kFloat && t.is_contiguous()) return t.data_ptr<float>();
  float* dst = scratch(buf, t.numel());
  if (!widen_16bit(t, dst)) at::from_blob(dst, t.sizes(), at::kFloat).copy_(t);
  return dst;
}

// Row units each thread gets at least: enough work (~64K MACs) to pay for a task.
int64_t grain_for(int64_t units, int64_t work_per_unit) {
  const int64_t target = int64_t(1) << 16;
  const int64_t g = target / std::max<int64_t>(work_per_unit, 1);
  return std::min(std::max<int64_t>(g, 1), std::max<int64_t>(units, 1));
}

at::Tensor linear_cpu(WeightFormat f, const at::Tensor& x, const at::Tensor& weight,
                      const at::Tensor& scale, int64_t out_features,
                      const c10::optional<at::Tensor>& bias, c10::string_view act,
                      const RmsNormArgs* norm) {
  LinearCall c =
      prepare_linear(f, c10::DeviceType::CPU, x, weight, scale, out_features, bias, act, norm);
  if (c.done) return c.out;
  const LinearShape& s = c.shape;
  at::Tensor& out = c.out;
  const cpu::KernelSet& ks = cpu::selected_kernels();
  const ScratchTrim trim;

  cpu::Problem p;
  p.M = s.M;
  p.N = s.N;
  p.K = s.K;
  p.weight = c.weight.data_ptr();
  p.scale = as_float(scale.reshape({-1}), tls.scale);
  p.scale_stride = scale.numel() == 1 ? 0 : 1;
  p.bias = bias.has_value() ? as_float(*bias, tls.bias) : nullptr;
  const float* xf = as_float(c.x2d, tls.xf);
  const bool direct_out = out.scalar_type() == at::kFloat;
  p.y = direct_out ? out.data_ptr<float>() : scratch(tls.y, s.M * s.N);
  p.ldy = s.N;

  cpu::LinearFn fn;
  if (s.act == ActMode::Int8) {
    p.ldq = act_padded_k(s.K);
    int8_t* q = scratch(tls.q, s.M * p.ldq);
    float* inv = scratch(tls.inv, s.M);
    int32_t* sum = scratch(tls.sum, s.M);
    if (norm == nullptr) {
      at::parallel_for(0, s.M, grain_for(s.M, s.K), [&](int64_t m0, int64_t m1) {
        ks.quantize(xf, s.K, s.K, m0, m1, q, p.ldq, inv, sum);
      });
    } else {
      // The norm's rows z = x * gamma are quantized as x would be; inv takes the row's factor.
      const float* gamma = as_float(norm->weight, tls.gamma);
      const float eps = norm->eps_f32();
      float* z = scratch(tls.z, s.M * s.K);
      float* factor = scratch(tls.factor, s.M);
      at::parallel_for(0, s.M, grain_for(s.M, 3 * s.K), [&](int64_t m0, int64_t m1) {
        cpu::rms_norm_rows(xf, gamma, s.K, eps, m0, m1, z, factor);
        ks.quantize(z, s.K, s.K, m0, m1, q, p.ldq, inv, sum);
        for (int64_t m = m0; m < m1; ++m) inv[m] *= factor[m];
      });
    }
    p.xq = q;
    p.x_inv = inv;
    p.x_sum = sum;
    fn = f == WeightFormat::I8 ? ks.i8_int8
         : f == WeightFormat::I2 ? (s.M == 1 ? cpu::decode_i2_kernels().i2_int8 : ks.i2_int8)
                                 : ks.q8_int8;
  } else {
    p.xf = xf;
    p.ldx = s.K;
    fn = f == WeightFormat::I2 ? ks.i2_none : ks.i8_none;  // i8_none takes any int8 weight
  }
  const bool i2 = f == WeightFormat::I2;
  const int64_t units = weight_units(i2, s.N);
  const int64_t rows_per_unit = i2 ? kI2RowsPerByte : 1;
  at::parallel_for(0, units, grain_for(units, s.M * s.K * rows_per_unit),
                   [&](int64_t u0, int64_t u1) { fn(p, u0, u1); });

  if (!direct_out) narrow_16bit(p.y, s.M * s.N, out);  // out: a fresh tensor in x's dtype
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ternary, CPU, m) {
  m.impl("linear_i8", &linear_i8_entry<linear_cpu>);
  m.impl("linear_i2", &linear_i2_entry<linear_cpu>);
  m.impl("linear_q8", &linear_q8_entry<linear_cpu>);
  m.impl("rms_norm_linear_i8", &rms_norm_linear_i8_entry<linear_cpu>);
  m.impl("rms_norm_linear_i2", &rms_norm_linear_i2_entry<linear_cpu>);
}

}  // namespace ternary
