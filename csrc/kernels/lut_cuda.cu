// LUT GEMV on the GPU.  One kernel builds the 16-entry tables of every group
// of four activations; the GEMV kernel stages one scale block's tables in
// shared memory at a time, and each thread walks the bit-plane indices of
// one row (layout of LutMatrix, lut.h: tiles of 16 rows, 8 bytes per group
// and plane, row r's nibble in byte r % 8, high half for rows 8..15).
#include <cstdint>
#include <vector>

#include "cuda_check.h"
#include "ringflow/kernels_cuda.h"

namespace ringflow::kernels {
namespace {

__global__ void buildTablesKernel(float* tables, const float* x, size_t cols, size_t groups) {
  size_t g = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (g >= groups) return;
  float c[4];
  for (int i = 0; i < 4; ++i) c[i] = 4 * g + i < cols ? x[4 * g + i] : 0.0f;
  float t[16];
  t[0] = 0.0f;
  for (int idx = 1; idx < 16; ++idx) {
    int top = 31 - __clz(idx);
    t[idx] = t[idx & ~(1 << top)] + c[top];
  }
  for (int idx = 0; idx < 16; ++idx) tables[16 * g + idx] = t[idx];
}

__global__ void blockSumsKernel(float* xsum, const float* x, size_t cols, size_t block, size_t nblk) {
  size_t b = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (b >= nblk) return;
  float s = 0.0f;
  for (size_t k = b * block; k < cols && k < (b + 1) * block; ++k) s += x[k];
  xsum[b] = s;
}

__global__ void lutGemvKernel(float* y, const uint8_t* planes, const float* tscales,
                              const float* tables, const float* xsum, size_t rows, size_t groups,
                              size_t nblk, size_t gpb, int bits) {
  extern __shared__ float sh[];  // gpb * 16 floats: one scale block's tables
  size_t row = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  size_t tile = row / 16, r = row % 16;
  const float levels = float((1 << bits) - 1);
  float out = 0.0f;
  for (size_t b = 0; b < nblk; ++b) {
    size_t g0 = b * gpb, gend = (b + 1) * gpb < groups ? (b + 1) * gpb : groups;
    __syncthreads();
    for (size_t i = threadIdx.x; i < (gend - g0) * 16; i += blockDim.x) sh[i] = tables[g0 * 16 + i];
    __syncthreads();
    if (row < rows) {
      float acc = 0.0f;
      for (size_t g = g0; g < gend; ++g) {
        const uint8_t* p = planes + ((tile * groups + g) * bits) * 8 + (r & 7);
        for (int j = 0; j < bits; ++j) {
          unsigned byte = p[8 * j];
          unsigned idx = r < 8 ? (byte & 15u) : (byte >> 4);
          acc += float(1 << j) * sh[(g - g0) * 16 + idx];
        }
      }
      out += tscales[(tile * nblk + b) * 16 + r] * (2.0f * acc - levels * xsum[b]);
    }
  }
  if (row < rows) y[row] = out;
}

}  // namespace

void cudaLutGemv(float* y, const uint8_t* planes, const float* tscales, const float* x, size_t rows,
                 size_t cols, int bits, size_t block) {
  requireGpu("cuda lut_gemv");
  if (block == 0 || block % 4 != 0) throw InvalidArgument("lut_gemv needs a block size that is a multiple of 4");
  // An empty grid is a launch error, not an empty result.
  if (rows == 0) return;
  if (cols == 0) return cudaCheck(cudaMemset(y, 0, rows * sizeof(float)), "cudaMemset");
  size_t groups = (cols + 3) / 4, nblk = (cols + block - 1) / block, gpb = block / 4;
  float *tables = nullptr, *xsum = nullptr;
  cudaCheck(cudaMalloc(&tables, groups * 16 * sizeof(float)), "cudaMalloc");
  cudaCheck(cudaMalloc(&xsum, nblk * sizeof(float)), "cudaMalloc");
  buildTablesKernel<<<unsigned((groups + 255) / 256), 256>>>(tables, x, cols, groups);
  blockSumsKernel<<<unsigned((nblk + 255) / 256), 256>>>(xsum, x, cols, block, nblk);
  lutGemvKernel<<<unsigned((rows + 255) / 256), 256, gpb * 16 * sizeof(float)>>>(
      y, planes, tscales, tables, xsum, rows, groups, nblk, gpb, bits);
  cudaError_t launch = cudaGetLastError();
  cudaError_t done = cudaDeviceSynchronize();
  cudaFree(tables);
  cudaFree(xsum);
  cudaCheck(launch, "lut_gemv launch");
  cudaCheck(done, "lut_gemv kernel");
}

}  // namespace ringflow::kernels
