// cpu/neon/detect.cpp: runtime feature probes for the NEON kernel sets. Built without ISA flags:
// nothing here may execute a dotprod or i8mm instruction.
#include "cpu/neon/sets.h"

#if defined(__linux__)
#include <sys/auxv.h>
// Older kernel headers lack these bits; the values are the Linux ABI (arch/arm64 uapi hwcap.h).
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace ternary::cpu::neon {
namespace {

struct Features {
  bool asimd = false, dotprod = false, i8mm = false;
};

#if defined(__APPLE__)
bool sysctl_flag(const char* name) {
  int value = 0;
  size_t size = sizeof value;
  return sysctlbyname(name, &value, &size, nullptr, 0) == 0 && value != 0;
}
#endif

Features probe() {
  Features f;
#if defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  f.asimd = (hw & HWCAP_ASIMD) != 0;
  f.dotprod = f.asimd && (hw & HWCAP_ASIMDDP) != 0;
  f.i8mm = f.dotprod && (hw2 & HWCAP2_I8MM) != 0;
#elif defined(__APPLE__)
  f.asimd = true;  // every Apple arm64 core
  f.dotprod = sysctl_flag("hw.optional.arm.FEAT_DotProd");
  f.i8mm = f.dotprod && sysctl_flag("hw.optional.arm.FEAT_I8MM");
#endif
  return f;
}

const Features& features() {
  static const Features f = probe();
  return f;
}

}  // namespace

const KernelSet* i8mm_kernels() { return features().i8mm ? &detail::i8mm_set() : nullptr; }
const KernelSet* dotprod_kernels() {
  return features().dotprod ? &detail::dotprod_set() : nullptr;
}
const KernelSet* baseline_kernels() {
  return features().asimd ? &detail::baseline_set() : nullptr;
}

}  // namespace ternary::cpu::neon
