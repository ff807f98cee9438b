// The plain-loop forms of the LUT kernels: one table look-up per (element,
// group of four coefficients, bit plane), no vector tricks.  The SIMD paths
// and the tests compare against these.
#include <cstring>
#include <string>
#include <vector>

#include "ringflow/lut.h"
#include "ringflow/quantize.h"
#include "ringflow/types.h"

namespace ringflow::kernels {

namespace lut_detail {
void buildTables(float* tables, const float* v, size_t n) {
  size_t groups = (n + kLutGroup - 1) / kLutGroup;
  for (size_t g = 0; g < groups; ++g) {
    float c[kLutGroup];
    for (int i = 0; i < kLutGroup; ++i) c[i] = 4 * g + i < n ? v[4 * g + i] : 0.0f;
    float* t = tables + 16 * g;
    t[0] = 0.0f;
    // Entry idx = entry (idx without its top bit) + that bit's coefficient.
    for (int idx = 1; idx < 16; ++idx) {
      int top = 31 - __builtin_clz(unsigned(idx));
      t[idx] = t[idx & ~(1 << top)] + c[top];
    }
  }
}

float blockTables(float* tables, float* w, const float* coeffs, const float* scales,
                  size_t workers, size_t nblk, size_t b) {
  float wsum = 0.0f;
  for (size_t n = 0; n < workers; ++n) {
    w[n] = coeffs[n] * scales[n * nblk + b];
    wsum += w[n];
  }
  buildTables(tables, w, workers);
  return wsum;
}
}  // namespace lut_detail

void lut_detail::weightedSumScalar(float* y, const uint8_t* codes, size_t stride,
                                   const float* scales, size_t nblk, const float* coeffs,
                                   size_t workers, size_t m, int bits, size_t block) {
  const size_t groups = (workers + kLutGroup - 1) / kLutGroup;
  const float levels = float((1 << bits) - 1);
  std::vector<float> w(workers), tables(16 * groups);
  for (size_t b = 0; b * block < m; ++b) {
    const float wsum =
        lut_detail::blockTables(tables.data(), w.data(), coeffs, scales, workers, nblk, b);
    size_t end = (b + 1) * block < m ? (b + 1) * block : m;
    for (size_t i = b * block; i < end; ++i) {
      float acc = 0.0f;
      for (size_t g = 0; g < groups; ++g)
        for (int j = 0; j < bits; ++j) {
          unsigned idx = 0;
          for (int k = 0; k < kLutGroup && 4 * g + k < workers; ++k)
            idx |= ((lowbitCode(codes + (4 * g + k) * stride, i, bits) >> j) & 1u) << k;
          acc += float(1 << j) * tables[16 * g + idx];
        }
      y[i] = 2.0f * acc - levels * wsum;
    }
  }
}

void lutWeightedSumScalar(float* y, const uint8_t* codes, const float* scales,
                          const float* coeffs, size_t workers, size_t m, int bits, size_t block) {
  checkLowbitBits(bits);
  if (block == 0) throw InvalidArgument("block size must be >= 1");
  lut_detail::weightedSumScalar(y, codes, lowbitPackedBytes(m, bits), scales, numBlocks(m, block),
                                coeffs, workers, m, bits, block);
}

void lutGemvScalar(float* y, const uint8_t* packed, const float* scales, const float* x,
                   size_t rows, size_t cols, int bits, size_t block) {
  checkLowbitBits(bits);
  if (block == 0 || block % kLutGroup != 0)
    throw InvalidArgument("lut_gemv needs a block size that is a multiple of 4, got " +
                          std::to_string(block));
  const size_t stride = lowbitPackedBytes(cols, bits), nblk = numBlocks(cols, block);
  const size_t groups = (cols + kLutGroup - 1) / kLutGroup;
  const float levels = float((1 << bits) - 1);
  std::vector<float> tables(16 * groups), xsum(nblk, 0.0f);
  lut_detail::buildTables(tables.data(), x, cols);
  for (size_t k = 0; k < cols; ++k) xsum[k / block] += x[k];
  for (size_t r = 0; r < rows; ++r) {
    const uint8_t* row = packed + r * stride;
    float out = 0.0f;
    for (size_t b = 0; b < nblk; ++b) {
      float acc = 0.0f;
      size_t gend = ((b + 1) * block < cols ? (b + 1) * block : cols + 3) / kLutGroup;
      for (size_t g = b * block / kLutGroup; g < gend; ++g)
        for (int j = 0; j < bits; ++j) {
          unsigned idx = 0;
          for (int k = 0; k < kLutGroup && 4 * g + k < cols; ++k)
            idx |= ((lowbitCode(row, 4 * g + k, bits) >> j) & 1u) << k;
          acc += float(1 << j) * tables[16 * g + idx];
        }
      out += scales[r * nblk + b] * (2.0f * acc - levels * xsum[b]);
    }
    y[r] = out;
  }
}

}  // namespace ringflow::kernels
