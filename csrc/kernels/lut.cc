// LUT kernels: weight preparation and dispatch between the AVX2 loops and
// portable ones.  Tables are built here once per call (from the activations
// for the GEMV, from coeffs * scales per block for the weighted sum).
#include <cstring>
#include <string>
#include <vector>

#include "ringflow/kernels.h"
#include "ringflow/lut.h"
#include "ringflow/quantize.h"
#include "ringflow/types.h"

namespace ringflow::kernels {
namespace avx2 {
void lutWsumGroup(float* acc, const uint8_t* const* codes, size_t first, size_t len, int bits,
                  const float* table);
void lutGemvTile(float* y16, const uint8_t* planes, const float* tscales, const float* tables,
                 const float* xsum, size_t groups, size_t nblk, size_t groups_per_block, int bits);
}  // namespace avx2

namespace {

bool useAvx2() {
  // simdLevel() is "avx2" or "avx512" exactly when the CPU has AVX2 + FMA.
  return std::strcmp(simdLevel(), "scalar") != 0;
}

void checkBlock(size_t block, bool multipleOf4) {
  if (block == 0 || (multipleOf4 && block % kLutGroup != 0))
    throw InvalidArgument("LUT kernels need a block size that is a positive multiple of 4, got " +
                          std::to_string(block));
}

// Portable form of avx2::lutGemvTile over the same prepared layout.
void gemvTilePortable(float* y16, const uint8_t* planes, const float* tscales, const float* tables,
                      const float* xsum, size_t groups, size_t nblk, size_t gpb, int bits) {
  const float levels = float((1 << bits) - 1);
  float y[kLutTileRows] = {0};
  const uint8_t* p = planes;
  for (size_t b = 0; b < nblk; ++b) {
    float a[kLutTileRows] = {0};
    size_t gend = (b + 1) * gpb < groups ? (b + 1) * gpb : groups;
    for (size_t g = b * gpb; g < gend; ++g)
      for (int j = 0; j < bits; ++j, p += 8)
        for (int r = 0; r < 8; ++r) {
          a[r] += float(1 << j) * tables[16 * g + (p[r] & 15)];
          a[r + 8] += float(1 << j) * tables[16 * g + (p[r] >> 4)];
        }
    for (size_t r = 0; r < kLutTileRows; ++r)
      y[r] += tscales[16 * b + r] * (2.0f * a[r] - levels * xsum[b]);
  }
  std::memcpy(y16, y, sizeof(y));
}

}  // namespace

LutMatrix lutPrepare(const uint8_t* packed, const float* scales, size_t rows, size_t cols,
                     int bits, size_t block) {
  checkLowbitBits(bits);
  checkBlock(block, true);
  LutMatrix w;
  w.rows = rows, w.cols = cols, w.bits = bits, w.block = block;
  const size_t tiles = (rows + kLutTileRows - 1) / kLutTileRows;
  const size_t groups = (cols + kLutGroup - 1) / kLutGroup, nblk = numBlocks(cols, block);
  const size_t stride = lowbitPackedBytes(cols, bits);
  w.planes.assign(tiles * groups * bits * 8, 0);
  w.scales.assign(tiles * nblk * kLutTileRows, 0.0f);
  // Nibble of (row, group, plane): bit j of the row's four codes in the group.
  auto nibble = [&](size_t row, size_t g, int j) {
    unsigned v = 0;
    if (row >= rows) return v;
    for (size_t i = 0; i < size_t(kLutGroup) && 4 * g + i < cols; ++i)
      v |= ((lowbitCode(packed + row * stride, 4 * g + i, bits) >> j) & 1u) << i;
    return v;
  };
  for (size_t t = 0; t < tiles; ++t) {
    for (size_t g = 0; g < groups; ++g)
      for (int j = 0; j < bits; ++j) {
        uint8_t* out = &w.planes[((t * groups + g) * bits + j) * 8];
        for (size_t r = 0; r < 8; ++r)
          out[r] = uint8_t(nibble(16 * t + r, g, j) | (nibble(16 * t + r + 8, g, j) << 4));
      }
    for (size_t b = 0; b < nblk; ++b)
      for (size_t r = 0; r < kLutTileRows && 16 * t + r < rows; ++r)
        w.scales[(t * nblk + b) * kLutTileRows + r] = scales[(16 * t + r) * nblk + b];
  }
  return w;
}

void lutGemv(float* y, const LutMatrix& w, const float* x) {
  const size_t groups = (w.cols + kLutGroup - 1) / kLutGroup, nblk = numBlocks(w.cols, w.block);
  const size_t gpb = w.block / kLutGroup;
  std::vector<float> tables(16 * groups), xsum(nblk, 0.0f);
  lut_detail::buildTables(tables.data(), x, w.cols);
  for (size_t k = 0; k < w.cols; ++k) xsum[k / w.block] += x[k];
  auto tile = useAvx2() ? avx2::lutGemvTile : gemvTilePortable;
  const size_t tileBytes = groups * w.bits * 8;
  float last[kLutTileRows];
  for (size_t r = 0; r < w.rows; r += kLutTileRows) {
    size_t t = r / kLutTileRows;
    bool full = r + kLutTileRows <= w.rows;
    tile(full ? y + r : last, w.planes.data() + t * tileBytes, w.scales.data() + t * nblk * 16,
         tables.data(), xsum.data(), groups, nblk, gpb, w.bits);
    if (!full) std::memcpy(y + r, last, (w.rows - r) * sizeof(float));
  }
}

void lutWeightedSum(float* y, const uint8_t* codes, const float* scales, const float* coeffs,
                    size_t workers, size_t m, int bits, size_t block) {
  checkLowbitBits(bits);
  checkBlock(block, false);
  // The vector loop takes 8 elements at a byte boundary: blocks must keep that.
  if (!useAvx2() || block % 8 != 0 || workers == 0)
    return lutWeightedSumScalar(y, codes, scales, coeffs, workers, m, bits, block);
  const size_t stride = lowbitPackedBytes(m, bits), nblk = numBlocks(m, block);
  const size_t groups = (workers + kLutGroup - 1) / kLutGroup;
  const float levels = float((1 << bits) - 1);
  std::vector<uint8_t> zeros(stride + 8, 0);  // stands in for the missing workers of the last group
  std::vector<float> w(groups * kLutGroup, 0.0f), tables(16 * groups);
  for (size_t b = 0; b < nblk; ++b) {
    float wsum = 0.0f;
    for (size_t n = 0; n < workers; ++n) {
      w[n] = coeffs[n] * scales[n * nblk + b];
      wsum += w[n];
    }
    lut_detail::buildTables(tables.data(), w.data(), workers);
    const size_t first = b * block, len = (first + block < m ? first + block : m) - first;
    float* acc = y + first;
    std::memset(acc, 0, len * sizeof(float));
    const size_t vlen = len & ~size_t(7);
    for (size_t g = 0; g < groups; ++g) {
      const uint8_t* rows[kLutGroup];
      for (size_t k = 0; k < size_t(kLutGroup); ++k)
        rows[k] = 4 * g + k < workers ? codes + (4 * g + k) * stride : zeros.data();
      avx2::lutWsumGroup(acc, rows, first, vlen, bits, &tables[16 * g]);
      for (size_t i = vlen; i < len; ++i)  // tail of the last block
        for (int j = 0; j < bits; ++j) {
          unsigned idx = 0;
          for (size_t k = 0; k < size_t(kLutGroup); ++k)
            idx |= ((lowbitCode(rows[k], first + i, bits) >> j) & 1u) << k;
          acc[i] += float(1 << j) * tables[16 * g + idx];
        }
    }
    for (size_t i = 0; i < len; ++i) acc[i] = 2.0f * acc[i] - levels * wsum;
  }
}

}  // namespace ringflow::kernels
