// The per-instruction-set entry points reduce.cc dispatches to.  Only call one
// after checking the CPU supports it (see simdLevel in reduce.cc).
#pragma once

#include <cstddef>

#include "ringflow/types.h"

namespace ringflow::kernels {
namespace avx2 {
void reduceN(void* dst, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op);
void divideF32(float* p, size_t n, float d);
void divideF64(double* p, size_t n, double d);
}
namespace avx512 {
void reduceN(void* dst, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op);
void divideF32(float* p, size_t n, float d);
void divideF64(double* p, size_t n, double d);
}
}  // namespace ringflow::kernels
