// cpu/x86/avx512.h: declarations of the AVX-512 VNNI kernels that set_amx.cpp reuses.
//
// Defined in set_avx512.cpp (the avx512_vnni set); the avx512_amx set calls them for every path
// its tiles do not take. Call only on CPUs the avx512_vnni probe accepts.
#pragma once
#include "cpu/kernels.h"

namespace ternary::cpu::x86::avx512 {
void quantize(const float* x, int64_t ldx, int64_t K, int64_t m0, int64_t m1, int8_t* q,
              int64_t ldq, float* inv, int32_t* sum);
void i8_int8(const Problem& p, int64_t n0, int64_t n1);
void i8_none(const Problem& p, int64_t n0, int64_t n1);
void i2_int8(const Problem& p, int64_t j0, int64_t j1);
void i2_none(const Problem& p, int64_t j0, int64_t j1);
}  // namespace ternary::cpu::x86::avx512
