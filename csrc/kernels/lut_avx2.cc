// AVX2 inner loops of the LUT kernels (compiled with -mavx2 -mfma; lut.cc
// calls them only on CPUs that have both).  A 16-entry float table lives in
// two registers; vpermps looks up 8 lanes in each half and the index's bit 3
// picks the half, so the tables stay exact float32 (no int8 rounding).
// Internal linkage and no std:: templates, as in reduce_loops.h.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ringflow::kernels::avx2 {
namespace {

inline __m256 lookup16(__m256 tlo, __m256 thi, __m256i idx) {
  __m256 lo = _mm256_permutevar8x32_ps(tlo, idx);  // uses idx bits 0..2
  __m256 hi = _mm256_permutevar8x32_ps(thi, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// Codes of 8 consecutive elements (starting at a multiple of 8) as 8 lanes.
// BITS is a template argument so the load below is one fixed-size move.
template <int BITS>
inline __m256i codes8(const uint8_t* p, __m256i shifts, __m256i mask) {
  if constexpr (BITS == 8) return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  uint32_t word = 0;
  std::memcpy(&word, p, size_t(BITS));  // 8 codes of BITS bits = BITS bytes
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(word)), shifts), mask);
}

// acc[i] += sum_j 2^j * table[idx_j(i)] for i < len (a multiple of 8), where
// idx_j gathers bit j of the four workers' codes: workers' codes are packed
// into the bytes of one lane, and a multiply by 0x204081 moves bits 0, 8, 16
// and 24 to bits 21..24 at once.
template <int BITS>
void wsumGroup(float* acc, const uint8_t* const* codes, size_t first, size_t len, const float* table) {
  constexpr int bits = BITS;
  const __m256 tlo = _mm256_loadu_ps(table), thi = _mm256_loadu_ps(table + 8);
  const __m256i shifts = _mm256_setr_epi32(0, bits, 2 * bits, 3 * bits, 4 * bits, 5 * bits,
                                           6 * bits, 7 * bits);
  const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
  const __m256i ones = _mm256_set1_epi32(0x01010101);
  const __m256i gather = _mm256_set1_epi32(0x204081);
  for (size_t i = 0; i < len; i += 8) {
    size_t byte = (first + i) * size_t(bits) / 8;
    __m256i w = codes8<BITS>(codes[0] + byte, shifts, mask);
    w = _mm256_or_si256(w, _mm256_slli_epi32(codes8<BITS>(codes[1] + byte, shifts, mask), 8));
    w = _mm256_or_si256(w, _mm256_slli_epi32(codes8<BITS>(codes[2] + byte, shifts, mask), 16));
    w = _mm256_or_si256(w, _mm256_slli_epi32(codes8<BITS>(codes[3] + byte, shifts, mask), 24));
    __m256 a = _mm256_loadu_ps(acc + i);
#pragma GCC unroll 8
    for (int j = 0; j < bits; ++j) {
      __m256i t = _mm256_and_si256(_mm256_srl_epi32(w, _mm_cvtsi32_si128(j)), ones);
      __m256i idx = _mm256_srli_epi32(_mm256_mullo_epi32(t, gather), 21);
      a = _mm256_fmadd_ps(lookup16(tlo, thi, idx), _mm256_set1_ps(float(1 << j)), a);
    }
    _mm256_storeu_ps(acc + i, a);
  }
}

}  // namespace

void lutWsumGroup(float* acc, const uint8_t* const* codes, size_t first, size_t len, int bits,
                  const float* table) {
  switch (bits) {
    case 1: return wsumGroup<1>(acc, codes, first, len, table);
    case 2: return wsumGroup<2>(acc, codes, first, len, table);
    case 4: return wsumGroup<4>(acc, codes, first, len, table);
    default: return wsumGroup<8>(acc, codes, first, len, table);
  }
}

// One tile of 16 rows of a prepared LutMatrix (see lut.h for the layout):
// y16[r] = sum_b scale[r, b] * (2 * sum_{g in b, j} 2^j T_g[idx] - L * xsum[b]).
void lutGemvTile(float* y16, const uint8_t* planes, const float* tscales, const float* tables,
                 const float* xsum, size_t groups, size_t nblk, size_t groups_per_block,
                 int bits) {
  const __m256 two = _mm256_set1_ps(2.0f);
  const float levels = float((1 << bits) - 1);
  __m256 ylo = _mm256_setzero_ps(), yhi = _mm256_setzero_ps();
  const uint8_t* p = planes;
  for (size_t b = 0; b < nblk; ++b) {
    __m256 alo = _mm256_setzero_ps(), ahi = _mm256_setzero_ps();
    size_t gend = (b + 1) * groups_per_block < groups ? (b + 1) * groups_per_block : groups;
    for (size_t g = b * groups_per_block; g < gend; ++g) {
      const __m256 tlo = _mm256_loadu_ps(tables + 16 * g), thi = _mm256_loadu_ps(tables + 16 * g + 8);
      for (int j = 0; j < bits; ++j, p += 8) {
        const __m256 w = _mm256_set1_ps(float(1 << j));
        __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
        alo = _mm256_fmadd_ps(lookup16(tlo, thi, idx), w, alo);
        ahi = _mm256_fmadd_ps(lookup16(tlo, thi, _mm256_srli_epi32(idx, 4)), w, ahi);
      }
    }
    const __m256 corr = _mm256_set1_ps(levels * xsum[b]);
    ylo = _mm256_fmadd_ps(_mm256_loadu_ps(tscales + 16 * b), _mm256_fmsub_ps(two, alo, corr), ylo);
    yhi = _mm256_fmadd_ps(_mm256_loadu_ps(tscales + 16 * b + 8), _mm256_fmsub_ps(two, ahi, corr), yhi);
  }
  _mm256_storeu_ps(y16, ylo);
  _mm256_storeu_ps(y16 + 8, yhi);
}

// The int8-table tile (LutMatrix::idx8 layout).  Per (group, plane pair):
// one vpshufb looks up 16 rows x 2 planes in the group's table (broadcast to
// both 128-bit halves), one vpmaddubsw multiplies by (2^2q, 2^2q+1) and adds
// the pair into 16 int16 row sums.  int16 sums are widened to int32 before
// they can overflow: every `flushEvery` groups.
void lutGemvTileInt8(float* y16, const uint8_t* idx8, const float* tscales, const int8_t* tables8,
                     const float* tscale8, const float* xsum, size_t groups, size_t nblk,
                     size_t groups_per_block, int bits) {
  const int pairs = (bits + 1) / 2;
  const float levels = float((1 << bits) - 1);
  // |one group's int16 contribution| <= 127 * (2^bits - 1).
  const int flushEvery = 32767 / (127 * ((1 << bits) - 1));
  __m256i weights[4];
  for (int q = 0; q < pairs; ++q) {
    int even = 1 << (2 * q), odd = 2 * q + 1 < bits ? 1 << (2 * q + 1) : 0;
    weights[q] = _mm256_set1_epi16(short(even | (odd << 8)));
  }
  const __m256 two = _mm256_set1_ps(2.0f);
  __m256 ylo = _mm256_setzero_ps(), yhi = _mm256_setzero_ps();
  const uint8_t* p = idx8;
  for (size_t b = 0; b < nblk; ++b) {
    __m256i a32lo = _mm256_setzero_si256(), a32hi = _mm256_setzero_si256();
    __m256i a16 = _mm256_setzero_si256();
    int pending = 0;
    size_t gend = (b + 1) * groups_per_block < groups ? (b + 1) * groups_per_block : groups;
    for (size_t g = b * groups_per_block; g < gend; ++g) {
      const __m256i table = _mm256_broadcastsi128_si256(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(tables8 + 16 * g)));
      for (int q = 0; q < pairs; ++q, p += 32) {
        __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        a16 = _mm256_add_epi16(a16, _mm256_maddubs_epi16(weights[q], _mm256_shuffle_epi8(table, idx)));
      }
      if (++pending == flushEvery) {
        a32lo = _mm256_add_epi32(a32lo, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a16)));
        a32hi = _mm256_add_epi32(a32hi, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a16, 1)));
        a16 = _mm256_setzero_si256();
        pending = 0;
      }
    }
    a32lo = _mm256_add_epi32(a32lo, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a16)));
    a32hi = _mm256_add_epi32(a32hi, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a16, 1)));
    const __m256 ts = _mm256_set1_ps(tscale8[b]);
    const __m256 corr = _mm256_set1_ps(levels * xsum[b]);
    __m256 plo = _mm256_mul_ps(_mm256_cvtepi32_ps(a32lo), ts), phi = _mm256_mul_ps(_mm256_cvtepi32_ps(a32hi), ts);
    ylo = _mm256_fmadd_ps(_mm256_loadu_ps(tscales + 16 * b), _mm256_fmsub_ps(two, plo, corr), ylo);
    yhi = _mm256_fmadd_ps(_mm256_loadu_ps(tscales + 16 * b + 8), _mm256_fmsub_ps(two, phi, corr), yhi);
  }
  _mm256_storeu_ps(y16, ylo);
  _mm256_storeu_ps(y16 + 8, yhi);
}

}  // namespace ringflow::kernels::avx2
