// standin.cpp: a Linux stand-in for csrc/aten/ops_mps.mm, built by tests/test_build.py through
// setup.py (TERNARY_OPS_FORCE_MPS_GLUE=1 TERNARY_OPS_MPS_GLUE_SOURCE=<this file>) into the
// optional module ternary_ops._C_mps. It takes from the project exactly what the real glue takes
// (the op frame and checks, the Metal launch plan, the generated Metal source header) and
// registers the same three MPS kernels, so the test proves on Linux that the glue's module
// builds from headers alone, loads after ternary_ops._C (every symbol it needs resolves without
// _C's), and that its registration reaches the schemas _C defines. No Metal here: past the
// shared validation, the kernel raises.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <string>

#include "aten/linear_frame.h"
#include "metal/metal_source.h"
#include "metal/ternary_metal_config.h"

namespace ternary {
namespace {

namespace tm = ternary::metal;

at::Tensor linear_standin(WeightFormat f, const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& scale, int64_t out_features,
                          const c10::optional<at::Tensor>& bias, c10::string_view act,
                          const RmsNormArgs* norm) {
  LinearCall c =
      prepare_linear(f, c10::DeviceType::MPS, x, weight, scale, out_features, bias, act, norm);
  if (c.done) return c.out;
  const LinearShape& s = c.shape;
  const bool i2 = f == WeightFormat::I2, act_int8 = s.act == ActMode::Int8;
  const tm::Launch L = tm::plan_launch(i2, act_int8, s.M, s.N, s.K,
                                       static_cast<int>(x.element_size()), 32768);
  tm::Params p{};
  p.units = static_cast<uint32_t>(tm::row_units(i2, s.N));
  p.w_aligned = tm::weight_rows_aligned(0, s.K) ? 1 : 0;
  TORCH_CHECK(false, op_name(f), ": stand-in MPS glue, no Metal here: would run ",
              tm::kernel_name(L.path, i2, act_int8, TERNARY_DT_F32), " (", p.units,
              " row units) from ", std::strlen(kTernaryMetalSource), " bytes of Metal source");
  return c.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ternary, MPS, m) {
  m.impl("linear_i8", &linear_i8_entry<linear_standin>);
  m.impl("linear_i2", &linear_i2_entry<linear_standin>);
  m.impl("linear_q8", &linear_q8_entry<linear_standin>);
}

}  // namespace ternary
