// ternary_metal_config.h: the launch geometry of the Metal kernels, in one place.
//
// Included by the Objective-C++ glue (csrc/aten/ops_mps.mm), by csrc/ops.cpp (which hands the
// macros and plan_launch to Python for the torch.mps.compile_shader path,
// ternary_ops/mps_shader.py) and by the CPU emulation harness (tests/metal_emu/harness.cpp).
// The Metal source does not include it: the glue hands the TERNARY_* constants below to the
// Metal compiler as preprocessor macros (mps_shader.py as #define lines ahead of the source),
// and the harness defines them by including this file before the .metal text, so the kernels,
// the glue and the tests cannot disagree on them. The weight format itself (i2 byte rows, codes) is
// csrc/ternary_format.h, which the kernels include too.
#pragma once

// ---- compile-time constants the kernels are built with (passed as macros) ----
// matvec (M == 1): one simdgroup per group of rows, several simdgroups per threadgroup.
#define TERNARY_MV_SIMDGROUPS 4  // simdgroups per matvec threadgroup
#define TERNARY_MV_I8_ROWS 4     // i8: output rows per simdgroup
#define TERNARY_MV_I2_ROWS 2     // i2: byte rows per simdgroup (each feeds 4 output rows)
#define TERNARY_MV_CHUNK 16      // K elements one lane handles per step (one uint4 of i8/i2)
#define TERNARY_MV_HEADER 64     // bytes of reduction scratch ahead of the staged activations
// matmul (M > 1): BM x BN output tile per threadgroup, K staged BK at a time; every thread
// owns a TM x TN register block.
#define TERNARY_MM_BM 32
#define TERNARY_MM_BN 32
#define TERNARY_MM_BK 32
#define TERNARY_MM_TM 4
#define TERNARY_MM_TN 2
#define TERNARY_SIMD_WIDTH 32
// Threadgroup bytes of the matmul: float tiles x[BK][BM] and w[BK][BN], then inv[BM]
// (static_assert below). The glue sets it per dispatch; with TERNARY_STATIC_SMEM the kernel
// declares it itself.
#define TERNARY_MM_SMEM_BYTES 8320
// With TERNARY_STATIC_SMEM (the torch.mps.compile_shader path, ternary_ops/mps_shader.py, which
// cannot set a threadgroup memory length) the matvec declares this many bytes of threadgroup
// storage, and its launch plan takes it as the device limit: rows staged larger than this
// (act="int8": K > 16320; act="none": K > 8160 half, > 4080 float) run the matmul.
#define TERNARY_MV_STATIC_SMEM 16384
// dtype codes of x/y (the kernel's T), scale and bias.
#define TERNARY_DT_F32 0
#define TERNARY_DT_F16 1
#define TERNARY_DT_BF16 2

// Every constant the Metal compiler must see, for the glue to pass as preprocessor macros.
#define TERNARY_METAL_MACROS(X)                                                            \
  X(TERNARY_MV_SIMDGROUPS) X(TERNARY_MV_I8_ROWS) X(TERNARY_MV_I2_ROWS) X(TERNARY_MV_CHUNK) \
  X(TERNARY_MV_HEADER) X(TERNARY_MM_BM) X(TERNARY_MM_BN) X(TERNARY_MM_BK) X(TERNARY_MM_TM)  \
  X(TERNARY_MM_TN) X(TERNARY_SIMD_WIDTH) X(TERNARY_DT_F32) X(TERNARY_DT_F16) X(TERNARY_DT_BF16) \
  X(TERNARY_MM_SMEM_BYTES) X(TERNARY_MV_STATIC_SMEM)

// Host code. The emulation harness (METAL_EMU) compiles it too, after metal_emu.h, so that the
// format header it shares with the kernels is read there as the Metal source reads it.
#if !defined(__METAL_VERSION__) || defined(METAL_EMU)
#include <cstddef>
#include <cstdint>
#include <string>

#include "ternary_format.h"

namespace ternary::metal {

constexpr int kMvThreads = TERNARY_MV_SIMDGROUPS * TERNARY_SIMD_WIDTH;
constexpr int kMmThreads = (TERNARY_MM_BM / TERNARY_MM_TM) * (TERNARY_MM_BN / TERNARY_MM_TN);
static_assert(kMmThreads % TERNARY_SIMD_WIDTH == 0, "matmul threadgroup is whole simdgroups");
static_assert(TERNARY_MM_BN % kI2RowsPerByte == 0, "an i2 matmul tile covers whole byte rows");
static_assert((TERNARY_MM_BN / kI2RowsPerByte) % TERNARY_MM_TN == 0,
              "a thread's i2 outputs share a bit pair");
static_assert(TERNARY_MM_BM * TERNARY_MM_BK % kMmThreads == 0, "x tile loads evenly");
static_assert(TERNARY_MM_BN * TERNARY_MM_BK % kMmThreads == 0, "weight tile loads evenly");
static_assert(TERNARY_MM_SMEM_BYTES ==
                  4 * (TERNARY_MM_BK * (TERNARY_MM_BM + TERNARY_MM_BN) + TERNARY_MM_BM),
              "matmul threadgroup memory: float x[BK][BM], w[BK][BN], inv[BM]");
static_assert(TERNARY_MV_STATIC_SMEM % 16 == 0 && TERNARY_MV_STATIC_SMEM <= 32768,
              "static matvec storage: whole float4s, within every Apple GPU's 32 KiB");

// Scalar arguments of every kernel, bound with setBytes. Mirrors `LinearParams` in
// ternary_linear.metal field for field (the harness checks the layout at compile time).
struct Params {
  uint32_t M, N, K;
  uint32_t units;         // i8: N output rows; i2: R = i2_packed_rows(N) byte rows
  uint32_t scale_stride;  // 0: one scale; 1: one per output row
  uint32_t scale_dtype;   // TERNARY_DT_*
  uint32_t has_bias;
  uint32_t bias_dtype;    // TERNARY_DT_*
  uint32_t w_aligned;     // 1: weight rows may be read 16 bytes at a time
};

enum class Path { Matvec, Matmul };

struct Launch {
  Path path;
  uint32_t groups_x, groups_y;  // threadgroups in the grid
  uint32_t threads;             // threads per threadgroup
  uint32_t smem;                // threadgroup memory bytes (argument threadgroup(0))
};

inline uint32_t round_up(uint64_t v, uint64_t to) {
  return static_cast<uint32_t>((v + to - 1) / to * to);
}

// The row units the kernels iterate over (LinearParams::units): i8 rows, or i2 byte rows that
// each feed kI2RowsPerByte outputs.
inline uint64_t row_units(bool i2, int64_t N) {
  return static_cast<uint64_t>(weight_units(i2, N));
}

// Threadgroup bytes a matvec needs: the activation row is staged once per threadgroup, as int8
// codes (act="int8") or in x's dtype (act="none"), padded to whole chunks.
inline uint64_t mv_smem_bytes(bool act_int8, int64_t K, int elem_size) {
  const uint64_t kpad = round_up(static_cast<uint64_t>(K), TERNARY_MV_CHUNK);
  return TERNARY_MV_HEADER + kpad * (act_int8 ? 1 : elem_size);
}

// Which kernel runs and how it is launched. M == 1 takes the matvec while its staged row fits
// max_smem: the device's threadgroup memory for the glue (K <= ~32K int8 codes, ~16K half,
// ~8K float), TERNARY_MV_STATIC_SMEM for kernels built with TERNARY_STATIC_SMEM; otherwise,
// and for every M > 1, the tiled matmul (any K).
inline Launch plan_launch(bool i2, bool act_int8, int64_t M, int64_t N, int64_t K, int elem_size,
                          uint64_t max_smem) {
  const uint64_t units = row_units(i2, N);
  const uint64_t mv_smem = mv_smem_bytes(act_int8, K, elem_size);
  if (M == 1 && mv_smem <= max_smem) {
    const uint64_t per_group =
        TERNARY_MV_SIMDGROUPS * (i2 ? TERNARY_MV_I2_ROWS : TERNARY_MV_I8_ROWS);
    return {Path::Matvec, static_cast<uint32_t>((units + per_group - 1) / per_group), 1,
            static_cast<uint32_t>(kMvThreads), static_cast<uint32_t>(mv_smem)};
  }
  const uint64_t units_per_tile = i2 ? TERNARY_MM_BN / kI2RowsPerByte : TERNARY_MM_BN;
  return {Path::Matmul, static_cast<uint32_t>((units + units_per_tile - 1) / units_per_tile),
          static_cast<uint32_t>((M + TERNARY_MM_BM - 1) / TERNARY_MM_BM),
          static_cast<uint32_t>(kMmThreads), TERNARY_MM_SMEM_BYTES};
}

// Weight rows start every K bytes from the (byte-offset) base: 16-byte loads need both aligned.
inline bool weight_rows_aligned(uint64_t base_address, int64_t K) {
  return base_address % 16 == 0 && K % 16 == 0;
}

inline const char* dtype_suffix(int dt) {
  return dt == TERNARY_DT_F32 ? "f32" : dt == TERNARY_DT_F16 ? "f16" : "bf16";
}

// Name of the kernel instance, as in ternary_linear.metal: ternary_{mv|mm}_{i8|i2}_{int8|none}_T.
inline std::string kernel_name(Path path, bool i2, bool act_int8, int dtype) {
  return std::string(path == Path::Matvec ? "ternary_mv_" : "ternary_mm_") + (i2 ? "i2_" : "i8_") +
         (act_int8 ? "int8_" : "none_") + dtype_suffix(dtype);
}

}  // namespace ternary::metal
#endif  // host code
