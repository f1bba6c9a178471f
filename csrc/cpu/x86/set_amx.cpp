// cpu/x86/set_amx.cpp: the avx512_amx set. act="int8" with M >= kAmxMinM runs on AMX-INT8 tiles
// (TDPBSUD: signed int8 activations x unsigned codes 0..2, int32 accumulation, exact); all
// other paths (M = 1 decode, act="none", quantization) are the avx512_vnni kernels. Built with
// the "_amx" flags (AVX-512 + AMX-TILE/AMX-INT8).
//
// Layout: weights are the A tiles (16 weight rows x 64 k, row-major as stored: i8 loads them
// straight from the matrix, i2 masks out one code plane per tile), activations the B tiles
// (16 k-groups x (16 activation rows x 4 k), "VNNI" order, re-laid once per call). The 16 x 16
// int32 result (weight rows x activation rows) is transposed in registers in the epilogue.
#include <immintrin.h>

#include <cstddef>
#include <vector>

#include "cpu/scratch.h"
#include "cpu/x86/avx512.h"
#include "cpu/x86/common.h"
#include "cpu/x86/sets.h"

namespace ternary::cpu::x86 {
namespace {

// Below this many activation rows the AVX-512 VNNI kernels are faster than the tiles
// (docs/perf-notes.md).
constexpr int64_t kAmxMinM = 8;
constexpr int64_t kTileBytes = 1024;  // 16 rows x 64 bytes

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Per worker thread (cpu/scratch.h): bq grows with M x K, so a large call's is released.
struct Scratch {
  std::vector<uint8_t> bq, panel, cacc;
};
thread_local Scratch tls;

void end_amx() {
  _tile_release();
  release_if_large(tls.bq);
  release_if_large(tls.cacc);
}

uint8_t* aligned_buf(std::vector<uint8_t>& v, size_t n) {
  const auto a = reinterpret_cast<uintptr_t>(scratch(v, static_cast<int64_t>(n + 64)));
  return reinterpret_cast<uint8_t*>((a + 63) & ~uintptr_t(63));
}

// Transposes 16 rows of 16 dwords in place.
TERNARY_INLINE void transpose16x16(__m512i r[16]) {
  __m512i a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    b[4 * i + 0] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  // b[4i + c], 128-bit lane L = rows 4i..4i+3 of column 4L + c.
  for (int c = 0; c < 4; ++c) {
    const __m512i s0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44);
    const __m512i s1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xEE);
    const __m512i s2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44);
    const __m512i s3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(s0, s2, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(s0, s2, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(s1, s3, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(s1, s3, 0xDD);
  }
}

// K is processed in chunks of this many 64-column tiles (partial sums live in memory between
// chunks): the i2 code planes of one chunk (4 x 8 KB) stay in L1, where they are written and
// then reloaded by every block of activation rows (8 rather than 16 or 32: docs/perf-notes.md).
constexpr int64_t kChunkTiles = 8;

// B tiles: every activation row block (16 rows, zero rows past M) x every k-tile, in VNNI
// order (row kk = dword kk of each of the 16 rows). Tile (mt, kt) at bq + (mt*KT + kt)*1KB.
void layout_activations(const Problem& p, int64_t KT, uint8_t* bq) {
  const int64_t MT = (p.M + 15) / 16;
  for (int64_t mt = 0; mt < MT; ++mt) {
    const int64_t rows = min_of<int64_t>(16, p.M - mt * 16);
    for (int64_t kt = 0; kt < KT; ++kt) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i)  // q rows are padded with zeros to a multiple of 64
        r[i] = i < rows ? _mm512_loadu_si512(p.xq + (mt * 16 + i) * p.ldq + kt * 64)
                        : _mm512_setzero_si512();
      transpose16x16(r);
      uint8_t* dst = bq + (mt * KT + kt) * kTileBytes;
      for (int i = 0; i < 16; ++i) _mm512_store_si512(dst + i * 64, r[i]);
    }
  }
}

// Weight rows r0..r0+nrows-1 (row stride K bytes), k-tiles kt0..kt0+nkt, into A tiles: each
// 64-byte piece goes through emit(i, t, bytes), row by row (each row's piece is one contiguous
// read). The same rows' next chunk (or, after the last chunk, the rows `ahead` rows on) is
// prefetched meanwhile: pieces are too short for the hardware prefetchers to pick up.
template <typename Emit>
TERNARY_INLINE void for_each_piece(const uint8_t* W, int64_t K, int64_t r0, int nrows,
                                   int64_t kt0, int64_t nkt, int64_t KT, int64_t ahead,
                                   Emit emit) {
  for (int i = 0; i < 16; ++i) {
    const uint8_t* row = W + (r0 + i) * K + kt0 * 64;
    const uint8_t* next = kt0 + nkt < KT ? row + nkt * 64 : W + (r0 + ahead + i) * K;
    for (int64_t t = 0; t < nkt; ++t) {
      const int64_t k = (kt0 + t) * 64;
      __m512i w = _mm512_setzero_si512();
      if (i < nrows) {
        _mm_prefetch(reinterpret_cast<const char*>(next + t * 64), _MM_HINT_T0);
        w = k + 64 <= K ? _mm512_loadu_si512(row + t * 64)
                        : _mm512_maskz_loadu_epi8(tail_mask64(K - k), row + t * 64);
      }
      emit(i, t, w);
    }
  }
}

// i2: four code planes masked in place (plane r = 4^s * code, s = 0, 1, 2, 1: undone in the
// epilogue). Plane r, tile t at panel + (r*kChunkTiles + t)*1KB.
constexpr int kPlaneShift[4] = {0, 2, 4, 2};
void decode_i2(const uint8_t* W, int64_t K, int64_t jb, int nrows, int64_t kt0, int64_t nkt,
               int64_t KT, uint8_t* panel) {
  const __m512i m03 = _mm512_set1_epi8(0x03), m0c = _mm512_set1_epi8(0x0C),
                m30 = _mm512_set1_epi8(0x30);
  for_each_piece(W, K, jb, nrows, kt0, nkt, KT, 16, [&](int i, int64_t t, __m512i w) {
    uint8_t* dst = panel + t * kTileBytes + i * 64;
    _mm512_store_si512(dst, _mm512_and_si512(w, m03));
    _mm512_store_si512(dst + kChunkTiles * kTileBytes, _mm512_and_si512(w, m0c));
    _mm512_store_si512(dst + 2 * kChunkTiles * kTileBytes, _mm512_and_si512(w, m30));
    _mm512_store_si512(dst + 3 * kChunkTiles * kTileBytes,
                       _mm512_and_si512(_mm512_srli_epi16(w, 4), m0c));
  });
}

// i8: the signed weights as they are (TDPBSSD); a plain copy into tiles, zero-padded.
void decode_i8(const int8_t* W, int64_t K, int64_t nb, int nrows, int64_t kt0, int64_t nkt,
               int64_t KT, uint8_t* panel) {
  for_each_piece(reinterpret_cast<const uint8_t*>(W), K, nb, nrows, kt0, nkt, KT, 32,
                 [&](int i, int64_t t, __m512i w) {
                   _mm512_store_si512(panel + t * kTileBytes + i * 64, w);
                 });
}

// An A tile source: tile t at base + t*1KB (rows of 64 bytes).
struct ASrc {
  const uint8_t* base;
  const uint8_t* at(int64_t t) const { return base + t * kTileBytes; }
};

// C (16 weight rows x 16 activation rows, int32) += A (weights) . B (activations) over nkt
// k-tiles, for one or two A sources x one or two activation row blocks. Partial sums in
// memory (c[0..3], 16 x 16 int32 each) between K chunks.
template <bool TWO_M, bool TWO_N, bool SIGNED_A>
void tile_loop(const ASrc& a0, const ASrc& a1, const uint8_t* b0, const uint8_t* b1,
               int64_t nkt, bool first, int32_t* const c[4]) {
  if (first) {
    _tile_zero(0);
    if (TWO_N) _tile_zero(1);
    if (TWO_M) _tile_zero(2);
    if (TWO_M && TWO_N) _tile_zero(3);
  } else {
    _tile_loadd(0, c[0], 64);
    if (TWO_N) _tile_loadd(1, c[1], 64);
    if (TWO_M) _tile_loadd(2, c[2], 64);
    if (TWO_M && TWO_N) _tile_loadd(3, c[3], 64);
  }
  for (int64_t t = 0; t < nkt; ++t) {
    _tile_loadd(4, a0.at(t), 64);
    _tile_loadd(6, b0 + t * kTileBytes, 64);
    if (SIGNED_A) _tile_dpbssd(0, 4, 6); else _tile_dpbusd(0, 4, 6);
    if (TWO_N) {
      _tile_loadd(5, a1.at(t), 64);
      if (SIGNED_A) _tile_dpbssd(1, 5, 6); else _tile_dpbusd(1, 5, 6);
    }
    if (TWO_M) {
      _tile_loadd(7, b1 + t * kTileBytes, 64);
      if (SIGNED_A) _tile_dpbssd(2, 4, 7); else _tile_dpbusd(2, 4, 7);
      if (TWO_N) {
        if (SIGNED_A) _tile_dpbssd(3, 5, 7); else _tile_dpbusd(3, 5, 7);
      }
    }
  }
  _tile_stored(0, c[0], 64);
  if (TWO_N) _tile_stored(1, c[1], 64);
  if (TWO_M) _tile_stored(2, c[2], 64);
  if (TWO_M && TWO_N) _tile_stored(3, c[3], 64);
}

template <bool SIGNED_A>
void run_tiles(const ASrc& a0, const ASrc& a1, bool two_n, const uint8_t* bq, int64_t KT,
               int64_t kt0, int64_t nkt, int64_t MT, int32_t* cacc0, int32_t* cacc1) {
  for (int64_t mt = 0; mt < MT; mt += 2) {
    const bool two_m = mt + 1 < MT;
    const uint8_t* b0 = bq + (mt * KT + kt0) * kTileBytes;
    const uint8_t* b1 = two_m ? b0 + KT * kTileBytes : nullptr;
    int32_t* const c[4] = {cacc0 + mt * 256, cacc1 ? cacc1 + mt * 256 : nullptr,
                           cacc0 + (mt + 1) * 256, cacc1 ? cacc1 + (mt + 1) * 256 : nullptr};
    const bool first = kt0 == 0;
    if (two_m && two_n) tile_loop<true, true, SIGNED_A>(a0, a1, b0, b1, nkt, first, c);
    else if (two_m) tile_loop<true, false, SIGNED_A>(a0, a1, b0, b1, nkt, first, c);
    else if (two_n) tile_loop<false, true, SIGNED_A>(a0, a1, b0, b1, nkt, first, c);
    else tile_loop<false, false, SIGNED_A>(a0, a1, b0, b1, nkt, first, c);
  }
}

// y[m, n0 + i] for i < ncols from the 16 x 16 int32 sums of one activation row block:
// c[i][mm] = (scaled) dot of weight row i with activation row mt*16 + mm. Transposed in
// registers so each activation row's outputs are stored as one vector.
void epilogue_block(const Problem& p, const int32_t* c, int64_t mt, int64_t n0, int64_t ncols,
                    int shift, bool sub_sum) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(c + i * 16);
  transpose16x16(r);
  const __mmask16 mk = tail_mask16(ncols);
  const __m512 vs = p.scale_stride == 0 ? _mm512_set1_ps(p.scale[0])
                                        : _mm512_maskz_loadu_ps(mk, p.scale + n0);
  const __m512 vb = p.bias ? _mm512_maskz_loadu_ps(mk, p.bias + n0) : _mm512_setzero_ps();
  const int64_t rows = min_of<int64_t>(16, p.M - mt * 16);
  const __m128i sh = _mm_cvtsi32_si128(shift);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t m = mt * 16 + i;
    __m512i d = _mm512_sra_epi32(r[i], sh);  // exact: the sums are multiples of 2^shift
    if (sub_sum) d = _mm512_sub_epi32(d, _mm512_set1_epi32(p.x_sum[m]));
    // The scalar epilogue's operations in its order: bit-exact.
    __m512 v = _mm512_div_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(p.x_inv[m]));
    v = _mm512_mul_ps(v, vs);
    if (p.bias) v = _mm512_add_ps(v, vb);
    _mm512_mask_storeu_ps(p.y + m * p.ldy + n0, mk, v);
  }
}

// Per call and thread: the tile configuration (8 tiles of 16 x 64 bytes) and the B tiles.
const uint8_t* begin_amx(const Problem& p, int64_t KT) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  const int64_t MT = (p.M + 15) / 16;
  uint8_t* bq = aligned_buf(tls.bq, static_cast<size_t>(MT * KT * kTileBytes));
  layout_activations(p, KT, bq);
  return bq;
}

int32_t* cacc_buf(int64_t n) {
  return reinterpret_cast<int32_t*>(aligned_buf(tls.cacc, static_cast<size_t>(n * 4)));
}

void i2_int8_amx(const Problem& p, int64_t j0, int64_t j1) {
  // Scaled planes need 16 * 2 * 128 * K < 2^31. K = 0 has no tiles to clear the accumulators.
  if (p.M < kAmxMinM || p.K == 0 || p.K > (int64_t(1) << 19)) return avx512::i2_int8(p, j0, j1);
  const auto* W = static_cast<const uint8_t*>(p.weight);
  const int64_t R = i2_packed_rows(p.N), KT = (p.K + 63) / 64, MT = (p.M + 15) / 16;
  const uint8_t* bq = begin_amx(p, KT);
  uint8_t* panel = aligned_buf(tls.panel, static_cast<size_t>(4 * kChunkTiles * kTileBytes));
  int32_t* cacc = cacc_buf(4 * MT * 256);
  for (int64_t jb = j0; jb < j1; jb += 16) {
    const int nrows = static_cast<int>(min_of<int64_t>(16, j1 - jb));
    int64_t cols[4];
    for (int r = 0; r < 4; ++r) cols[r] = min_of<int64_t>(nrows, p.N - (jb + r * R));
    for (int64_t kt0 = 0; kt0 < KT; kt0 += kChunkTiles) {
      const int64_t nkt = min_of(kChunkTiles, KT - kt0);
      decode_i2(W, p.K, jb, nrows, kt0, nkt, KT, panel);
      for (int r = 0; r < 4; r += 2) {
        if (cols[r] <= 0) break;
        const ASrc a0{panel + r * kChunkTiles * kTileBytes};
        const ASrc a1{panel + (r + 1) * kChunkTiles * kTileBytes};
        const bool two_n = cols[r + 1] > 0;
        run_tiles<false>(a0, a1, two_n, bq, KT, kt0, nkt, MT, cacc + r * MT * 256,
                         two_n ? cacc + (r + 1) * MT * 256 : nullptr);
      }
    }
    for (int r = 0; r < 4; ++r) {
      if (cols[r] <= 0) break;
      for (int64_t mt = 0; mt < MT; ++mt)
        epilogue_block(p, cacc + (r * MT + mt) * 256, mt, jb + r * R, cols[r], kPlaneShift[r],
                       true);
    }
  }
  end_amx();
}

// i8: the weights are signed int8 already: A tiles are plain copies (TDPBSSD, no activation-
// sum correction).
void i8_int8_amx(const Problem& p, int64_t n0, int64_t n1) {
  // K = 0 has no tiles to clear the accumulators.
  if (p.M < kAmxMinM || p.K == 0) return avx512::i8_int8(p, n0, n1);
  const auto* W = static_cast<const int8_t*>(p.weight);
  const int64_t K = p.K, KT = (K + 63) / 64, MT = (p.M + 15) / 16;
  const uint8_t* bq = begin_amx(p, KT);
  uint8_t* panel = aligned_buf(tls.panel, static_cast<size_t>(2 * kChunkTiles * kTileBytes));
  int32_t* cacc = cacc_buf(2 * MT * 256);
  for (int64_t nb = n0; nb < n1; nb += 32) {
    const int64_t c0 = min_of<int64_t>(16, n1 - nb), c1 = min_of<int64_t>(16, n1 - nb - 16);
    const bool two_n = c1 > 0;
    for (int64_t kt0 = 0; kt0 < KT; kt0 += kChunkTiles) {
      const int64_t nkt = min_of(kChunkTiles, KT - kt0);
      decode_i8(W, K, nb, static_cast<int>(c0), kt0, nkt, KT, panel);
      if (two_n)
        decode_i8(W, K, nb + 16, static_cast<int>(c1), kt0, nkt, KT,
                  panel + kChunkTiles * kTileBytes);
      const ASrc a0{panel}, a1{panel + kChunkTiles * kTileBytes};
      run_tiles<true>(a0, a1, two_n, bq, KT, kt0, nkt, MT, cacc,
                      two_n ? cacc + MT * 256 : nullptr);
    }
    for (int64_t mt = 0; mt < MT; ++mt) {
      epilogue_block(p, cacc + mt * 256, mt, nb, c0, 0, false);
      if (two_n) epilogue_block(p, cacc + (MT + mt) * 256, mt, nb + 16, c1, 0, false);
    }
  }
  end_amx();
}

}  // namespace

namespace detail {
const KernelSet& avx512_amx_set() {
  static const KernelSet set{"avx512_amx", avx512::quantize, i8_int8_amx, avx512::i8_none,
                             i2_int8_amx, avx512::i2_none, avx512::q8_int8};
  return set;
}
}  // namespace detail

}  // namespace ternary::cpu::x86
