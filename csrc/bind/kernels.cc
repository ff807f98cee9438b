// The reduce kernels, over raw addresses; ringflow.ops wraps them for arrays.
#include <pybind11/stl.h>

#include "bind.h"
#include "ringflow/kernels.h"

namespace py = pybind11;

namespace ringflow::bind {
// The other kernel families register into the same submodule (one file each).
void bindKernelsQuant(py::module_& k);
void bindKernelsLut(py::module_& k);
void bindKernelsCuda(py::module_& k);

void bindKernels(py::module_& m) {
  py::module_ k = m.def_submodule("kernels", "stateless kernels over raw addresses");
  k.def("simd_level", &kernels::simdLevel);
  k.def("set_simd_level", &kernels::setSimdLevel, py::arg("level"),
        "lower (or restore) the SIMD level the CPU kernels use; returns the level in force");
  k.def("detected_simd_level", &kernels::detectedSimdLevel);
  k.def("reduce", [](uintptr_t dst, uintptr_t a, uintptr_t b, size_t n, int dt, int op) {
        kernels::reduce(at(dst), at(a), at(b), n, dtypeFromInt(dt), reduceOpFromInt(op));
      }, Release());
  k.def("reduce_scalar", [](uintptr_t dst, uintptr_t a, uintptr_t b, size_t n, int dt, int op) {
        kernels::reduceScalar(at(dst), at(a), at(b), n, dtypeFromInt(dt), reduceOpFromInt(op));
      }, Release());
  k.def("reduce_n", [](uintptr_t dst, std::vector<uintptr_t> srcs, size_t n, int dt, int op,
                       size_t threads) {
        std::vector<const void*> p(srcs.size());
        for (size_t i = 0; i < srcs.size(); ++i) p[i] = at(srcs[i]);
        kernels::reduceN(at(dst), p.data(), p.size(), n, dtypeFromInt(dt), reduceOpFromInt(op),
                         threads);
      }, py::arg("dst"), py::arg("srcs"), py::arg("n"), py::arg("dtype"), py::arg("op"),
      py::arg("threads") = 1, Release());
  k.def("reduce_n_scalar", [](uintptr_t dst, std::vector<uintptr_t> srcs, size_t n, int dt, int op) {
        std::vector<const void*> p(srcs.size());
        for (size_t i = 0; i < srcs.size(); ++i) p[i] = at(srcs[i]);
        kernels::reduceNScalar(at(dst), p.data(), p.size(), n, dtypeFromInt(dt), reduceOpFromInt(op));
      }, Release());
  k.def("divide", [](uintptr_t data, size_t n, int dt, double divisor) {
        kernels::divide(at(data), n, dtypeFromInt(dt), divisor);
      }, Release());
  bindKernelsQuant(k);
  bindKernelsLut(k);
  bindKernelsCuda(k);
}

}  // namespace ringflow::bind
