// The one way a kernel picks its SIMD path: the level kernels::currentSimd()
// reports (detected once, lowered by RINGFLOW_SIMD or setSimdLevel).
// Intrinsic kernels keep a translation unit per instruction set; plain loops
// (C++ or GCC vector extensions) are written once as an inline `nameBody`
// and RINGFLOW_SIMD_VARIANTS builds `name` from it twice -- for baseline
// x86-64 and with AVX2 + FMA enabled -- and dispatches on that level.
// Vectors must not cross a call between the two builds (their ABI differs),
// so helpers that take or return them are RINGFLOW_INLINE.
#pragma once

#include "ringflow/kernels.h"

#define RINGFLOW_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__)
#define RINGFLOW_SIMD_VARIANTS(ret, name, params, args)                                   \
  __attribute__((target("avx2,fma"))) static ret name##Avx2 params {                     \
    return name##Body args;                                                               \
  }                                                                                       \
  ret name params {                                                                       \
    if (::ringflow::kernels::currentSimd() >= ::ringflow::kernels::Simd::Avx2)            \
      return name##Avx2 args;                                                             \
    return name##Body args;                                                               \
  }
#else
#define RINGFLOW_SIMD_VARIANTS(ret, name, params, args) \
  ret name params { return name##Body args; }
#endif
