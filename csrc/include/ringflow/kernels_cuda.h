// GPU forms of the kernels, over device pointers, synchronous on the current
// device's default stream.  In a build without CUDA (or on a machine without
// a GPU or driver) every entry point throws ringflow::Error saying so; none
// crashes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ringflow/types.h"

namespace ringflow::kernels {

// Number of usable GPUs; throws Error naming the CUDA error when the runtime
// cannot answer (no driver, no device, built without CUDA).
int cudaDevices();

// dst[i] = op(srcs[0][i], ..., srcs[k-1][i]) on device memory (dst may alias
// srcs[0]); same semantics as reduceN.  srcs is a host array of device pointers.
void cudaReduceN(void* dst, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op);

// y = W x for a LutMatrix whose planes/scales were copied to the device as
// laid out on the host (see lut.h); tables are built on the device from x.
void cudaLutGemv(float* y, const uint8_t* planes, const float* tscales, const float* x,
                 size_t rows, size_t cols, int bits, size_t block);

// y[i] = sum_n coeffs[n] * dequantizeLowbit(codes row n)[i], all on the device,
// laid out as for lutWeightedSum (lut.h): codes [workers][lowbitPackedBytes(m,
// bits)], scales [workers][numBlocks(m, block)], coeffs [workers].
void cudaLutWeightedSum(float* y, const uint8_t* codes, const float* scales, const float* coeffs,
                        size_t workers, size_t m, int bits, size_t block);

}  // namespace ringflow::kernels
