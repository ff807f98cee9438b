// Entry points of the reduce kernels.  They dispatch to the fastest path this
// CPU supports; until a SIMD path exists for a (dtype, op) the scalar
// reference serves it.
#include <cstring>

#include "half.h"
#include "ringflow/kernels.h"

namespace ringflow::kernels {

void reduce(void* dst, const void* a, const void* b, size_t n, DType dtype, ReduceOp op) {
  reduceScalar(dst, a, b, n, dtype, op);
}

void reduceN(void* dst, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op) {
  reduceNScalar(dst, srcs, k, n, dtype, op);
}

void divide(void* data, size_t n, DType dtype, double divisor) {
  switch (dtype) {
    case DType::Float32: {
      auto* p = static_cast<float*>(data);
      const float d = float(divisor);  // float division, as torch does it
      for (size_t i = 0; i < n; ++i) p[i] = p[i] / d;
      return;
    }
    case DType::Float64: {
      auto* p = static_cast<double*>(data);
      for (size_t i = 0; i < n; ++i) p[i] /= divisor;
      return;
    }
    case DType::Float16: {
      auto* p = static_cast<uint16_t*>(data);
      for (size_t i = 0; i < n; ++i) p[i] = floatToHalf(halfToFloat(p[i]) / float(divisor));
      return;
    }
    case DType::BFloat16: {
      auto* p = static_cast<uint16_t*>(data);
      for (size_t i = 0; i < n; ++i) p[i] = floatToBf16(bf16ToFloat(p[i]) / float(divisor));
      return;
    }
    default:
      throw InvalidArgument(std::string("divide needs a floating-point dtype, got ") +
                            dtypeName(dtype));
  }
}

const char* simdLevel() { return "scalar"; }

}  // namespace ringflow::kernels
