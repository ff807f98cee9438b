// The instruction-set level the CPU kernels run at, as one enum every kernel
// file dispatches on (private to csrc/kernels).  reduce.cc detects it once at
// run time and lets RINGFLOW_SIMD or setSimdLevel lower it; its name is
// simdLevel() (kernels.h).
#pragma once

namespace ringflow::kernels {

enum class Simd : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// The level in force now.  Avx2 and above imply AVX2 + FMA on this CPU.
Simd currentSimd();

inline bool atLeastAvx2() { return currentSimd() >= Simd::Avx2; }

}  // namespace ringflow::kernels
