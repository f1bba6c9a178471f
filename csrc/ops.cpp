// ops.cpp: the op schemas (the one TORCH_LIBRARY block) and the Python module ternary_ops._C.
// Each device registers its kernels in its own glue file (csrc/aten/ops_<device>), on the frame
// of csrc/aten/linear_frame.h.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace ternary {
namespace {

#if defined(TERNARY_HAVE_CUDA)
constexpr bool kBuiltWithCuda = true;
#else
constexpr bool kBuiltWithCuda = false;
#endif
#if defined(TERNARY_HAVE_MPS)
constexpr bool kBuiltWithMps = true;
#else
constexpr bool kBuiltWithMps = false;
#endif

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
  // Int8 weights in [-127, 127] with a per-row or per-tensor scale (e.g. a quantized output
  // head); the same act modes and integer path as the ternary ops.
  m.def("linear_q8(Tensor x, Tensor weight, Tensor scale, Tensor? bias, str act) -> Tensor");
  // act="int8" of RMSNorm(x) * norm_weight, the norm folded into the quantization of x
  // (docs/DESIGN.md, "Op semantics").
  m.def(
      "rms_norm_linear_i8(Tensor x, Tensor norm_weight, float eps, Tensor weight, Tensor scale, "
      "Tensor? bias) -> Tensor");
  m.def(
      "rms_norm_linear_i2(Tensor x, Tensor norm_weight, float eps, Tensor weight, Tensor scale, "
      "int out_features, Tensor? bias) -> Tensor");
  // Internal: the tensor-core GEMMs of the CUDA ops at large M, for i2 (uint8) or int8 weights,
  // into out [M, N]. act="int8" over the quantize pre-pass's q [M, Kp] int8 (zero past K) and
  // inv [M] float32; act="none" over x [M, K] (bfloat16 / float16). No kernels here:
  // ternary_ops/cuda_mma.py registers Triton ones where Triton is installed, and the CUDA glue
  // calls them where registered.
  m.def(
      "_mma_int8(Tensor q, Tensor inv, Tensor weight, Tensor scale, int out_features, "
      "Tensor? bias, Tensor(a!) out) -> ()");
  m.def(
      "_mma_float(Tensor x, Tensor weight, Tensor scale, int out_features, Tensor? bias, "
      "Tensor(a!) out) -> ()");
}

}  // namespace ternary

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ternary_ops native kernels; the ops themselves are torch.ops.ternary.*";
  m.def("cpu_kernel", [] { return std::string(ternary::cpu::selected_kernels().name); },
        "Name of the CPU kernel set that serves the ternary ops.");
  m.def("cpu_decode_kernel", [] { return std::string(ternary::cpu::decode_i2_kernels().name); },
        "Name of the CPU kernel set that serves M = 1 i2 act='int8' products.");
  m.def("cpu_kernels_available", &ternary::cpu_kernels_available,
        "CPU kernel sets this build and this CPU can run, best first.");
  m.def(
      "select_cpu_kernel",
      [](const std::string& name) {
        const bool ok = ternary::cpu::select_kernels(name == "auto" ? nullptr : name.c_str());
        TORCH_CHECK_VALUE(ok, "select_cpu_kernel: '", name,
                          "' is not available here; expected 'auto' or one of the sets "
                          "ternary_ops.cpu_kernels_available() lists");
      },
      "Force a CPU kernel set by name for this process ('auto' restores the default).");
  m.def("has_cuda", [] { return ternary::kBuiltWithCuda; }, "Whether this build has CUDA kernels.");
  m.def("has_mps", [] { return ternary::kBuiltWithMps; }, "Whether this build has MPS kernels.");
}
