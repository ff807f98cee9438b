// Function multi-versioning for loops that are plain C++ (or GCC vector
// extensions) rather than intrinsics: RINGFLOW_CLONES builds a function for
// baseline x86-64 and for AVX2 and picks one at load time.  Vectors must not
// cross a call between clones (their ABI differs), so helpers that take or
// return them are RINGFLOW_INLINE.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RINGFLOW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define RINGFLOW_CLONES
#endif
#define RINGFLOW_INLINE inline __attribute__((always_inline))
