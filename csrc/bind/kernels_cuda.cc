// GPU kernels over raw device addresses.  They exist in every build; without
// CUDA (or a GPU) they raise ringflow.Error explaining why.
#include <pybind11/stl.h>

#include <vector>

#include "bind.h"
#include "ringflow/kernels_cuda.h"

namespace py = pybind11;

namespace ringflow::bind {

void bindKernelsCuda(py::module_& k) {
  k.def("cuda_devices", &kernels::cudaDevices, Release());
  k.def("cuda_reduce_n", [](uintptr_t dst, std::vector<uintptr_t> srcs, size_t n, int dt, int op) {
        std::vector<const void*> p(srcs.size());
        for (size_t i = 0; i < srcs.size(); ++i) p[i] = reinterpret_cast<const void*>(srcs[i]);
        kernels::cudaReduceN(reinterpret_cast<void*>(dst), p.data(), p.size(), n, dtypeFromInt(dt),
                             reduceOpFromInt(op));
      }, Release());
  k.def("cuda_lut_gemv", [](uintptr_t y, uintptr_t planes, uintptr_t tscales, uintptr_t x, size_t rows,
                            size_t cols, int bits, size_t block) {
        kernels::cudaLutGemv(reinterpret_cast<float*>(y), reinterpret_cast<const uint8_t*>(planes),
                             reinterpret_cast<const float*>(tscales), reinterpret_cast<const float*>(x),
                             rows, cols, bits, block);
      }, Release());
  k.def("cuda_lut_weighted_sum", [](uintptr_t y, uintptr_t codes, uintptr_t scales, uintptr_t coeffs,
                                    size_t workers, size_t m, int bits, size_t block) {
        kernels::cudaLutWeightedSum(reinterpret_cast<float*>(y), reinterpret_cast<const uint8_t*>(codes),
                                    reinterpret_cast<const float*>(scales),
                                    reinterpret_cast<const float*>(coeffs), workers, m, bits, block);
      }, Release());
}

}  // namespace ringflow::bind
