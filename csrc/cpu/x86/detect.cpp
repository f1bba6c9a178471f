// cpu/x86/detect.cpp: CPU feature probes for the x86 kernel sets. Built WITHOUT ISA flags: it
// only reads CPUID/XCR0 and never runs a SIMD instruction, so it is safe on any x86-64 CPU.
#include <cpuid.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu/x86/sets.h"

namespace ternary::cpu::x86 {
namespace {

struct Features {
  bool avx2 = false, fma = false, avx512 = false, avx512_vnni = false, avxvnni = false;
  bool amx_int8 = false;
  bool amd = false;
};

uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

Features read_features() {
  Features f;
  unsigned a, b, c, d;
  if (__get_cpuid(0, &a, &b, &c, &d))  // vendor string in ebx, edx, ecx
    f.amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;  // "AuthenticAMD"
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
  f.fma = (c >> 12) & 1;
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
  const bool os_zmm = (xcr0 & 0xE6) == 0xE6;          // + opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_tile = (xcr0 & (3u << 17)) == (3u << 17);  // XTILECFG + XTILEDATA
  if (!os_ymm || __get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = (b >> 5) & 1;
  const bool avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1, avx512bw = (b >> 30) & 1,
             avx512vl = (b >> 31) & 1;
  f.avx512 = os_zmm && avx512f && avx512dq && avx512bw && avx512vl && f.fma && f.avx2;
  f.avx512_vnni = f.avx512 && ((c >> 11) & 1);
  f.amx_int8 = f.avx512_vnni && os_tile && ((d >> 24) & 1) && ((d >> 25) & 1);
  unsigned a1, b1, c1, d1;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  f.avxvnni = f.avx2 && f.fma && ((a1 >> 4) & 1);
  return f;
}

const Features& features() {
  static const Features f = read_features();
  return f;
}

}  // namespace

namespace detail {
bool amx_enable() {
#if defined(__linux__)
  static const bool ok = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}
}  // namespace detail

const KernelSet* avx512_amx_kernels() {
  return features().amx_int8 && detail::amx_enable() ? &detail::avx512_amx_set() : nullptr;
}
const KernelSet* avx512_vnni_kernels() {
  return features().avx512_vnni ? &detail::avx512_vnni_set() : nullptr;
}
const KernelSet* avxvnni_kernels() {
  return features().avxvnni ? &detail::avxvnni_set() : nullptr;
}
const KernelSet* decode_i2_kernels() {
  const Features& f = features();
  return f.amd && f.avx512_vnni && f.avxvnni ? &detail::avxvnni_set() : nullptr;
}
const KernelSet* avx2_kernels() {
  return features().avx2 && features().fma ? &detail::avx2_set() : nullptr;
}

}  // namespace ternary::cpu::x86
