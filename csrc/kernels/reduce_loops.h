// The SIMD reduce loops, written once and compiled once per instruction set
// (reduce_avx2.cc, reduce_avx512.cc include this with RF_ISA set and their own
// -m flags).  They are plain loops the compiler vectorises; what makes them
// fast is the memory pattern, and what keeps them bit-identical to
// reduce_scalar.cc is that every element sees the same operations in the
// same order (left fold, float32 accumulation for half types).
//
// Everything here has internal linkage and uses no std:: templates: an inline
// function emitted by an AVX-512 translation unit must never be picked by the
// linker for a caller running on a CPU without AVX-512.
#ifndef RF_ISA
#error "define RF_ISA (the namespace of the instruction set) before including reduce_loops.h"
#endif

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "ringflow/types.h"

namespace ringflow::kernels::RF_ISA {
namespace {

// N-way reductions walk the output in chunks small enough to stay in L1, so
// each source is read from memory once and the output written once.
constexpr size_t kChunkBytes = 8192;

inline size_t minSize(size_t a, size_t b) { return a < b ? a : b; }

template <typename T>
constexpr bool kIsFloat = T(0.5) != T(0);

// Unsigned arithmetic, so signed sums and products wrap instead of being UB.
template <typename T>
struct Unsigned { using type = T; };
template <> struct Unsigned<int8_t> { using type = uint8_t; };
template <> struct Unsigned<int32_t> { using type = uint32_t; };
template <> struct Unsigned<int64_t> { using type = uint64_t; };

struct OpSum {
  template <typename T>
  static T f(T a, T b) {
    if constexpr (kIsFloat<T>) return a + b;
    using U = typename Unsigned<T>::type;
    return T(U(a) + U(b));
  }
};
struct OpProd {
  template <typename T>
  static T f(T a, T b) {
    if constexpr (kIsFloat<T>) return a * b;
    using U = typename Unsigned<T>::type;
    return T(U(a) * U(b));
  }
};
// NaN propagates as a + b does in the reference.  Both sides are computed
// and then selected, so the compiler needs no speculation to vectorise.
struct OpMin {
  template <typename T>
  static T f(T a, T b) {
    T m = b < a ? b : a;
    if constexpr (kIsFloat<T>) {
      T s = a + b;
      return (a != a || b != b) ? s : m;
    }
    return m;
  }
};
struct OpMax {
  template <typename T>
  static T f(T a, T b) {
    T m = b > a ? b : a;
    if constexpr (kIsFloat<T>) {
      T s = a + b;
      return (a != a || b != b) ? s : m;
    }
    return m;
  }
};
struct OpAnd { template <typename T> static T f(T a, T b) { return T(a & b); } };
struct OpOr  { template <typename T> static T f(T a, T b) { return T(a | b); } };
struct OpXor { template <typename T> static T f(T a, T b) { return T(a ^ b); } };
// bool bytes: sum/max are OR, product/min AND, normalised to 0/1 as the reference does.
struct BoolOr  { static uint8_t f(uint8_t a, uint8_t b) { return uint8_t((a | b) != 0); } };
struct BoolAnd { static uint8_t f(uint8_t a, uint8_t b) { return uint8_t((a != 0) & (b != 0)); } };
struct BoolXor { static uint8_t f(uint8_t a, uint8_t b) { return uint8_t((a != 0) ^ (b != 0)); } };

template <typename T, typename Op>
void loop2(T* d, const T* a, const T* b, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = Op::f(a[i], b[i]);
}

template <typename T, typename Op>
void loopN(T* d, const void* const* s, size_t k, size_t n) {
  constexpr size_t C = kChunkBytes / sizeof(T);
  for (size_t i0 = 0; i0 < n; i0 += C) {
    size_t len = minSize(C, n - i0);
    loop2<T, Op>(d + i0, static_cast<const T*>(s[0]) + i0, static_cast<const T*>(s[1]) + i0, len);
    for (size_t j = 2; j < k; ++j) loop2<T, Op>(d + i0, d + i0, static_cast<const T*>(s[j]) + i0, len);
  }
}

// --- float16 / bfloat16: widen a chunk to float32, reduce, narrow once. ---

// F16C conversions round to nearest even and keep subnormals, as half.h does.
void halfToFloatN(float* d, const uint16_t* s, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  if (i < n) {
    uint16_t t[8] = {0};
    float f[8];
    std::memcpy(t, s + i, (n - i) * 2);
    _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t))));
    std::memcpy(d + i, f, (n - i) * 4);
  }
}
void floatToHalfN(uint16_t* d, const float* s, size_t n) {
  constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(s + i), kRne));
  if (i < n) {
    float f[8] = {0};
    uint16_t t[8];
    std::memcpy(f, s + i, (n - i) * 4);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(t), _mm256_cvtps_ph(_mm256_loadu_ps(f), kRne));
    std::memcpy(d + i, t, (n - i) * 2);
  }
}
void bf16ToFloatN(float* d, const uint16_t* s, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t u = uint32_t(s[i]) << 16;
    std::memcpy(d + i, &u, 4);
  }
}
// Same bit recipe as half.h's floatToBf16 (NaN quieted, ties to even).
void floatToBf16N(uint16_t* d, const float* s, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, s + i, 4);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    d[i] = uint16_t((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
}

using Widen = void (*)(float*, const uint16_t*, size_t);
using Narrow = void (*)(uint16_t*, const float*, size_t);

template <typename Op>
void loopNHalf(uint16_t* d, const void* const* s, size_t k, size_t n, Widen widen, Narrow narrow) {
  constexpr size_t C = kChunkBytes / sizeof(float);
  alignas(64) float acc[C];
  alignas(64) float x[C];
  for (size_t i0 = 0; i0 < n; i0 += C) {
    size_t len = minSize(C, n - i0);
    widen(acc, static_cast<const uint16_t*>(s[0]) + i0, len);
    for (size_t j = 1; j < k; ++j) {
      widen(x, static_cast<const uint16_t*>(s[j]) + i0, len);
      loop2<float, Op>(acc, acc, x, len);
    }
    narrow(d + i0, acc, len);
  }
}

template <typename T>
void dispatchTyped(T* d, const void* const* s, size_t k, size_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg: return loopN<T, OpSum>(d, s, k, n);
    case ReduceOp::Product: return loopN<T, OpProd>(d, s, k, n);
    case ReduceOp::Min: return loopN<T, OpMin>(d, s, k, n);
    case ReduceOp::Max: return loopN<T, OpMax>(d, s, k, n);
    case ReduceOp::BAnd: if constexpr (!kIsFloat<T>) return loopN<T, OpAnd>(d, s, k, n); break;
    case ReduceOp::BOr: if constexpr (!kIsFloat<T>) return loopN<T, OpOr>(d, s, k, n); break;
    case ReduceOp::BXor: if constexpr (!kIsFloat<T>) return loopN<T, OpXor>(d, s, k, n); break;
  }
}

void dispatchBool(uint8_t* d, const void* const* s, size_t k, size_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Max:
    case ReduceOp::BOr: return loopN<uint8_t, BoolOr>(d, s, k, n);
    case ReduceOp::Product:
    case ReduceOp::Min:
    case ReduceOp::BAnd: return loopN<uint8_t, BoolAnd>(d, s, k, n);
    case ReduceOp::BXor: return loopN<uint8_t, BoolXor>(d, s, k, n);
    default: return;
  }
}

void dispatchHalf(uint16_t* d, const void* const* s, size_t k, size_t n, ReduceOp op, Widen w,
                  Narrow nr) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg: return loopNHalf<OpSum>(d, s, k, n, w, nr);
    case ReduceOp::Product: return loopNHalf<OpProd>(d, s, k, n, w, nr);
    case ReduceOp::Min: return loopNHalf<OpMin>(d, s, k, n, w, nr);
    case ReduceOp::Max: return loopNHalf<OpMax>(d, s, k, n, w, nr);
    default: return;
  }
}

}  // namespace

// k >= 2 sources; the caller has validated (dtype, op).  The 2-way reduce is
// the k == 2 case.
void reduceN(void* dst, const void* const* s, size_t k, size_t n, DType dtype, ReduceOp op) {
  switch (dtype) {
    case DType::Float32: return dispatchTyped(static_cast<float*>(dst), s, k, n, op);
    case DType::Float64: return dispatchTyped(static_cast<double*>(dst), s, k, n, op);
    case DType::Int8: return dispatchTyped(static_cast<int8_t*>(dst), s, k, n, op);
    case DType::UInt8: return dispatchTyped(static_cast<uint8_t*>(dst), s, k, n, op);
    case DType::Int32: return dispatchTyped(static_cast<int32_t*>(dst), s, k, n, op);
    case DType::Int64: return dispatchTyped(static_cast<int64_t*>(dst), s, k, n, op);
    case DType::Bool: return dispatchBool(static_cast<uint8_t*>(dst), s, k, n, op);
    case DType::Float16:
      return dispatchHalf(static_cast<uint16_t*>(dst), s, k, n, op, halfToFloatN, floatToHalfN);
    case DType::BFloat16:
      return dispatchHalf(static_cast<uint16_t*>(dst), s, k, n, op, bf16ToFloatN, floatToBf16N);
  }
}

// x / d element by element: IEEE division is correctly rounded at every
// vector width, so these match the scalar loop (and torch's x / d) bit for bit.
// A multiply by 1/d would not, hence the divide instructions.
void divideF32(float* p, size_t n, float d) {
  for (size_t i = 0; i < n; ++i) p[i] = p[i] / d;
}
void divideF64(double* p, size_t n, double d) {
  for (size_t i = 0; i < n; ++i) p[i] = p[i] / d;
}

}  // namespace ringflow::kernels::RF_ISA
