// cpu/x86/sets.h: the x86-64 SIMD kernel sets (torch-free). Each set lives in its own
// translation unit built with its own -m flags (file-name suffix, tools/kernel_build.py); the
// probes below run in a TU built without ISA flags and return nullptr when the running CPU (or
// OS) lacks what the set needs, so one binary runs on any x86-64 CPU.
#pragma once
#include "cpu/kernels.h"

namespace ternary::cpu::x86 {

// AVX-512 (F/BW/VL/DQ) + VNNI kernels for M > 1 int8 products on AMX-INT8 tiles; everything
// else as avx512_vnni. Needs AMX-TILE, AMX-INT8 and the OS granting tile state (Linux >= 5.16).
const KernelSet* avx512_amx_kernels();
// AVX-512 F/BW/VL/DQ + VNNI: vpdpbusd for act="int8", vpermps sign lookup + FMA for act="none".
const KernelSet* avx512_vnni_kernels();
// AVX2 + FMA + AVX-VNNI (256-bit vpdpbusd; Alder Lake and later, Zen 5).
const KernelSet* avxvnni_kernels();
// AVX2 + FMA: vpmaddubsw/vpmaddwd for act="int8".
const KernelSet* avx2_kernels();

// The set for M = 1 i2 act="int8" products (batch-1 decode) when it is not the best set, else
// nullptr. On AMD CPUs with both AVX-512 VNNI and AVX-VNNI (Zen 5) the 256-bit avxvnni kernel
// streams packed weights at the memory's speed and the AVX-512 one does not
// (docs/perf-notes.md).
const KernelSet* decode_i2_kernels();

// The sets themselves, defined in the ISA translation units. Only call them through the probes.
namespace detail {
const KernelSet& avx512_amx_set();
const KernelSet& avx512_vnni_set();
const KernelSet& avxvnni_set();
const KernelSet& avx2_set();
// Requests AMX tile state from the OS once per process; true when tiles may be used.
bool amx_enable();
}  // namespace detail

}  // namespace ternary::cpu::x86
