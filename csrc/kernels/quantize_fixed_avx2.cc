// The fixed-point loops of quantize_fixed.cc written for AVX2 (flags set in
// sources.cmake): the same IEEE operations in the same order, so the same
// bits, eight floats per step.  Compilers vectorise the portable loops only
// to about half this speed: the clamp and NaN selects become six compares and
// four blends where max, min and one ordered-compare mask suffice, and the
// round-half-even goes through two adds where vcvtpd2dq rounds by itself.
#include <immintrin.h>

#include "quantize_isa.h"

namespace ringflow::kernels::avx2 {
namespace {

// Four floats (as doubles) times scale, NaN -> 0, clamped, rounded half to
// even (vcvtpd2dq under the default rounding mode, as rint).
inline __m128i quantize4(__m256d v, __m256d scale, __m256d lo, __m256d hi) {
  v = _mm256_mul_pd(v, scale);
  v = _mm256_and_pd(v, _mm256_cmp_pd(v, v, _CMP_ORD_Q));
  v = _mm256_min_pd(_mm256_max_pd(v, lo), hi);
  return _mm256_cvtpd_epi32(v);
}

}  // namespace

void quantizeFixed(int32_t* q, const float* x, size_t n, double scale, double limit) {
  const __m256d s = _mm256_set1_pd(scale), hi = _mm256_set1_pd(limit), lo = _mm256_set1_pd(-limit);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 f = _mm256_loadu_ps(x + i);
    __m128i a = quantize4(_mm256_cvtps_pd(_mm256_castps256_ps128(f)), s, lo, hi);
    __m128i b = quantize4(_mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)), s, lo, hi);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i),
                        _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1));
  }
  for (; i < n; ++i) {
    __m256d v = _mm256_set1_pd(double(x[i]));
    q[i] = _mm_cvtsi128_si32(quantize4(v, s, lo, hi));
  }
}

namespace {

// Eight int32 to floats, for either store.
inline __m256 dequantize8(const int32_t* q, __m256d r) {
  __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
  __m128 a = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(v)), r));
  __m128 b = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(v, 1)), r));
  return _mm256_insertf128_ps(_mm256_castps128_ps256(a), b, 1);
}

}  // namespace

void dequantizeFixed(float* x, const int32_t* q, size_t n, double inverse) {
  const __m256d r = _mm256_set1_pd(inverse);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, dequantize8(q + i, r));
  for (; i < n; ++i) x[i] = float(double(q[i]) * inverse);
}

void dequantizeFixedStreaming(float* x, const int32_t* q, size_t n, double inverse) {
  const __m256d r = _mm256_set1_pd(inverse);
  size_t i = 0;
  // Plain stores up to the first 32-byte boundary (floats are 4-aligned).
  for (; i < n && (reinterpret_cast<uintptr_t>(x + i) & 31); ++i)
    x[i] = float(double(q[i]) * inverse);
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(x + i, dequantize8(q + i, r));
  for (; i < n; ++i) x[i] = float(double(q[i]) * inverse);
  // Non-temporal stores are weakly ordered: complete them before whatever
  // publishes the result to another thread.
  _mm_sfence();
}

}  // namespace ringflow::kernels::avx2
