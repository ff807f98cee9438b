// The per-instruction-set fixed-point loops quantize_fixed.cc dispatches to.
// Only call one after checking the CPU supports it (simdLevel()).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ringflow::kernels::avx2 {
// q[i] = round-half-even(clamp(x[i] * scale, +-limit)), NaN -> 0.
void quantizeFixed(int32_t* q, const float* x, size_t n, double scale, double limit);
// x[i] = float(double(q[i]) * inverse).
void dequantizeFixed(float* x, const int32_t* q, size_t n, double inverse);
void dequantizeFixedStreaming(float* x, const int32_t* q, size_t n, double inverse);
}  // namespace ringflow::kernels::avx2
