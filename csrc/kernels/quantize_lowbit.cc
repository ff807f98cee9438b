// Low-bit quantisation with per-block scales and error feedback (see
// quantize.h).  Codes are computed in double from the stored float32 scale,
// so numpy can reproduce them exactly.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "ringflow/quantize.h"
#include "ringflow/types.h"
#include "simd.h"

namespace ringflow::kernels {
namespace avx2 {
float quantizeLowbitBlock(uint8_t* packed, float* residual, float* decoded, const float* x,
                          const float* error, size_t len, int bits);
void dequantizeLowbitBlock(float* x, const uint8_t* packed, float s, size_t len, int bits);
}  // namespace avx2

void checkLowbitBits(int bits) {
  if (bits != 1 && bits != 2 && bits != 4 && bits != 8)
    throw InvalidArgument("bits must be 1, 2, 4 or 8, got " + std::to_string(bits));
}

namespace {

void checkBlock(size_t block) {
  if (block == 0) throw InvalidArgument("block size must be >= 1");
}

// Round half to even for |t| < 2^51 (see quantize_fixed.cc): plain adds, so
// the code loop vectorises on baseline x86-64.
inline double rintSmall(double t) {
  constexpr double kMagic = 6755399441055744.0;
  return (t + kMagic) - kMagic;
}

// One code per byte -> `bits` bits per code, element i at bit i*bits.
void pack(uint8_t* packed, const uint8_t* codes, size_t n, int bits) {
  if (bits == 8) return (void)std::memcpy(packed, codes, n);
  const size_t per = size_t(8 / bits), full = n / per;
  for (size_t o = 0; o < full; ++o) {
    unsigned byte = 0;
    for (size_t e = 0; e < per; ++e) byte |= unsigned(codes[o * per + e]) << (e * size_t(bits));
    packed[o] = uint8_t(byte);
  }
  if (full * per < n) {
    unsigned byte = 0;
    for (size_t e = 0; full * per + e < n; ++e) byte |= unsigned(codes[full * per + e]) << (e * size_t(bits));
    packed[full] = uint8_t(byte);
  }
}

// The vector loops take 8 elements at a time from a byte boundary: every
// block must start on one.
bool vectorBlocks(size_t block) { return atLeastAvx2() && block % 8 == 0; }

}  // namespace

void quantizeLowbit(uint8_t* packed, float* scales, float* residual, const float* x,
                    const float* error, size_t n, int bits, size_t block, float* decoded) {
  checkLowbitBits(bits);
  checkBlock(block);
  if (vectorBlocks(block)) {
    for (size_t b = 0, i0 = 0; i0 < n; ++b, i0 += block)
      scales[b] = avx2::quantizeLowbitBlock(packed + i0 * size_t(bits) / 8,
                                            residual ? residual + i0 : nullptr,
                                            decoded ? decoded + i0 : nullptr, x + i0,
                                            error ? error + i0 : nullptr,
                                            n - i0 < block ? n - i0 : block, bits);
    return;
  }
  const unsigned levels = (1u << bits) - 1u;  // L: the codes are 0..L
  const double levelsD = double(levels);
  std::vector<uint8_t> codes(n);
  std::vector<float> v(n < block ? n : block);
  for (size_t b = 0, i0 = 0; i0 < n; ++b, i0 += block) {
    const size_t len = n - i0 < block ? n - i0 : block;
    float maxabs = 0.0f;
    for (size_t i = 0; i < len; ++i) {
      v[i] = error ? x[i0 + i] + error[i0 + i] : x[i0 + i];
      float a = std::fabs(v[i]);
      maxabs = a > maxabs ? a : maxabs;  // NaN is skipped: it cannot set a scale
    }
    if (!(maxabs <= 3.4028234663852886e38f)) maxabs = 3.4028234663852886e38f;
    const float s = maxabs / float(levels);
    scales[b] = s;
    const double sd = double(s), mid = double((levels + 1) / 2);
    uint8_t* c = codes.data() + i0;
    for (size_t i = 0; i < len; ++i) {
      double t = s > 0.0f ? (double(v[i]) / sd + levelsD) * 0.5 : mid;
      t = t > levelsD ? levelsD : (t >= 0.0 ? t : 0.0);  // also maps NaN to 0
      c[i] = uint8_t(int(rintSmall(t)));
    }
    for (size_t i = 0; i < len; ++i) {
      const float deq = s * float(2 * int(c[i]) - int(levels));
      if (residual) residual[i0 + i] = v[i] - deq;
      if (decoded) decoded[i0 + i] = deq;
    }
  }
  pack(packed, codes.data(), n, bits);
}

void dequantizeLowbit(float* x, const uint8_t* packed, const float* scales, size_t n, int bits,
                      size_t block) {
  checkLowbitBits(bits);
  checkBlock(block);
  if (vectorBlocks(block)) {
    for (size_t b = 0, i0 = 0; i0 < n; ++b, i0 += block)
      avx2::dequantizeLowbitBlock(x + i0, packed + i0 * size_t(bits) / 8, scales[b],
                                  n - i0 < block ? n - i0 : block, bits);
    return;
  }
  const int levels = (1 << bits) - 1;
  const unsigned mask = unsigned(levels);
  for (size_t b = 0, i0 = 0; i0 < n; ++b, i0 += block) {
    const size_t end = n - i0 < block ? n : i0 + block;
    const float s = scales[b];
    for (size_t i = i0; i < end; ++i) {
      size_t bit = i * size_t(bits);
      int code = int((packed[bit >> 3] >> (bit & 7)) & mask);
      x[i] = s * float(2 * code - levels);
    }
  }
}

}  // namespace ringflow::kernels
