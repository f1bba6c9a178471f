// ops.cpp: the op schemas (one TORCH_LIBRARY block) and the CPU glue. The glue validates,
// stages activations as float32 rows, and splits output rows over at::parallel_for; the
// arithmetic lives in the torch-free kernel sets behind cpu::selected_kernels().
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <vector>

#include "cpu/kernels.h"
#include "op_checks.h"

namespace ternary {
namespace {

// Per-thread scratch that only grows: no heap allocation per call once warm.
template <typename T>
T* scratch(std::vector<T>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

struct Scratch {
  std::vector<float> xf, y, scale, bias, inv;
  std::vector<int8_t> q;
  std::vector<int32_t> sum;
};
thread_local Scratch tls;

// float32 contiguous view of t's data: t itself when it already is, else a copy into buf.
const float* as_float(const at::Tensor& t, std::vector<float>& buf) {
  if (t.scalar_type() == at::kFloat && t.is_contiguous()) return t.data_ptr<float>();
  float* dst = scratch(buf, t.numel());
  at::from_blob(dst, t.sizes(), at::kFloat).copy_(t);
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
                      const c10::optional<at::Tensor>& bias, c10::string_view act) {
  const LinearShape s = check_linear_args(f, x, weight, scale, out_features, bias, act);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = s.N;
  at::Tensor out = at::empty(out_shape, x.options());
  if (s.M == 0) return out;

  const at::Tensor w = weight.contiguous();
  const at::Tensor x2 = x.reshape({s.M, s.K});
  const cpu::KernelSet& ks = cpu::selected_kernels();

  cpu::Problem p;
  p.M = s.M;
  p.N = s.N;
  p.K = s.K;
  p.weight = w.data_ptr();
  p.scale = as_float(scale.reshape({-1}), tls.scale);
  p.scale_stride = scale.numel() == 1 ? 0 : 1;
  p.bias = bias.has_value() ? as_float(*bias, tls.bias) : nullptr;
  const float* xf = as_float(x2, tls.xf);
  const bool direct_out = out.scalar_type() == at::kFloat;
  p.y = direct_out ? out.data_ptr<float>() : scratch(tls.y, s.M * s.N);
  p.ldy = s.N;

  cpu::LinearFn fn;
  if (s.act == ActMode::Int8) {
    p.ldq = cpu::padded_k(s.K);
    int8_t* q = scratch(tls.q, s.M * p.ldq);
    float* inv = scratch(tls.inv, s.M);
    int32_t* sum = scratch(tls.sum, s.M);
    at::parallel_for(0, s.M, grain_for(s.M, s.K), [&](int64_t m0, int64_t m1) {
      ks.quantize(xf, s.K, s.K, m0, m1, q, p.ldq, inv, sum);
    });
    p.xq = q;
    p.x_inv = inv;
    p.x_sum = sum;
    fn = f == WeightFormat::I8 ? ks.i8_int8 : ks.i2_int8;
  } else {
    p.xf = xf;
    p.ldx = s.K;
    fn = f == WeightFormat::I8 ? ks.i8_none : ks.i2_none;
  }
  const int64_t units = f == WeightFormat::I8 ? s.N : i2_packed_rows(s.N);
  const int64_t rows_per_unit = f == WeightFormat::I8 ? 1 : kI2RowsPerByte;
  at::parallel_for(0, units, grain_for(units, s.M * s.K * rows_per_unit),
                   [&](int64_t u0, int64_t u1) { fn(p, u0, u1); });

  if (!direct_out) out.view({s.M, s.N}).copy_(at::from_blob(p.y, {s.M, s.N}, at::kFloat));
  return out;
}

at::Tensor linear_i8_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                         const c10::optional<at::Tensor>& bias, c10::string_view act) {
  return linear_cpu(WeightFormat::I8, x, weight, scale, 0, bias, act);
}

at::Tensor linear_i2_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                         int64_t out_features, const c10::optional<at::Tensor>& bias,
                         c10::string_view act) {
  return linear_cpu(WeightFormat::I2, x, weight, scale, out_features, bias, act);
}

std::vector<std::string> cpu_kernels_available() {
  std::vector<std::string> names;
  for (int i = 0; i < cpu::available_kernel_count(); ++i)
    names.emplace_back(cpu::available_kernel(i).name);
  return names;
}

}  // namespace

TORCH_LIBRARY(ternary, m) {
  m.def("linear_i8(Tensor x, Tensor weight, Tensor scale, Tensor? bias, str act) -> Tensor");
  m.def(
      "linear_i2(Tensor x, Tensor weight, Tensor scale, int out_features, Tensor? bias, str act) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(ternary, CPU, m) {
  m.impl("linear_i8", &linear_i8_cpu);
  m.impl("linear_i2", &linear_i2_cpu);
}

}  // namespace ternary

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ternary_ops native kernels; the ops themselves are torch.ops.ternary.*";
  m.def("cpu_kernel", [] { return std::string(ternary::cpu::selected_kernels().name); },
        "Name of the CPU kernel set that serves the ternary ops.");
  m.def("cpu_kernels_available", &ternary::cpu_kernels_available,
        "CPU kernel sets this build and this CPU can run, best first.");
  m.def(
      "select_cpu_kernel",
      [](const std::string& name) {
        const bool ok = ternary::cpu::select_kernels(name == "auto" ? nullptr : name.c_str());
        TORCH_CHECK_VALUE(ok, "select_cpu_kernel: '", name, "' is not available here; expected 'auto' or one of the sets ternary_ops.cpu_kernels_available() lists");
      },
      "Force a CPU kernel set by name for this process ('auto' restores the default).");
  m.def("has_cuda", [] {
#if defined(TERNARY_HAVE_CUDA)
    return true;
#else
    return false;
#endif
  });
  m.def("has_mps", [] {
#if defined(TERNARY_HAVE_MPS)
    return true;
#else
    return false;
#endif
  });
}
