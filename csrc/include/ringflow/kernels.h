// Stateless kernels over untyped pointers.  Every fast path has a scalar
// reference beside it that the tests compare against.
#pragma once

#include <cstddef>

#include "ringflow/types.h"

namespace ringflow::kernels {

// dst[i] = op(a[i], b[i]).  dst may alias a or b.  Avg reduces as Sum: the
// caller divides once at the end (see divide), as torch's backends do.
// float16/bfloat16 are computed in float32 and rounded to nearest-even.
void reduce(void* dst, const void* a, const void* b, size_t n, DType dtype, ReduceOp op);

// dst[i] = op(srcs[0][i], ..., srcs[k-1][i]), folded left to right so the
// result is deterministic; dst may alias srcs[0].  `threads` > 1 splits the
// range over that many threads (this one included): the caller's choice,
// worth it only far past the caches (bench/kernels.py --threads).
void reduceN(void* dst, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op,
             size_t threads = 1);

// dst[i] = src[i] converted between floating-point dtypes (float32, float64,
// float16, bfloat16), rounding to nearest-even; dst must not alias src.
void convert(void* dst, DType dstType, const void* src, DType srcType, size_t n);

// data[i] = data[i] / divisor, the last step of an average.
void divide(void* data, size_t n, DType dtype, double divisor);

// The plain loops the fast paths must agree with.
void reduceScalar(void* dst, const void* a, const void* b, size_t n, DType dtype, ReduceOp op);
void reduceNScalar(void* dst, const void* const* srcs, size_t k, size_t n, DType dtype,
                   ReduceOp op);

// The instruction set the CPU kernels dispatch to on this machine: "avx512",
// "avx2" or "scalar".  RINGFLOW_SIMD=<level> in the environment lowers it.
const char* simdLevel();

// Lowers (or restores, up to what the CPU has) the level the kernels use, so
// tests and benchmarks can compare paths; returns the level now in force.
const char* setSimdLevel(const char* name);

// The widest level this CPU supports, whatever setSimdLevel chose.
const char* detectedSimdLevel();

// The level in force now, as the enum every kernel dispatches on (see
// ringflow/simd_variants.h).  Avx2 and above imply AVX2 + FMA on this CPU.
enum class Simd : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };
Simd currentSimd();

}  // namespace ringflow::kernels
