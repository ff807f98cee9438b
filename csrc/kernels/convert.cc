// Element-type conversion between the floating-point dtypes.
#include <string>

#include "half.h"
#include "ringflow/kernels.h"

namespace ringflow::kernels {
namespace {

// Reads element i of a floating-point buffer as float32 / writes one.
float load(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::Float32: return static_cast<const float*>(p)[i];
    case DType::Float64: return float(static_cast<const double*>(p)[i]);
    case DType::Float16: return halfToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::BFloat16: return bf16ToFloat(static_cast<const uint16_t*>(p)[i]);
    default: break;
  }
  return 0;
}

void store(void* p, DType t, size_t i, float v) {
  switch (t) {
    case DType::Float32: static_cast<float*>(p)[i] = v; return;
    case DType::Float64: static_cast<double*>(p)[i] = double(v); return;
    case DType::Float16: static_cast<uint16_t*>(p)[i] = floatToHalf(v); return;
    case DType::BFloat16: static_cast<uint16_t*>(p)[i] = floatToBf16(v); return;
    default: return;
  }
}

}  // namespace

void convert(void* dst, DType dstType, const void* src, DType srcType, size_t n) {
  if (!isFloating(dstType) || !isFloating(srcType))
    throw InvalidArgument(std::string("convert needs floating-point dtypes, got ") +
                          dtypeName(srcType) + " to " + dtypeName(dstType));
  // The dtype is chosen per element here, but conversions are rare (the
  // aggregate path of non-float32 tensors) and bound by memory anyway.
  for (size_t i = 0; i < n; ++i) store(dst, dstType, i, load(src, srcType, i));
}

}  // namespace ringflow::kernels
