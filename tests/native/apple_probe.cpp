// apple_probe.cpp: the Apple branch of csrc/cpu/neon/detect.cpp (sysctlbyname) run on Linux
// with stubbed answers, through the real dispatcher (csrc/cpu/dispatch.cpp). Built and run by
// tests/test_apple_arm64.py: detect.cpp is compiled unchanged with __APPLE__ defined (and
// tests/apple_sdk for <sys/sysctl.h>), dispatch.cpp with TERNARY_HAVE_NEON; this file supplies
// sysctlbyname and stand-ins for the three NEON kernel sets, named as the real ones (-D
// TERNARY_NAME_I8MM etc.; their kernels are never called).
//
//   apple_probe [NAME=ANSWER ...]
//
// ANSWER is the integer the key holds, or "err" (sysctlbyname fails with ENOENT, as for a key
// this macOS does not have); a name not listed fails the same way. Prints
//   queried: NAME ...   every name asked, in order
//   available: SET ...  the kernel sets, best first
//   selected: SET
// and exits 3 if detect.cpp called sysctlbyname other than as a read of one int.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <sys/sysctl.h>

#include "cpu/kernels.h"
#include "cpu/neon/sets.h"

namespace {
std::map<std::string, std::string> g_answers;
std::vector<std::string> g_queried;
bool g_bad_call = false;

ternary::cpu::KernelSet named(const char* name) {
  ternary::cpu::KernelSet s{};
  s.name = name;
  return s;
}
}  // namespace

extern "C" int sysctlbyname(const char* name, void* oldp, size_t* oldlenp, void* newp,
                            size_t newlen) {
  g_queried.emplace_back(name);
  if (oldp == nullptr || oldlenp == nullptr || *oldlenp != sizeof(int) || newp != nullptr ||
      newlen != 0)
    g_bad_call = true;
  auto it = g_answers.find(name);
  if (it == g_answers.end() || it->second == "err") {
    errno = ENOENT;
    return -1;
  }
  const int value = std::atoi(it->second.c_str());
  std::memcpy(oldp, &value, sizeof value);
  *oldlenp = sizeof value;
  return 0;
}

namespace ternary::cpu::neon::detail {
const KernelSet& i8mm_set() {
  static const KernelSet s = named(TERNARY_NAME_I8MM);
  return s;
}
const KernelSet& dotprod_set() {
  static const KernelSet s = named(TERNARY_NAME_DOTPROD);
  return s;
}
const KernelSet& baseline_set() {
  static const KernelSet s = named(TERNARY_NAME_BASE);
  return s;
}
}  // namespace ternary::cpu::neon::detail

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const char* eq = std::strchr(argv[i], '=');
    if (eq == nullptr) {
      std::fprintf(stderr, "expected NAME=ANSWER, got %s\n", argv[i]);
      return 2;
    }
    g_answers[std::string(argv[i], static_cast<size_t>(eq - argv[i]))] = eq + 1;
  }
  namespace cpu = ternary::cpu;
  std::string available;
  for (int i = 0; i < cpu::available_kernel_count(); ++i)
    available += std::string(" ") + cpu::available_kernel(i).name;
  const char* selected = cpu::selected_kernels().name;
  std::printf("queried:");
  for (const std::string& q : g_queried) std::printf(" %s", q.c_str());
  std::printf("\navailable:%s\nselected: %s\n", available.c_str(), selected);
  return g_bad_call ? 3 : 0;
}
