// Fixed-point quantisation for packet aggregation (see quantize.h).  All
// arithmetic is in double with explicit round-half-even, so a worker, the
// aggregator and numpy agree bit for bit.  quantizeFixed and dequantizeFixed
// run the AVX2 loops of quantize_fixed_avx2.cc where the CPU has them (the
// same operations, so the same bits); the loops here are their reference.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "quantize_isa.h"
#include "simd.h"
#include "ringflow/simd_variants.h"
#include "ringflow/kernels.h"
#include "ringflow/quantize.h"
#include "ringflow/types.h"

// The exponent scan is a plain loop built for baseline x86-64 and for AVX2
// (RINGFLOW_SIMD_VARIANTS), dispatched on the kernels' SIMD level.
namespace ringflow::kernels {
namespace {

constexpr double kInt32Max = 2147483647.0;

// Round half to even for |t| < 2^51 in the default rounding mode: adding and
// subtracting 1.5 * 2^52 drops the fraction exactly as rint would.  Unlike
// nearbyint it compiles to plain adds, so the loops vectorise on baseline
// x86-64 (no SSE4.1 roundpd there).  Needs no -ffast-math (we never use it).
inline double rintSmall(double t) {
  constexpr double kMagic = 6755399441055744.0;
  return (t + kMagic) - kMagic;
}

void checkWorkers(int workers) {
  if (workers < 1) throw InvalidArgument("workers must be >= 1, got " + std::to_string(workers));
}
void checkBlock(size_t block) {
  if (block == 0) throw InvalidArgument("block size must be >= 1");
}

// INT32_MAX / (workers * 2^e): one multiply per element.
double fixedScale(int exponent, int workers) {
  return std::ldexp(kInt32Max / double(workers), -exponent);
}

// Its reciprocal, for dequantising with a multiply: within an ulp of the
// quotient in double, far below the float result's rounding, and a divide
// costs several times a multiply in the loop.
double fixedInverse(int exponent, int workers) {
  return std::ldexp(1.0 / (kInt32Max / double(workers)), exponent);
}

bool useAvx2() { return atLeastAvx2(); }

}  // namespace

RINGFLOW_INLINE bool fixedExponentIfFiniteBody(const float* x, size_t n, int* exponent) {
  // |x| as bits: for non-negative floats the integer order is the float
  // order, inf is 0x7f800000 and NaN above it, so one integer max (which
  // vectorises) finds both the largest magnitude and any non-finite value.
  uint32_t maxbits = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, x + i, 4);
    b &= 0x7fffffffu;
    maxbits = b > maxbits ? b : maxbits;
  }
  if (maxbits >= 0x7f800000u) return false;
  float maxabs;
  std::memcpy(&maxabs, &maxbits, 4);
  if (maxabs == 0.0f) return *exponent = kFixedZeroExponent, true;
  int e;
  float m = std::frexp(maxabs, &e);       // maxabs = m * 2^e, m in [0.5, 1)
  *exponent = m == 0.5f ? e - 1 : e;      // an exact power of two needs no headroom
  return true;
}
RINGFLOW_SIMD_VARIANTS(bool, fixedExponentIfFinite, (const float* x, size_t n, int* exponent), (x, n, exponent))

int fixedExponent(const float* x, size_t n) {
  int e;
  if (fixedExponentIfFinite(x, n, &e)) return e;
  size_t i = 0;
  while (std::isfinite(x[i])) ++i;
  throw InvalidArgument("fixed-point quantisation needs finite values; element " +
                        std::to_string(i) + " is " + std::to_string(x[i]));
}

void fixedBlockExponents(int32_t* exps, const float* x, size_t n, size_t block) {
  checkBlock(block);
  for (size_t b = 0, i = 0; i < n; ++b, i += block)
    exps[b] = fixedExponent(x + i, n - i < block ? n - i : block);
}

void quantizeFixed(int32_t* q, const float* x, size_t n, int exponent, int workers) {
  checkWorkers(workers);
  const double scale = fixedScale(exponent, workers);
  const double limit = double(2147483647 / workers);  // floor: N * limit <= INT32_MAX
  if (useAvx2()) return avx2::quantizeFixed(q, x, n, scale, limit);
  for (size_t i = 0; i < n; ++i) {
    // Clamping before rounding is the same as after: the limits are integers.
    double v = double(x[i]) * scale;
    v = v > limit ? limit : (v < -limit ? -limit : v);
    v = v == v ? rintSmall(v) : 0.0;  // NaN quantises to 0 rather than UB
    q[i] = int32_t(v);
  }
}

void dequantizeFixed(float* x, const int32_t* q, size_t n, int exponent, int workers) {
  checkWorkers(workers);
  const double inverse = fixedInverse(exponent, workers);
  if (useAvx2()) return avx2::dequantizeFixed(x, q, n, inverse);
  for (size_t i = 0; i < n; ++i) x[i] = float(double(q[i]) * inverse);
}

void dequantizeFixedStreaming(float* x, const int32_t* q, size_t n, int exponent, int workers) {
  if (!useAvx2()) return dequantizeFixed(x, q, n, exponent, workers);
  checkWorkers(workers);
  avx2::dequantizeFixedStreaming(x, q, n, fixedInverse(exponent, workers));
}

void quantizeFixedBlocks(int32_t* q, const float* x, size_t n, size_t block, const int32_t* exps,
                         int workers) {
  checkBlock(block);
  for (size_t b = 0, i = 0; i < n; ++b, i += block)
    quantizeFixed(q + i, x + i, n - i < block ? n - i : block, exps[b], workers);
}

void dequantizeFixedBlocks(float* x, const int32_t* q, size_t n, size_t block,
                           const int32_t* exps, int workers) {
  checkBlock(block);
  for (size_t b = 0, i = 0; i < n; ++b, i += block)
    dequantizeFixed(x + i, q + i, n - i < block ? n - i : block, exps[b], workers);
}

}  // namespace ringflow::kernels
