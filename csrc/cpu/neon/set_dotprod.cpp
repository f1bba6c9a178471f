// cpu/neon/set_dotprod.cpp: the "neon_dotprod" kernel set (ARMv8.2-A dotprod: Neoverse N1,
// Cortex-A76+, Apple M1+). SDOT with 8 output rows in flight for M = 1; 4 rows x 2 activation
// rows for M > 1. i2 codes are isolated by AND alone (I2Rows<., true>), the x_sum correction
// once per output.
#include "cpu/neon/common.h"
#include "cpu/neon/sets.h"

#if !defined(__ARM_FEATURE_DOTPROD)
#error "set_dotprod.cpp needs -march=armv8.2-a+dotprod (tools/kernel_build.py)"
#endif

namespace ternary::cpu::neon {

const KernelSet& detail::dotprod_set() {
  static const KernelSet set{
      "neon_dotprod", quantize_rows,
      linear_int8_one_dot<SdotDot, I8Rows<8>, I8Rows<4>>, linear_none<false>,
      linear_int8_one_dot<SdotDot, I2Rows<2, true>, I2Rows<1, true>>, linear_none<true>,
      linear_int8_one_dot<SdotDot, I8Rows<8>, I8Rows<4>>};  // q8: SDOT takes any int8
  return set;
}

}  // namespace ternary::cpu::neon
