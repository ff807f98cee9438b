// LUT weighted sum on the GPU: y[i] = sum_n c[n] * s[n, b(i)] * (2 code[n, i] - L),
// the same distributed arithmetic as lut.cc.  Each thread owns one byte
// column of the packed codes (8 / BITS consecutive elements); a thread block
// owns a tile of consecutive byte columns.  The tile's tables (16 entries per
// group of four workers, per scale block the tile touches) are built in
// shared memory, a chunk of groups at a time so that any worker count fits;
// each element then adds, per group and bit plane, 2^j * table[bits j of the
// group's four codes], and the offset-binary sign costs one correction per
// scale block: y = 2 * acc - L * sum_n w_n, as on the CPU.
//
// Rounding follows lut_scalar.cc step by step (w_n = c_n * s_n, tables as
// left folds over the set bits, groups and planes in order, the epilogue
// unfused), so the result matches the CPU's to float32 rounding.
#include <algorithm>
#include <cstdint>

#include "cuda_check.h"
#include "ringflow/kernels_cuda.h"
#include "ringflow/lut.h"
#include "ringflow/quantize.h"

namespace ringflow::kernels {
namespace {

// Floats of shared memory for the tables and per-block sums: 32 KiB, under
// the 48 KiB a launch may take without opting in, leaving room for occupancy.
constexpr size_t kSharedFloats = 8192;
constexpr unsigned kMaxThreads = 256, kMinThreads = 32;

// Scale blocks a tile of `elems` consecutive elements can touch, at most.
inline __host__ __device__ size_t blocksPerTile(size_t elems, size_t block) {
  return (elems - 1) / block + 2;
}

template <int BITS>
__global__ void lutWsumKernel(float* y, const uint8_t* codes, const float* scales,
                              const float* coeffs, size_t workers, size_t m, size_t stride,
                              size_t block, size_t nblk, size_t chunk, size_t tileBlocks) {
  constexpr int per = 8 / BITS;  // elements per byte
  extern __shared__ float sh[];  // wsum[tileBlocks], then tables[tileBlocks][chunk][16]
  float* wsum = sh;
  float* tab = sh + tileBlocks;
  const size_t tileElems = size_t(blockDim.x) * per;
  const size_t first = blockIdx.x * tileElems;
  if (first >= m) return;  // the whole block leaves together: no barrier is skipped
  const size_t last = (first + tileElems < m ? first + tileElems : m) - 1;
  const size_t b0 = first / block, nb = last / block - b0 + 1;
  const size_t groups = (workers + kLutGroup - 1) / kLutGroup;

  // Per scale block, sum_n w_n in worker order (the CPU's wsum).
  for (size_t bl = threadIdx.x; bl < nb; bl += blockDim.x) {
    float s = 0.0f;
    for (size_t n = 0; n < workers; ++n) s = __fadd_rn(s, __fmul_rn(coeffs[n], scales[n * nblk + b0 + bl]));
    wsum[bl] = s;
  }
  __syncthreads();  // read in the epilogue, also when there are no groups to loop over

  const size_t byte = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  const size_t e0 = byte * per;
  float acc[per];
  unsigned local[per];  // each element's scale block, relative to b0
#pragma unroll
  for (int e = 0; e < per; ++e) {
    acc[e] = 0.0f;
    size_t i = e0 + e < m ? e0 + e : last;  // elements past m read a valid table, are not stored
    local[e] = unsigned(i / block - b0);
  }

  for (size_t g0 = 0; g0 < groups; g0 += chunk) {
    const size_t gn = groups - g0 < chunk ? groups - g0 : chunk;
    __syncthreads();  // the previous chunk's tables have been read
    for (size_t t = threadIdx.x; t < nb * gn * 16; t += blockDim.x) {
      const unsigned idx = unsigned(t & 15);
      const size_t gl = (t >> 4) % gn, bl = (t >> 4) / gn;
      // Entry idx = sum of w_n over its set bits, lowest first: the same left
      // fold lut_detail::buildTables computes through entry (idx - top bit).
      float s = 0.0f;
      for (int k = 0; k < kLutGroup; ++k) {
        size_t n = kLutGroup * (g0 + gl) + k;
        if (((idx >> k) & 1u) && n < workers) s = __fadd_rn(s, __fmul_rn(coeffs[n], scales[n * nblk + b0 + bl]));
      }
      tab[(bl * chunk + gl) * 16 + idx] = s;
    }
    __syncthreads();
    if (e0 >= m) continue;  // past the end: only here for the barriers
    for (size_t gl = 0; gl < gn; ++gl) {
      // The group's four code bytes in one word, worker k in byte k; a
      // missing worker (past `workers`) contributes zero bits.
      unsigned word = 0;
#pragma unroll
      for (int k = 0; k < kLutGroup; ++k) {
        size_t n = kLutGroup * (g0 + gl) + k;
        if (n < workers) word |= unsigned(codes[n * stride + byte]) << (8 * k);
      }
#pragma unroll
      for (int e = 0; e < per; ++e) {
        const float* t = tab + (local[e] * chunk + gl) * 16;
#pragma unroll
        for (int j = 0; j < BITS; ++j) {
          const unsigned w = word >> (e * BITS + j);  // bit j of element e, in each byte
          const unsigned idx = (w & 1u) | ((w >> 7) & 2u) | ((w >> 14) & 4u) | ((w >> 21) & 8u);
          // 2^j * entry is exact, so fused or not this rounds like the CPU's add.
          acc[e] = __fadd_rn(acc[e], float(1 << j) * t[idx]);
        }
      }
    }
  }
  if (e0 >= m) return;
  const float levels = float((1 << BITS) - 1);
#pragma unroll
  for (int e = 0; e < per; ++e)
    if (e0 + e < m) y[e0 + e] = __fsub_rn(2.0f * acc[e], __fmul_rn(levels, wsum[local[e]]));
}

template <int BITS>
void launchWsum(float* y, const uint8_t* codes, const float* scales, const float* coeffs,
                size_t workers, size_t m, size_t block) {
  constexpr size_t per = 8 / BITS;
  const size_t stride = lowbitPackedBytes(m, BITS), nblk = numBlocks(m, block);
  const size_t groups = (workers + kLutGroup - 1) / kLutGroup;
  // Fewer threads per tile when small scale blocks would make even one
  // group's tables overflow shared memory (block 1, 1 bit: 257 blocks at 32 threads).
  unsigned threads = kMaxThreads;
  while (threads > kMinThreads && blocksPerTile(threads * per, block) * 17 > kSharedFloats) threads /= 2;
  const size_t tileBlocks = blocksPerTile(threads * per, block);
  size_t chunk = (kSharedFloats - tileBlocks) / (16 * tileBlocks);
  chunk = std::max<size_t>(1, std::min(chunk, std::max<size_t>(groups, 1)));
  const size_t shared = (tileBlocks + tileBlocks * chunk * 16) * sizeof(float);
  const size_t tiles = (stride + threads - 1) / threads;
  lutWsumKernel<BITS><<<unsigned(tiles), threads, shared>>>(y, codes, scales, coeffs, workers, m,
                                                             stride, block, nblk, chunk, tileBlocks);
}

}  // namespace

void cudaLutWeightedSum(float* y, const uint8_t* codes, const float* scales, const float* coeffs,
                        size_t workers, size_t m, int bits, size_t block) {
  checkLowbitBits(bits);
  if (block == 0) throw InvalidArgument("lut_weighted_sum needs a block size >= 1");
  requireGpu("cuda lut_weighted_sum");
  if (m == 0) return;
  if (lowbitPackedBytes(m, bits) / kMinThreads >= (size_t(1) << 31))
    throw InvalidArgument("lut_weighted_sum: too many elements for one launch");
  switch (bits) {
    case 1: launchWsum<1>(y, codes, scales, coeffs, workers, m, block); break;
    case 2: launchWsum<2>(y, codes, scales, coeffs, workers, m, block); break;
    case 4: launchWsum<4>(y, codes, scales, coeffs, workers, m, block); break;
    default: launchWsum<8>(y, codes, scales, coeffs, workers, m, block); break;
  }
  cudaCheck(cudaGetLastError(), "lut_weighted_sum launch");
  cudaCheck(cudaDeviceSynchronize(), "lut_weighted_sum kernel");
}

}  // namespace ringflow::kernels
