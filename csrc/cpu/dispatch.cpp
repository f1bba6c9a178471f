// dispatch.cpp: picks the CPU kernel set once per process. Backends register a probe that
// returns their set when both this build and this CPU support it (nullptr otherwise).
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.h"

#if defined(TERNARY_HAVE_X86)
#include "cpu/x86/sets.h"
#endif
#if defined(TERNARY_HAVE_NEON)
#include "cpu/neon/sets.h"
#endif

namespace ternary::cpu {
namespace {

using Probe = const KernelSet* (*)();

// Best first. The portable set closes every list.
std::vector<const KernelSet*> detect() {
  const Probe probes[] = {
#if defined(TERNARY_HAVE_X86)
      x86::avx512_amx_kernels,
      x86::avx512_vnni_kernels,
      x86::avxvnni_kernels,
      x86::avx2_kernels,
#endif
#if defined(TERNARY_HAVE_NEON)
      neon::i8mm_kernels,
      neon::dotprod_kernels,
      neon::baseline_kernels,
#endif
      nullptr};
  std::vector<const KernelSet*> sets;
  for (Probe probe : probes) {
    if (probe == nullptr) break;
    if (const KernelSet* s = probe()) sets.push_back(s);
  }
  sets.push_back(&portable_kernels());
  return sets;
}

const std::vector<const KernelSet*>& available() {
  static const std::vector<const KernelSet*> sets = detect();
  return sets;
}

const KernelSet* find(const char* name) {
  for (const KernelSet* s : available())
    if (std::strcmp(s->name, name) == 0) return s;
  return nullptr;
}

std::string names() {
  std::string out;
  for (const KernelSet* s : available()) out += (out.empty() ? "" : ", ") + std::string(s->name);
  return out;
}

std::atomic<const KernelSet*> g_selected{nullptr};
std::atomic<bool> g_forced{false};  // a set named by TERNARY_OPS_KERNEL or select_kernels()

const KernelSet* default_selection() {
  const char* forced = std::getenv("TERNARY_OPS_KERNEL");
  if (forced == nullptr || *forced == '\0' || std::strcmp(forced, "auto") == 0)
    return available().front();
  g_forced.store(true, std::memory_order_release);
  if (const KernelSet* s = find(forced)) return s;
  throw std::runtime_error(std::string("TERNARY_OPS_KERNEL=") + forced +
                           " is not available on this CPU/build; expected one of: auto, " +
                           names());
}

}  // namespace

int available_kernel_count() { return static_cast<int>(available().size()); }
const KernelSet& available_kernel(int i) { return *available().at(static_cast<size_t>(i)); }

// Lock-free on the hot path; a first-use race just computes the same answer twice.
const KernelSet& selected_kernels() {
  const KernelSet* s = g_selected.load(std::memory_order_acquire);
  if (s == nullptr) {
    s = default_selection();
    g_selected.store(s, std::memory_order_release);
  }
  return *s;
}

bool select_kernels(const char* name) {
  const KernelSet* s = name == nullptr ? nullptr : find(name);
  if (name != nullptr && s == nullptr) return false;
  g_forced.store(s != nullptr, std::memory_order_release);
  g_selected.store(s, std::memory_order_release);
  return true;
}

const KernelSet& decode_i2_kernels() {
  const KernelSet& selected = selected_kernels();
  if (g_forced.load(std::memory_order_acquire)) return selected;
#if defined(TERNARY_HAVE_X86)
  static const KernelSet* const preferred = x86::decode_i2_kernels();
#else
  static const KernelSet* const preferred = nullptr;
#endif
  return preferred != nullptr ? *preferred : selected;
}

}  // namespace ternary::cpu
