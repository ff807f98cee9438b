// The merge's arithmetic: out = a0*out + sum_j a[j]*x[j], in blocks small
// enough that `out` stays in L1 while every input streams past it once.
#include <cstddef>

#include "ringflow/malt.h"
#include "ringflow/simd_variants.h"

namespace ringflow::malt {

namespace {

constexpr size_t kBlock = 2048;  // floats: 8 KiB of out per block

RINGFLOW_INLINE void scaleAddBody(float* out, float a0, const float* x, float a, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a0 * out[i] + a * x[i];
}
RINGFLOW_SIMD_VARIANTS(void, scaleAdd, (float* out, float a0, const float* x, float a, size_t n),
                       (out, a0, x, a, n))

RINGFLOW_INLINE void addScaledBody(float* out, const float* x, float a, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] += a * x[i];
}
RINGFLOW_SIMD_VARIANTS(void, addScaled, (float* out, const float* x, float a, size_t n),
                       (out, x, a, n))

}  // namespace

void weightedSum(float* out, float a0, const float* const* x, const float* a, size_t m, size_t n) {
  for (size_t lo = 0; lo < n; lo += kBlock) {
    const size_t len = n - lo < kBlock ? n - lo : kBlock;
    if (m == 0) {
      for (size_t i = 0; i < len; ++i) out[lo + i] *= a0;
      continue;
    }
    scaleAdd(out + lo, a0, x[0] + lo, a[0], len);
    for (size_t j = 1; j < m; ++j) addScaled(out + lo, x[j] + lo, a[j], len);
  }
}

}  // namespace ringflow::malt
