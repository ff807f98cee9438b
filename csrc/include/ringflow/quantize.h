// Gradient quantisation kernels (CPU, float32 in and out).
//
// Fixed point (SwitchML's scheme): a block of values shares an
// exponent e with 2^e >= max|x|; each value becomes an int32 with scale
// INT32_MAX / (N * 2^e), so the sum of N workers' integers cannot overflow
// and the aggregator's integer adds are exact and order-independent.  The
// workers must agree on e (the max of their own exponents) before quantising.
//
// Low-bit (1, 2, 4, 8 bits): per block a scale s = max|x| / (2^b - 1) and
// codes c in [0, 2^b - 1] meaning s * (2c - (2^b - 1)) (offset binary: odd,
// symmetric levels), packed little-endian, element i at bit i*b.  Error
// feedback: pass last step's residual in, get this step's out.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ringflow::kernels {

// --- fixed point ---

// Exponent given to an all-zero block (any value works; this one is tiny).
constexpr int kFixedZeroExponent = -126;

// Smallest e with 2^e >= max|x[i]|; throws InvalidArgument on NaN or inf.
int fixedExponent(const float* x, size_t n);
// The same without throwing: false (and *exponent untouched) on NaN or inf.
bool fixedExponentIfFinite(const float* x, size_t n, int* exponent);

// exps[b] = fixedExponent of block b (the last block may be short).
void fixedBlockExponents(int32_t* exps, const float* x, size_t n, size_t block);

// q[i] = round-half-even(x[i] * INT32_MAX / (workers * 2^exponent)),
// saturated to +-(INT32_MAX / workers) so N workers' sum always fits.
void quantizeFixed(int32_t* q, const float* x, size_t n, int exponent, int workers);

// x[i] = float(q[i] * (1 / scale)), 1 / scale rounded to double once: the
// inverse of quantizeFixed, for a summed span too.
void dequantizeFixed(float* x, const int32_t* q, size_t n, int exponent, int workers);
// The same bits, written with non-temporal stores where the CPU has AVX2:
// for a destination nothing reads again soon (the chunks of a large
// allreduce), whose lines then need not be read before they are written.
void dequantizeFixedStreaming(float* x, const int32_t* q, size_t n, int exponent, int workers);

// Per-block forms: block b of `block` elements uses exps[b].
void quantizeFixedBlocks(int32_t* q, const float* x, size_t n, size_t block, const int32_t* exps,
                         int workers);
void dequantizeFixedBlocks(float* x, const int32_t* q, size_t n, size_t block,
                           const int32_t* exps, int workers);

// --- low bit ---

// Throws InvalidArgument unless bits is 1, 2, 4 or 8.
void checkLowbitBits(int bits);
inline size_t lowbitPackedBytes(size_t n, int bits) { return (n * size_t(bits) + 7) / 8; }
inline size_t numBlocks(size_t n, size_t block) { return (n + block - 1) / block; }

// Quantises x (+ error, when not null) into packed codes and per-block
// scales; writes residual = (x + error) - dequantised when residual is not
// null (it may alias error), and the dequantised values themselves when
// decoded is not null (it may alias x), in the same pass.
void quantizeLowbit(uint8_t* packed, float* scales, float* residual, const float* x,
                    const float* error, size_t n, int bits, size_t block,
                    float* decoded = nullptr);

void dequantizeLowbit(float* x, const uint8_t* packed, const float* scales, size_t n, int bits,
                      size_t block);

// The code of element i in a packed span.
inline unsigned lowbitCode(const uint8_t* packed, size_t i, int bits) {
  size_t bit = i * size_t(bits);
  return (packed[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1u);
}

}  // namespace ringflow::kernels
