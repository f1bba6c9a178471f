// ternary_format.h: the weight formats and the activation constants, defined once for every
// backend: host C++ (the glue, the CPU tier, harnesses), CUDA device code, the Metal source
// (the .metal files include it; tools/metal_source.py inlines it into the embedded source) and
// the Metal emulator.
// See docs/DESIGN.md. No torch headers and no standard library beyond fixed-width integers.
#pragma once

#if defined(__METAL_VERSION__)
#include <metal_stdlib>
// Metal keeps program-scope constants in the constant address space.
#define TERNARY_FORMAT_CONST constant constexpr
#define TERNARY_FORMAT_FN inline constexpr
#else
#include <cstdint>
#define TERNARY_FORMAT_CONST inline constexpr
#if defined(__CUDACC__)
#define TERNARY_FORMAT_FN __host__ __device__ inline constexpr
#else
#define TERNARY_FORMAT_FN inline constexpr
#endif
#endif

namespace ternary {

// i8 ("int8 direct"): int8 [N, K], row-major, each byte is -1, 0 or +1.
//
// i2 (2-bit packed, Hugging Face BitNet layout): uint8 [R, K] with R = ceil(N / 4).
// Byte [j, k] holds output rows j, j+R, j+2R, j+3R of column k in bit pairs 0-1, 2-3, 4-5, 6-7.
// A code is w + 1: 00 = -1, 01 = 0, 10 = +1, 11 invalid. Padding rows (n >= N) hold code 01.
TERNARY_FORMAT_CONST int kI2RowsPerByte = 4;
TERNARY_FORMAT_CONST int kI2BitsPerCode = 2;
TERNARY_FORMAT_CONST uint8_t kI2CodeMask = 0x3;
TERNARY_FORMAT_CONST uint8_t kI2CodeZero = 0x1;     // the code of w = 0
TERNARY_FORMAT_CONST uint8_t kI2CodeInvalid = 0x3;
TERNARY_FORMAT_CONST uint8_t kI2ZeroByte = 0x55;    // four zero codes: what padding bytes hold
// Kernels decode four bytes at once: (word >> i2_shift) & kI2CodeMaskX4 gives one code per byte.
TERNARY_FORMAT_CONST uint32_t kI2CodeMaskX4 = 0x03030303u;

// Byte rows of an i2 tensor with n output rows (the "units" of i2 kernels: one byte row feeds
// four outputs). Any integer type, so 32-bit device code needs no casts.
template <typename I>
TERNARY_FORMAT_FN I i2_packed_rows(I n) {
  return n / kI2RowsPerByte + (n % kI2RowsPerByte != 0);  // no overflow near the type's maximum
}

// The row units kernels split work by: output rows for i8, byte rows (four outputs each) for i2.
template <typename I>
TERNARY_FORMAT_FN I weight_units(bool i2, I n) { return i2 ? i2_packed_rows(n) : n; }

// The code of output row n sits in byte row (n % R) at bit pair (n / R).
template <typename I>
TERNARY_FORMAT_FN I i2_byte_row(I n, I R) { return n % R; }
template <typename I>
TERNARY_FORMAT_FN int i2_shift(I n, I R) { return static_cast<int>(n / R) * kI2BitsPerCode; }

// Decode one code to its weight. Codes 0..2 map to -1..+1.
TERNARY_FORMAT_FN int i2_decode(uint8_t byte, int shift) {
  return static_cast<int>((byte >> shift) & kI2CodeMask) - 1;
}

// act="int8": activations are quantized per row to int8 with inv = kActQMax / max|x| (max
// clamped below at kActEps), q = round_half_even(x * inv) clamped to [-128, 127].
TERNARY_FORMAT_CONST float kActQMax = 127.0f;
TERNARY_FORMAT_CONST float kActEps = 1e-5f;
// Largest K for act="int8": kernels sum int32 dots, |dot| <= 128 K < 2^31.
TERNARY_FORMAT_CONST int64_t kActMaxK = (int64_t(1) << 24) - 1;

// The rms_norm_linear ops' mean square (docs/DESIGN.md): x rounded to kNormQMax steps of
// max(max|x_row|, kNormAmaxMin), an exact integer sum of squares, then float32 steps in a fixed
// order.
TERNARY_FORMAT_CONST float kNormQMax = 32767.0f;
TERNARY_FORMAT_CONST float kNormAmaxMin = 1e-30f;
TERNARY_FORMAT_CONST float kF32MinNormal = 1.17549435e-38f;  // 2^-126

// Format q8 (int8 weights in [-127, 127] with a scale per row or tensor: the quantized output
// head). Largest K for act="int8": SIMD kernels without a signed x signed dot add 128 to each
// weight (an unsigned operand 1..255) and subtract 128 * sum(q) afterwards, so their int32
// accumulators reach 255 * 128 * K < 2^31.
TERNARY_FORMAT_CONST int64_t kQ8ActMaxK = int64_t(1) << 16;
TERNARY_FORMAT_CONST int kQ8WeightMax = 127;
TERNARY_FORMAT_CONST int kQ8Offset = 128;

// A row of x holding NaN or +-Inf gives an all-NaN output row (docs/DESIGN.md). Kernels find
// such rows in the amax pass by taking the maximum of |x|'s bit pattern as an unsigned integer:
// for non-negative floats it orders like the value, and NaN and Inf have the largest patterns,
// so a NaN cannot drop out the way it does from a float max.
TERNARY_FORMAT_CONST uint32_t kF32AbsMask = 0x7fffffffu;
TERNARY_FORMAT_CONST uint32_t kF32InfBits = 0x7f800000u;
TERNARY_FORMAT_FN bool act_row_finite(uint32_t amax_bits) { return amax_bits < kF32InfBits; }

// Quantized activation rows are zero-padded to a multiple of kActPad columns, so SIMD and GPU
// kernels may read q (never the weights) in whole 64-byte steps past K.
TERNARY_FORMAT_CONST int kActPad = 64;
template <typename I>
TERNARY_FORMAT_FN I act_padded_k(I K) { return (K + kActPad - 1) / kActPad * kActPad; }

}  // namespace ternary
