// Low-bit quantisation with per-block scales and error feedback (see
// quantize.h).  Codes are computed in double from the stored float32 scale,
// so numpy can reproduce them exactly.
#include <cmath>
#include <cstring>
#include <string>

#include "ringflow/quantize.h"
#include "ringflow/types.h"

namespace ringflow::kernels {

void checkLowbitBits(int bits) {
  if (bits != 1 && bits != 2 && bits != 4 && bits != 8)
    throw InvalidArgument("bits must be 1, 2, 4 or 8, got " + std::to_string(bits));
}

namespace {

void checkBlock(size_t block) {
  if (block == 0) throw InvalidArgument("block size must be >= 1");
}

// Packs codes of one block; every block starts on a whole code boundary, and
// bits divides 8, so blocks never share a byte unless block*bits % 8 != 0 —
// which is why packing goes element by element with OR into zeroed bytes.
inline void putCode(uint8_t* packed, size_t i, int bits, unsigned code) {
  size_t bit = i * size_t(bits);
  packed[bit >> 3] = uint8_t(packed[bit >> 3] | (code << (bit & 7)));
}

}  // namespace

void quantizeLowbit(uint8_t* packed, float* scales, float* residual, const float* x,
                    const float* error, size_t n, int bits, size_t block) {
  checkLowbitBits(bits);
  checkBlock(block);
  const unsigned levels = (1u << bits) - 1u;  // L: the codes are 0..L
  std::memset(packed, 0, lowbitPackedBytes(n, bits));
  for (size_t b = 0, i0 = 0; i0 < n; ++b, i0 += block) {
    size_t len = n - i0 < block ? n - i0 : block;
    float maxabs = 0.0f;
    for (size_t i = i0; i < i0 + len; ++i) {
      float v = error ? x[i] + error[i] : x[i];
      float a = std::fabs(v);
      maxabs = a > maxabs ? a : maxabs;  // NaN is skipped: it cannot set a scale
    }
    if (!(maxabs <= 3.4028234663852886e38f)) maxabs = 3.4028234663852886e38f;
    const float s = maxabs / float(levels);
    scales[b] = s;
    for (size_t i = i0; i < i0 + len; ++i) {
      float v = error ? x[i] + error[i] : x[i];
      double c = s > 0.0f ? std::nearbyint((double(v) / double(s) + double(levels)) * 0.5)
                          : double((levels + 1) / 2);
      c = c > double(levels) ? double(levels) : (c >= 0.0 ? c : 0.0);  // also maps NaN to 0
      unsigned code = unsigned(c);
      putCode(packed, i, bits, code);
      if (residual) residual[i] = v - s * float(2 * int(code) - int(levels));
    }
  }
}

void dequantizeLowbit(float* x, const uint8_t* packed, const float* scales, size_t n, int bits,
                      size_t block) {
  checkLowbitBits(bits);
  checkBlock(block);
  const int levels = (1 << bits) - 1;
  for (size_t i = 0; i < n; ++i)
    x[i] = scales[i / block] * float(2 * int(lowbitCode(packed, i, bits)) - levels);
}

}  // namespace ringflow::kernels
