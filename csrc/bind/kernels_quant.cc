// Quantisation kernels over raw addresses; ringflow.ops checks the arrays.
#include "bind.h"
#include "ringflow/quantize.h"

namespace py = pybind11;

namespace ringflow::bind {
void bindKernelsQuant(py::module_& k) {
  using namespace kernels;
  k.attr("FIXED_ZERO_EXPONENT") = kFixedZeroExponent;
  k.def("fixed_exponent", [](uintptr_t x, size_t n) { return fixedExponent(at<const float>(x), n); },
        Release());
  k.def("fixed_block_exponents", [](uintptr_t exps, uintptr_t x, size_t n, size_t block) {
        fixedBlockExponents(at<int32_t>(exps), at<const float>(x), n, block);
      }, Release());
  k.def("quantize_fixed_blocks", [](uintptr_t q, uintptr_t x, size_t n, size_t block, uintptr_t exps,
                                    int workers) {
        quantizeFixedBlocks(at<int32_t>(q), at<const float>(x), n, block, at<const int32_t>(exps), workers);
      }, Release());
  k.def("dequantize_fixed_blocks", [](uintptr_t x, uintptr_t q, size_t n, size_t block, uintptr_t exps,
                                      int workers) {
        dequantizeFixedBlocks(at<float>(x), at<const int32_t>(q), n, block, at<const int32_t>(exps), workers);
      }, Release());
  k.def("check_lowbit_bits", &checkLowbitBits);
  k.def("lowbit_packed_bytes", [](size_t n, int bits) {
        checkLowbitBits(bits);
        return lowbitPackedBytes(n, bits);
      });
  k.def("quantize_lowbit", [](uintptr_t packed, uintptr_t scales, uintptr_t residual, uintptr_t x,
                              uintptr_t error, size_t n, int bits, size_t block) {
        quantizeLowbit(at<uint8_t>(packed), at<float>(scales), at<float>(residual), at<const float>(x),
                       at<const float>(error), n, bits, block);
      }, Release(), "residual and error may be 0 (none)");
  k.def("dequantize_lowbit", [](uintptr_t x, uintptr_t packed, uintptr_t scales, size_t n, int bits,
                                size_t block) {
        dequantizeLowbit(at<float>(x), at<const uint8_t>(packed), at<const float>(scales), n, bits, block);
      }, Release());
}

}  // namespace ringflow::bind
