// The reference reductions: one plain loop per (dtype, op), no tricks.
#include <cmath>
#include <cstdint>
#include <vector>

#include "half.h"
#include "ringflow/kernels.h"

namespace ringflow::kernels {
namespace {

// Float semantics follow torch: min/max propagate NaN.
template <typename T>
T applyOp(ReduceOp op, T a, T b) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg: return T(a + b);
    case ReduceOp::Product: return T(a * b);
    case ReduceOp::Min:
      if constexpr (std::is_floating_point_v<T>) {
        if (std::isnan(a) || std::isnan(b)) return a + b;
      }
      return b < a ? b : a;
    case ReduceOp::Max:
      if constexpr (std::is_floating_point_v<T>) {
        if (std::isnan(a) || std::isnan(b)) return a + b;
      }
      return b > a ? b : a;
    case ReduceOp::BAnd:
      if constexpr (std::is_integral_v<T>) return T(a & b);
      break;
    case ReduceOp::BOr:
      if constexpr (std::is_integral_v<T>) return T(a | b);
      break;
    case ReduceOp::BXor:
      if constexpr (std::is_integral_v<T>) return T(a ^ b);
      break;
  }
  return a;  // unreachable once checkReduceOp passed
}

// bool is stored as one byte 0/1: sum and max are OR, product and min AND.
inline uint8_t applyBool(ReduceOp op, uint8_t a, uint8_t b) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Max:
    case ReduceOp::BOr: return uint8_t((a | b) != 0);
    case ReduceOp::Product:
    case ReduceOp::Min:
    case ReduceOp::BAnd: return uint8_t((a != 0) & (b != 0));
    case ReduceOp::BXor: return uint8_t((a != 0) ^ (b != 0));
    default: return a;
  }
}

// Signed integer sums wrap (two's complement), as torch's do.
template <typename T>
T wrapOp(ReduceOp op, T a, T b) {
  using U = std::make_unsigned_t<T>;
  if (op == ReduceOp::Sum) return T(U(a) + U(b));
  if (op == ReduceOp::Product) return T(U(a) * U(b));
  return applyOp(op, a, b);
}

template <typename T>
void loop2(T* d, const T* a, const T* b, size_t n, ReduceOp op) {
  for (size_t i = 0; i < n; ++i) {
    if constexpr (std::is_integral_v<T>)
      d[i] = wrapOp(op, a[i], b[i]);
    else
      d[i] = applyOp(op, a[i], b[i]);
  }
}

template <float (*Load)(uint16_t), uint16_t (*Store)(float)>
void loop2Half(uint16_t* d, const uint16_t* a, const uint16_t* b, size_t n, ReduceOp op) {
  for (size_t i = 0; i < n; ++i) d[i] = Store(applyOp(op, Load(a[i]), Load(b[i])));
}

template <float (*Load)(uint16_t), uint16_t (*Store)(float)>
void loopNHalf(uint16_t* d, const void* const* s, size_t k, size_t n, ReduceOp op) {
  for (size_t i = 0; i < n; ++i) {
    float acc = Load(static_cast<const uint16_t*>(s[0])[i]);
    for (size_t j = 1; j < k; ++j) acc = applyOp(op, acc, Load(static_cast<const uint16_t*>(s[j])[i]));
    d[i] = Store(acc);
  }
}

}  // namespace

void reduceScalar(void* dst, const void* a, const void* b, size_t n, DType dtype, ReduceOp op) {
  checkReduceOp(dtype, op);
  switch (dtype) {
#define RF_CASE(DT, T) \
  case DType::DT: return loop2(static_cast<T*>(dst), static_cast<const T*>(a), static_cast<const T*>(b), n, op);
    RF_CASE(Float32, float)
    RF_CASE(Float64, double)
    RF_CASE(Int8, int8_t)
    RF_CASE(UInt8, uint8_t)
    RF_CASE(Int32, int32_t)
    RF_CASE(Int64, int64_t)
#undef RF_CASE
    case DType::Float16:
      return loop2Half<halfToFloat, floatToHalf>(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(a),
                                                 static_cast<const uint16_t*>(b), n, op);
    case DType::BFloat16:
      return loop2Half<bf16ToFloat, floatToBf16>(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(a),
                                                 static_cast<const uint16_t*>(b), n, op);
    case DType::Bool: {
      auto* d = static_cast<uint8_t*>(dst);
      auto* x = static_cast<const uint8_t*>(a);
      auto* y = static_cast<const uint8_t*>(b);
      for (size_t i = 0; i < n; ++i) d[i] = applyBool(op, x[i], y[i]);
      return;
    }
  }
}

void reduceNScalar(void* dst, const void* const* srcs, size_t k, size_t n, DType dtype,
                   ReduceOp op) {
  checkReduceOp(dtype, op);
  if (k == 0) throw InvalidArgument("reduceN needs at least one source");
  // Half types accumulate all k inputs in float32 and round once.
  if (dtype == DType::Float16)
    return loopNHalf<halfToFloat, floatToHalf>(static_cast<uint16_t*>(dst), srcs, k, n, op);
  if (dtype == DType::BFloat16)
    return loopNHalf<bf16ToFloat, floatToBf16>(static_cast<uint16_t*>(dst), srcs, k, n, op);
  if (k == 1) {
    if (dst != srcs[0]) std::memcpy(dst, srcs[0], n * elementSize(dtype));
    return;
  }
  reduceScalar(dst, srcs[0], srcs[1], n, dtype, op);
  for (size_t j = 2; j < k; ++j) reduceScalar(dst, dst, srcs[j], n, dtype, op);
}

}  // namespace ringflow::kernels
