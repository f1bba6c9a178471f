// cpu/x86/avx512.h: what the two AVX-512 sets share: the avx512_vnni kernels and tail masks.
//
// The kernels are defined in set_avx512.cpp (the avx512_vnni set); set_amx.cpp (the avx512_amx
// set) calls them for every path its tiles do not take. Call only on CPUs the avx512_vnni probe
// accepts. Include only from TUs built with AVX-512 flags; the masks have internal linkage (see
// common.h).
#pragma once
#include <immintrin.h>

#include "cpu/kernels.h"
#include "cpu/x86/common.h"

namespace ternary::cpu::x86 {
namespace {

// The first n lanes (all of them when n >= 64 / 16).
TERNARY_INLINE __mmask64 tail_mask64(int64_t n) {
  return n >= 64 ? ~__mmask64(0) : ((__mmask64(1) << n) - 1);
}
TERNARY_INLINE __mmask16 tail_mask16(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
}

}  // namespace

namespace avx512 {
void quantize(const float* x, int64_t ldx, int64_t K, int64_t m0, int64_t m1, int8_t* q,
              int64_t ldq, float* inv, int32_t* sum);
void i8_int8(const Problem& p, int64_t n0, int64_t n1);
void i8_none(const Problem& p, int64_t n0, int64_t n1);
void i2_int8(const Problem& p, int64_t j0, int64_t j1);
void i2_none(const Problem& p, int64_t j0, int64_t j1);
void q8_int8(const Problem& p, int64_t n0, int64_t n1);
}  // namespace avx512

}  // namespace ternary::cpu::x86
