// The kernels' SIMD level (private to csrc/kernels): the enum and
// currentSimd() are public (ringflow/kernels.h); reduce.cc detects the level
// once at run time and lets RINGFLOW_SIMD or setSimdLevel lower it.
#pragma once

#include "ringflow/kernels.h"

namespace ringflow::kernels {

inline bool atLeastAvx2() { return currentSimd() >= Simd::Avx2; }

}  // namespace ringflow::kernels
