// Built instead of the .cu files when CUDA is off: the entry points exist so
// the bindings link, and say clearly why they cannot run.
#include "ringflow/kernels_cuda.h"

namespace ringflow::kernels {
namespace {
[[noreturn]] void noCuda() { throw Error("ringflow was built without CUDA kernels (RINGFLOW_CUDA=OFF or no nvcc)"); }
}  // namespace

int cudaDevices() { noCuda(); }
void cudaReduceN(void*, const void* const*, size_t, size_t, DType, ReduceOp) { noCuda(); }
void cudaLutGemv(float*, const uint8_t*, const float*, const float*, size_t, size_t, int, size_t) {
  noCuda();
}
void cudaLutWeightedSum(float*, const uint8_t*, const float*, const float*, size_t, size_t, int, size_t) {
  noCuda();
}

}  // namespace ringflow::kernels
