// ternary_format.h: the weight formats, defined once for every backend (C++, CUDA, harnesses).
// See DESIGN.md. No torch headers here: kernels and test harnesses include this alone.
#pragma once
#include <cstdint>

namespace ternary {

// i8 ("int8 direct"): int8 [N, K], row-major, each byte is -1, 0 or +1.
//
// i2 (2-bit packed, Hugging Face BitNet layout): uint8 [R, K] with R = ceil(N / 4).
// Byte [j, k] holds output rows j, j+R, j+2R, j+3R of column k in bit pairs 0-1, 2-3, 4-5, 6-7.
// A code is w + 1: 00 = -1, 01 = 0, 10 = +1, 11 invalid. Padding rows (n >= N) hold code 01.
constexpr int kI2RowsPerByte = 4;
constexpr int kI2BitsPerCode = 2;
constexpr uint8_t kI2CodeMask = 0x3;
constexpr uint8_t kI2CodeZero = 0x1;    // the code of w = 0
constexpr uint8_t kI2CodeInvalid = 0x3;
constexpr uint8_t kI2ZeroByte = 0x55;   // four zero codes: what padding bytes hold

constexpr int64_t i2_packed_rows(int64_t n) { return (n + kI2RowsPerByte - 1) / kI2RowsPerByte; }

// The code of output row n sits in byte row (n % R) at bit pair (n / R).
constexpr int64_t i2_byte_row(int64_t n, int64_t R) { return n % R; }
constexpr int i2_shift(int64_t n, int64_t R) { return static_cast<int>(n / R) * kI2BitsPerCode; }

// Decode one code to its weight. Codes 0..2 map to -1..+1.
constexpr int i2_decode(uint8_t byte, int shift) {
  return static_cast<int>((byte >> shift) & kI2CodeMask) - 1;
}

// act="int8": activations are quantized per row to int8 with inv = 127 / max|x|
// (max clamped below at kActEps), q = round_half_even(x * inv) clamped to [-128, 127].
constexpr float kActQMax = 127.0f;
constexpr float kActEps = 1e-5f;

}  // namespace ternary
