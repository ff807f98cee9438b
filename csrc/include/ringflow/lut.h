// LUT-based distributed arithmetic: y = sum_n c[n] * x[n] with
// x low-bit codes, computed without multiplies.  The codes are split into bit
// planes; the coefficients are taken four at a time and each group's 16-entry
// table {sum of the coefficients whose bit is set} is built once; every
// element then adds one table look-up per (group, bit plane), weighted by the
// plane's power of two.  Codes use quantize.h's offset-binary meaning
// s * (2c - L), L = 2^b - 1, so the sign costs one correction term per block:
// sum_n w_n (2c_n - L) = 2 * sum_n w_n c_n - L * sum_n w_n.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ringflow::kernels {

// Coefficients per table: 2^4 = 16 entries, one AVX2 register pair / 16 floats.
constexpr int kLutGroup = 4;

// Weighted aggregation of `workers` low-bit gradients of m elements each:
// y[i] = sum_n coeffs[n] * dequantizeLowbit(codes row n)[i].  codes is
// [workers][lowbitPackedBytes(m, bits)], scales [workers][numBlocks(m, block)].
void lutWeightedSum(float* y, const uint8_t* codes, const float* scales, const float* coeffs,
                    size_t workers, size_t m, int bits, size_t block);
void lutWeightedSumScalar(float* y, const uint8_t* codes, const float* scales,
                          const float* coeffs, size_t workers, size_t m, int bits, size_t block);
// The same sum over a piece of longer rows: row n's codes start at
// codes + n * codeStride and its scales at scales + n * scaleStride; the
// piece starts on a block boundary that falls on a byte (so a piece of a
// buffer can be summed and used while it is still in cache).
void lutWeightedSumStrided(float* y, const uint8_t* codes, size_t codeStride, const float* scales,
                           size_t scaleStride, const float* coeffs, size_t workers, size_t m,
                           int bits, size_t block);

// A low-bit matrix W [rows, cols] (row-major packed codes, scales per row per
// block of `block` columns, block a multiple of 4) rearranged once for the
// T-MAC-style GEMV: tiles of 16 rows, for each group of 4 columns and each
// bit plane 8 bytes holding the 4-bit table indices of the 16 rows.
//
// With int8 tables (T-MAC's trade: fewer instructions, ~1% error) the index
// layout is idx8 instead of planes: [tiles][groups][bit-plane pairs][32],
// byte 2i / 2i+1 = row i's index in the pair's even / odd plane, so that one
// vpshufb looks up both planes of 16 rows and one vpmaddubsw weights them by
// their powers of two and widens to int16 in the same step.
struct LutMatrix {
  size_t rows = 0, cols = 0, block = 0;
  int bits = 0;
  bool int8Tables = false;
  std::vector<uint8_t> planes;  // [tiles][groups][bits][8]          (float tables)
  std::vector<uint8_t> idx8;    // [tiles][groups][(bits+1)/2][32]   (int8 tables)
  std::vector<float> scales;    // [tiles][blocks][16]
};
constexpr size_t kLutTileRows = 16;

LutMatrix lutPrepare(const uint8_t* packed, const float* scales, size_t rows, size_t cols,
                     int bits, size_t block, bool int8Tables = false);

// y = dequantize(W) @ x, tables built from x (16 sums per 4 columns); with
// w.int8Tables each block's tables are quantised to int8 with one scale.
void lutGemv(float* y, const LutMatrix& w, const float* x);
// The same product straight from the row-major packed codes, one plain loop
// per look-up: the reference the prepared path is tested against.
void lutGemvScalar(float* y, const uint8_t* packed, const float* scales, const float* x,
                   size_t rows, size_t cols, int bits, size_t block);

namespace lut_detail {
// table[16 * g + idx] = sum of v[4g + i] over the set bits i of idx (v past n is 0).
void buildTables(float* tables, const float* v, size_t n);
// The weights of block b of a weighted sum, w[n] = coeffs[n] * scales[n][b],
// and their tables; returns the sum of the weights (for the offset term).
float blockTables(float* tables, float* w, const float* coeffs, const float* scales,
                  size_t workers, size_t nblk, size_t b);
// lutWeightedSumScalar over strided rows (see lutWeightedSumStrided).
void weightedSumScalar(float* y, const uint8_t* codes, size_t codeStride, const float* scales,
                       size_t scaleStride, const float* coeffs, size_t workers, size_t m, int bits,
                       size_t block);
}  // namespace lut_detail

}  // namespace ringflow::kernels
