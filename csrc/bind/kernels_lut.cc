// LUT kernels over raw addresses; a prepared LutMatrix is an opaque object.
#include <pybind11/numpy.h>

#include "bind.h"
#include "ringflow/lut.h"

namespace py = pybind11;

namespace ringflow::bind {
void bindKernelsLut(py::module_& k) {
  using namespace kernels;
  py::class_<LutMatrix>(k, "LutMatrix", "a low-bit matrix rearranged into bit-plane index tiles")
      .def_readonly("rows", &LutMatrix::rows)
      .def_readonly("cols", &LutMatrix::cols)
      .def_readonly("bits", &LutMatrix::bits)
      .def_readonly("block", &LutMatrix::block)
      .def_readonly("int8_tables", &LutMatrix::int8Tables)
      .def_property_readonly("planes", [](const LutMatrix& w) {
        return py::array_t<uint8_t>(py::ssize_t(w.planes.size()), w.planes.data());
      }, "copy of the bit-plane index tiles (to upload for the GPU kernel)")
      .def_property_readonly("tile_scales", [](const LutMatrix& w) {
        return py::array_t<float>(py::ssize_t(w.scales.size()), w.scales.data());
      })
      .def_property_readonly("nbytes", [](const LutMatrix& w) {
        return w.planes.size() + w.idx8.size() + w.scales.size() * sizeof(float);
      });
  k.def("lut_weighted_sum", [](uintptr_t y, uintptr_t codes, uintptr_t scales, uintptr_t coeffs,
                               size_t workers, size_t m, int bits, size_t block) {
        lutWeightedSum(at<float>(y), at<const uint8_t>(codes), at<const float>(scales),
                       at<const float>(coeffs), workers, m, bits, block);
      }, Release());
  k.def("lut_weighted_sum_scalar", [](uintptr_t y, uintptr_t codes, uintptr_t scales, uintptr_t coeffs,
                                      size_t workers, size_t m, int bits, size_t block) {
        lutWeightedSumScalar(at<float>(y), at<const uint8_t>(codes), at<const float>(scales),
                             at<const float>(coeffs), workers, m, bits, block);
      }, Release());
  k.def("lut_prepare", [](uintptr_t packed, uintptr_t scales, size_t rows, size_t cols, int bits,
                          size_t block, bool int8_tables) {
        return lutPrepare(at<const uint8_t>(packed), at<const float>(scales), rows, cols, bits, block,
                          int8_tables);
      }, Release(), py::arg("packed"), py::arg("scales"), py::arg("rows"), py::arg("cols"), py::arg("bits"),
      py::arg("block"), py::arg("int8_tables") = false);
  k.def("lut_gemv", [](uintptr_t y, const LutMatrix& w, uintptr_t x) {
        lutGemv(at<float>(y), w, at<const float>(x));
      }, Release());
  k.def("lut_gemv_scalar", [](uintptr_t y, uintptr_t packed, uintptr_t scales, uintptr_t x, size_t rows,
                              size_t cols, int bits, size_t block) {
        lutGemvScalar(at<float>(y), at<const uint8_t>(packed), at<const float>(scales), at<const float>(x),
                      rows, cols, bits, block);
      }, Release());
}

}  // namespace ringflow::bind
