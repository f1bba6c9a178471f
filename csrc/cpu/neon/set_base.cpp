// cpu/neon/set_base.cpp: the "neon" kernel set, plain ARMv8-A Advanced SIMD (every AArch64
// core), for CPUs without dotprod (e.g. Cortex-A53/A72): SMULL/SMLAL into int16, SADALP into
// int32.
#include "cpu/neon/common.h"
#include "cpu/neon/sets.h"

namespace ternary::cpu::neon {

// act=int8: M = 1 8 rows in flight (i2: 2 byte rows = 8 outputs), M > 1 4 rows x 2 activation
// rows; unshifted i2 codes (int16 lanes). q8: the same tiles, int16 lanes flushed 4x as often.
const KernelSet& detail::baseline_set() {
  static const KernelSet set{
      "neon", quantize_rows,
      linear_int8_one_dot<SmullDot, I8Rows<8>, I8Rows<4>>, linear_none<false>,
      linear_int8_one_dot<SmullDot, I2Rows<2, false>, I2Rows<1, false>>, linear_none<true>,
      linear_int8_one_dot<SmullDotQ8, I8Rows<8>, I8Rows<4>>};
  return set;
}

}  // namespace ternary::cpu::neon
