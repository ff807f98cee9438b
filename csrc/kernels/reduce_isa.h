// The per-instruction-set entry points reduce.cc dispatches to.  Only call one
// after checking the CPU supports it (see simdLevel in reduce.cc).
#pragma once

#include <cstddef>

#include "ringflow/types.h"

namespace ringflow::kernels {
namespace avx2 {
void reduceN(void* dst, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op);
}
namespace avx512 {
void reduceN(void* dst, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op);
}
}  // namespace ringflow::kernels
