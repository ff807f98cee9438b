// LUT kernels: weight preparation and dispatch between the AVX2 loops and
// portable ones.  Tables are built here once per call (from the activations
// for the GEMV, from coeffs * scales per block for the weighted sum).
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "ringflow/kernels.h"
#include "simd.h"
#include "ringflow/lut.h"
#include "ringflow/quantize.h"
#include "ringflow/types.h"

namespace ringflow::kernels {
namespace avx2 {
void lutWsumGroup(float* acc, const uint8_t* const* codes, size_t first, size_t len, int bits,
                  const float* table);
void lutGemvTile(float* y16, const uint8_t* planes, const float* tscales, const float* tables,
                 const float* xsum, size_t groups, size_t nblk, size_t groups_per_block, int bits);
void lutGemvTileInt8(float* y16, const uint8_t* idx8, const float* tscales, const int8_t* tables8,
                     const float* tscale8, const float* xsum, size_t groups, size_t nblk,
                     size_t groups_per_block, int bits);
}  // namespace avx2

namespace {

bool useAvx2() { return atLeastAvx2(); }

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

// Portable form of avx2::lutGemvTileInt8: the same integer sums, so the
// same result up to the float epilogue.
void gemvTileInt8Portable(float* y16, const uint8_t* idx8, const float* tscales,
                          const int8_t* tables8, const float* tscale8, const float* xsum,
                          size_t groups, size_t nblk, size_t gpb, int bits) {
  const float levels = float((1 << bits) - 1);
  const int pairs = (bits + 1) / 2;
  const uint8_t* p = idx8;
  for (size_t r = 0; r < kLutTileRows; ++r) y16[r] = 0.0f;
  for (size_t b = 0; b < nblk; ++b) {
    int32_t a[kLutTileRows] = {0};
    size_t gend = (b + 1) * gpb < groups ? (b + 1) * gpb : groups;
    for (size_t g = b * gpb; g < gend; ++g)
      for (int q = 0; q < pairs; ++q, p += 32)
        for (size_t r = 0; r < kLutTileRows; ++r) {
          int lo = tables8[16 * g + (p[2 * r] & 15)], hi = tables8[16 * g + (p[2 * r + 1] & 15)];
          a[r] += lo * (1 << (2 * q)) + (2 * q + 1 < bits ? hi * (1 << (2 * q + 1)) : 0);
        }
    for (size_t r = 0; r < kLutTileRows; ++r)
      y16[r] += tscales[16 * b + r] * (2.0f * (float(a[r]) * tscale8[b]) - levels * xsum[b]);
  }
}

// int8 tables, one scale per block of columns (so a block's look-ups add up
// as integers): scale = max |entry| / 127.
void quantizeTables(int8_t* t8, float* scale8, const float* tables, size_t groups, size_t gpb,
                    size_t nblk) {
  for (size_t b = 0; b < nblk; ++b) {
    size_t g0 = b * gpb, gend = (b + 1) * gpb < groups ? (b + 1) * gpb : groups;
    float m = 0.0f;
    for (size_t i = 16 * g0; i < 16 * gend; ++i) m = std::fabs(tables[i]) > m ? std::fabs(tables[i]) : m;
    float s = m / 127.0f, inv = m > 0.0f ? 127.0f / m : 0.0f;
    scale8[b] = s;
    for (size_t i = 16 * g0; i < 16 * gend; ++i) t8[i] = int8_t(std::lrintf(tables[i] * inv));
  }
}

}  // namespace

LutMatrix lutPrepare(const uint8_t* packed, const float* scales, size_t rows, size_t cols,
                     int bits, size_t block, bool int8Tables) {
  checkLowbitBits(bits);
  checkBlock(block, true);
  LutMatrix w;
  w.rows = rows, w.cols = cols, w.bits = bits, w.block = block, w.int8Tables = int8Tables;
  const size_t tiles = (rows + kLutTileRows - 1) / kLutTileRows;
  const size_t groups = (cols + kLutGroup - 1) / kLutGroup, nblk = numBlocks(cols, block);
  const size_t stride = lowbitPackedBytes(cols, bits);
  const int pairs = (bits + 1) / 2;
  if (int8Tables)
    w.idx8.assign(tiles * groups * pairs * 32, 0);
  else
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
    for (size_t g = 0; g < groups; ++g) {
      if (int8Tables) {
        for (int q = 0; q < pairs; ++q) {
          uint8_t* out = &w.idx8[((t * groups + g) * pairs + q) * 32];
          for (size_t r = 0; r < 16; ++r) {
            out[2 * r] = uint8_t(nibble(16 * t + r, g, 2 * q));
            out[2 * r + 1] = uint8_t(2 * q + 1 < bits ? nibble(16 * t + r, g, 2 * q + 1) : 0);
          }
        }
        continue;
      }
      for (int j = 0; j < bits; ++j) {
        uint8_t* out = &w.planes[((t * groups + g) * bits + j) * 8];
        for (size_t r = 0; r < 8; ++r)
          out[r] = uint8_t(nibble(16 * t + r, g, j) | (nibble(16 * t + r + 8, g, j) << 4));
      }
    }
    for (size_t b = 0; b < nblk; ++b)
      for (size_t r = 0; r < kLutTileRows && 16 * t + r < rows; ++r)
        w.scales[(t * nblk + b) * kLutTileRows + r] = scales[(16 * t + r) * nblk + b];
  }
  return w;
}

namespace {
void gemvInt8(float* y, const LutMatrix& w, const std::vector<float>& tables,
              const std::vector<float>& xsum, size_t groups, size_t nblk, size_t gpb) {
  std::vector<int8_t> t8(tables.size());
  std::vector<float> s8(nblk);
  quantizeTables(t8.data(), s8.data(), tables.data(), groups, gpb, nblk);
  auto tile = useAvx2() ? avx2::lutGemvTileInt8 : gemvTileInt8Portable;
  const size_t tileBytes = groups * size_t((w.bits + 1) / 2) * 32;
  float last[kLutTileRows];
  for (size_t r = 0; r < w.rows; r += kLutTileRows) {
    size_t t = r / kLutTileRows;
    bool full = r + kLutTileRows <= w.rows;
    tile(full ? y + r : last, w.idx8.data() + t * tileBytes, w.scales.data() + t * nblk * 16,
         t8.data(), s8.data(), xsum.data(), groups, nblk, gpb, w.bits);
    if (!full) std::memcpy(y + r, last, (w.rows - r) * sizeof(float));
  }
}
}  // namespace

void lutGemv(float* y, const LutMatrix& w, const float* x) {
  const size_t groups = (w.cols + kLutGroup - 1) / kLutGroup, nblk = numBlocks(w.cols, w.block);
  const size_t gpb = w.block / kLutGroup;
  std::vector<float> tables(16 * groups), xsum(nblk, 0.0f);
  lut_detail::buildTables(tables.data(), x, w.cols);
  for (size_t k = 0; k < w.cols; ++k) xsum[k / w.block] += x[k];
  if (w.int8Tables) return gemvInt8(y, w, tables, xsum, groups, nblk, gpb);
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
  lutWeightedSumStrided(y, codes, lowbitPackedBytes(m, bits), scales, numBlocks(m, block), coeffs,
                        workers, m, bits, block);
}

void lutWeightedSumStrided(float* y, const uint8_t* codes, size_t stride, const float* scales,
                           size_t nblk, const float* coeffs, size_t workers, size_t m, int bits,
                           size_t block) {
  checkLowbitBits(bits);
  checkBlock(block, false);
  // The vector loop takes 8 elements at a byte boundary: blocks must keep that.
  if (!useAvx2() || block % 8 != 0 || workers == 0)
    return lut_detail::weightedSumScalar(y, codes, stride, scales, nblk, coeffs, workers, m, bits,
                                         block);
  const size_t groups = (workers + kLutGroup - 1) / kLutGroup;
  const float levels = float((1 << bits) - 1);
  // stands in for the missing workers of the last group
  std::vector<uint8_t> zeros(lowbitPackedBytes(m, bits) + 8, 0);
  std::vector<float> w(groups * kLutGroup, 0.0f), tables(16 * groups);
  for (size_t b = 0; b * block < m; ++b) {
    const float wsum =
        lut_detail::blockTables(tables.data(), w.data(), coeffs, scales, workers, nblk, b);
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
