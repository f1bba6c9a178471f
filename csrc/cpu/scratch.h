// cpu/scratch.h: per-thread scratch buffers, shared by the CPU glue and the kernel sets that
// stage data (AMX). A buffer is reused across calls, so steady decoding allocates nothing; one
// that a call grew past kScratchKeepBytes is freed when that call ends, so a long-running
// process does not hold its largest call's memory for good. Internal linkage: ISA-flagged TUs
// include this (see cpu/x86/common.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ternary::cpu {
namespace {

constexpr size_t kScratchKeepBytes = size_t(16) << 20;

// buf's data, grown to at least n elements.
template <typename T>
T* scratch(std::vector<T>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// Frees buf if it holds more than kScratchKeepBytes.
template <typename T>
void release_if_large(std::vector<T>& buf) {
  if (buf.capacity() * sizeof(T) > kScratchKeepBytes) std::vector<T>().swap(buf);
}

}  // namespace
}  // namespace ternary::cpu
