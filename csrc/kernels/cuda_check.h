// Turning CUDA runtime errors into ringflow errors, for the .cu files.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "ringflow/types.h"

namespace ringflow::kernels {

inline void cudaCheck(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(e) + " (" +
                cudaGetErrorString(e) + ")");
}

// Called first by every host entry point: without a driver or a device the
// runtime reports an error here, which becomes a clear ringflow::Error.
inline void requireGpu(const char* what) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess)
    throw Error(std::string(what) + " needs a CUDA GPU, but the CUDA runtime reports " +
                cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
  if (n == 0) throw Error(std::string(what) + " needs a CUDA GPU, and none is visible");
}

}  // namespace ringflow::kernels
