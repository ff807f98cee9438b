// AVX2 loops of the low-bit quantiser (compiled with -mavx2 -mfma
// -ffp-contract=off; quantize_lowbit.cc calls them only on CPUs that have
// both, for blocks that start at a multiple of 8 elements).  They give the
// portable loop's codes, scales, residuals and decoded values bit for bit:
// the same double division rounded half to even, the same float products.
// Internal linkage and no std:: templates, as in reduce_loops.h.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ringflow::kernels::avx2 {
namespace {

constexpr float kFloatMax = 3.4028234663852886e38f;

inline __m256 load8(const float* x, const float* error, size_t i) {
  __m256 v = _mm256_loadu_ps(x + i);
  return error ? _mm256_add_ps(v, _mm256_loadu_ps(error + i)) : v;
}

// clamp(rint((v / s + L) * 0.5), 0, L) of four values, in double; the max
// comes first so that NaN (its second operand wins) maps to code 0.
inline __m128i codes4(__m256d v, __m256d s, __m256d levels) {
  __m256d t = _mm256_mul_pd(_mm256_add_pd(_mm256_div_pd(v, s), levels), _mm256_set1_pd(0.5));
  t = _mm256_min_pd(_mm256_max_pd(t, _mm256_setzero_pd()), levels);
  return _mm256_cvtpd_epi32(_mm256_round_pd(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// The 8 lanes' codes as `bits` packed bytes' worth of bits, lane i at bit i*bits.
template <int bits>
inline uint64_t pack8(__m256i c) {
  if constexpr (bits == 8) {
    alignas(32) int32_t lane[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lane), c);
    uint64_t w = 0;
    for (int i = 0; i < 8; ++i) w |= uint64_t(uint8_t(lane[i])) << (8 * i);
    return w;
  }
  const __m256i shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
  __m256i w = _mm256_sllv_epi32(c, shifts);  // at most 32 bits in all: OR the lanes
  w = _mm256_or_si256(w, _mm256_shuffle_epi32(w, 0x4e));
  w = _mm256_or_si256(w, _mm256_shuffle_epi32(w, 0xb1));
  __m128i r = _mm_or_si128(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
  return uint32_t(_mm_cvtsi128_si32(r));
}

// BITS is a template argument so that the code stores and loads below are
// fixed-size moves, not memcpy calls.
template <int bits>
float quantizeBlock(uint8_t* packed, float* residual, float* decoded, const float* x,
                    const float* error, size_t len) {
  const int levels = (1 << bits) - 1;
  const size_t vlen = len & ~size_t(7);
  __m256 m8 = _mm256_setzero_ps();
  const __m256 signBit = _mm256_set1_ps(-0.0f);
  for (size_t i = 0; i < vlen; i += 8)  // max(a, m) keeps m when a is NaN, as the scalar loop
    m8 = _mm256_max_ps(_mm256_andnot_ps(signBit, load8(x, error, i)), m8);
  alignas(32) float lane[8];
  _mm256_store_ps(lane, m8);
  float maxabs = 0.0f;
  for (float a : lane) maxabs = a > maxabs ? a : maxabs;
  for (size_t i = vlen; i < len; ++i) {
    float a = __builtin_fabsf(error ? x[i] + error[i] : x[i]);
    maxabs = a > maxabs ? a : maxabs;
  }
  if (!(maxabs <= kFloatMax)) maxabs = kFloatMax;
  const float s = maxabs / float(levels);

  const __m256d sd = _mm256_set1_pd(double(s)), levelsD = _mm256_set1_pd(double(levels));
  const __m256i levelsI = _mm256_set1_epi32(levels), mid = _mm256_set1_epi32((levels + 1) / 2);
  const __m256 s8 = _mm256_set1_ps(s);
  const bool zero = !(s > 0.0f);
  for (size_t i = 0; i < vlen; i += 8) {
    __m256 v = load8(x, error, i);
    __m256i c = zero ? mid
                     : _mm256_setr_m128i(codes4(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), sd, levelsD),
                                         codes4(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), sd, levelsD));
    __m256 deq = _mm256_mul_ps(s8, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_add_epi32(c, c), levelsI)));
    if (residual) _mm256_storeu_ps(residual + i, _mm256_sub_ps(v, deq));
    if (decoded) _mm256_storeu_ps(decoded + i, deq);
    uint64_t word = pack8<bits>(c);
    std::memcpy(packed + i * size_t(bits) / 8, &word, size_t(bits));
  }
  if (vlen == len) return s;
  // Tail of the span (fewer than 8): the same arithmetic one element at a time.
  uint64_t word = 0;
  const double sdd = double(s);
  for (size_t i = vlen; i < len; ++i) {
    float v = error ? x[i] + error[i] : x[i];
    int c = (levels + 1) / 2;
    if (!zero) {
      double t = (double(v) / sdd + double(levels)) * 0.5;
      t = t > double(levels) ? double(levels) : (t >= 0.0 ? t : 0.0);
      c = int(__builtin_rint(t));
    }
    float deq = s * float(2 * c - levels);
    if (residual) residual[i] = v - deq;
    if (decoded) decoded[i] = deq;
    word |= uint64_t(c) << ((i - vlen) * size_t(bits));
  }
  std::memcpy(packed + vlen * size_t(bits) / 8, &word, ((len - vlen) * size_t(bits) + 7) / 8);
  return s;
}

template <int bits>
void dequantizeBlock(float* x, const uint8_t* packed, float s, size_t len) {
  const int levels = (1 << bits) - 1;
  const __m256i shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
  const __m256i mask = _mm256_set1_epi32(levels), levelsI = mask;
  const __m256 s8 = _mm256_set1_ps(s);
  const size_t vlen = len & ~size_t(7);
  for (size_t i = 0; i < vlen; i += 8) {
    const uint8_t* p = packed + i * size_t(bits) / 8;
    __m256i c;
    if constexpr (bits == 8) {
      c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    } else {
      uint32_t word = 0;
      std::memcpy(&word, p, size_t(bits));
      c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(word)), shifts), mask);
    }
    _mm256_storeu_ps(x + i, _mm256_mul_ps(s8, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_add_epi32(c, c), levelsI))));
  }
  for (size_t i = vlen; i < len; ++i) {
    size_t bit = i * size_t(bits);
    int c = int((packed[bit >> 3] >> (bit & 7)) & unsigned(levels));
    x[i] = s * float(2 * c - levels);
  }
}

}  // namespace

// One block of len elements (x, error, residual, decoded all point at its
// first element; packed at its first byte, which the block starts exactly
// on).  Returns the block's scale.
float quantizeLowbitBlock(uint8_t* packed, float* residual, float* decoded, const float* x,
                          const float* error, size_t len, int bits) {
  switch (bits) {
    case 1: return quantizeBlock<1>(packed, residual, decoded, x, error, len);
    case 2: return quantizeBlock<2>(packed, residual, decoded, x, error, len);
    case 4: return quantizeBlock<4>(packed, residual, decoded, x, error, len);
    default: return quantizeBlock<8>(packed, residual, decoded, x, error, len);
  }
}

// x[0..len) = s * (2c - L) of one block's codes (packed at its first byte).
void dequantizeLowbitBlock(float* x, const uint8_t* packed, float s, size_t len, int bits) {
  switch (bits) {
    case 1: return dequantizeBlock<1>(x, packed, s, len);
    case 2: return dequantizeBlock<2>(x, packed, s, len);
    case 4: return dequantizeBlock<4>(x, packed, s, len);
    default: return dequantizeBlock<8>(x, packed, s, len);
  }
}

}  // namespace ringflow::kernels::avx2
