// cpu/neon/sets.h: the ARM NEON kernel sets behind the CPU dispatcher (cpu/dispatch.cpp).
//
// Three sets, one per feature level, each in its own translation unit built with its own -march
// (tools/kernel_build.py picks the flags from the file-name suffix), so one binary serves every
// AArch64 core and the probes below (built without ISA flags) choose at run time:
//   neon_i8mm     SMMLA (vmmlaq_s32) for M >= 2, SDOT for M = 1     (armv8.6-a+dotprod+i8mm)
//   neon_dotprod  SDOT (vdotq_s32)                                   (armv8.2-a+dotprod)
//   neon          SMULL/SMLAL + SADALP, no dotprod needed            (armv8-a)
#pragma once

#include "cpu/kernels.h"

namespace ternary::cpu::neon {

// Each returns nullptr when the running CPU lacks the set's features.
const KernelSet* i8mm_kernels();
const KernelSet* dotprod_kernels();
const KernelSet* baseline_kernels();

namespace detail {
// The sets themselves, defined in set_i8mm.cpp, set_dotprod.cpp and set_base.cpp. Only the
// probes may hand them out: calling into one on a CPU without its features is SIGILL.
const KernelSet& i8mm_set();
const KernelSet& dotprod_set();
const KernelSet& baseline_set();
}  // namespace detail

}  // namespace ternary::cpu::neon
