// N-way reduction on the GPU: one grid-stride pass that reads every source
// once with 16-byte loads and writes the output once.  Half types accumulate
// in float32 and round once, like the CPU reference; more than kMaxSources
// inputs are folded in several passes (dst as the running first source).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda_check.h"
#include "ringflow/kernels_cuda.h"

namespace ringflow::kernels {
namespace {

constexpr int kMaxSources = 8;
struct Sources {
  const void* p[kMaxSources];
  int k;
};

template <typename T> struct Acc { using type = T; static __device__ T in(T v) { return v; } static __device__ T out(T v) { return v; } };
template <> struct Acc<__half> {
  using type = float;
  static __device__ float in(__half v) { return __half2float(v); }
  static __device__ __half out(float v) { return __float2half_rn(v); }
};
template <> struct Acc<__nv_bfloat16> {
  using type = float;
  static __device__ float in(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __nv_bfloat16 out(float v) { return __float2bfloat16_rn(v); }
};

template <typename T>
__device__ bool isNan(T v) {
  if constexpr (std::is_floating_point_v<T>) return v != v;
  return false;
}

// Same semantics as reduce_scalar.cc: NaN propagates through min/max, signed
// integer arithmetic wraps (done in unsigned), bool is OR / AND / XOR.
template <typename T>
__device__ T apply(ReduceOp op, T a, T b, bool isBool) {
  if (isBool) {
    if (op == ReduceOp::Sum || op == ReduceOp::Max || op == ReduceOp::BOr) return T((a != 0) | (b != 0));
    if (op == ReduceOp::BXor) return T((a != 0) ^ (b != 0));
    return T((a != 0) & (b != 0));
  }
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg:
      if constexpr (std::is_integral_v<T>) return T(std::make_unsigned_t<T>(a) + std::make_unsigned_t<T>(b));
      else return a + b;
    case ReduceOp::Product:
      if constexpr (std::is_integral_v<T>) return T(std::make_unsigned_t<T>(a) * std::make_unsigned_t<T>(b));
      else return a * b;
    case ReduceOp::Min: return (isNan(a) || isNan(b)) ? a + b : (b < a ? b : a);
    case ReduceOp::Max: return (isNan(a) || isNan(b)) ? a + b : (b > a ? b : a);
    case ReduceOp::BAnd: if constexpr (std::is_integral_v<T>) return T(a & b); break;
    case ReduceOp::BOr: if constexpr (std::is_integral_v<T>) return T(a | b); break;
    case ReduceOp::BXor: if constexpr (std::is_integral_v<T>) return T(a ^ b); break;
  }
  return a;
}

template <typename T>
__device__ void reduceOne(T* dst, const Sources& s, size_t i, ReduceOp op, bool isBool) {
  using A = Acc<T>;
  auto acc = A::in(static_cast<const T*>(s.p[0])[i]);
  for (int j = 1; j < s.k; ++j) acc = apply(op, acc, A::in(static_cast<const T*>(s.p[j])[i]), isBool);
  dst[i] = A::out(acc);
}

// vec: every pointer is 16-byte aligned, so the body moves uint4s; the last
// n % per elements (and everything when !vec) go element by element.
template <typename T>
__global__ void reduceKernel(T* dst, Sources s, size_t n, ReduceOp op, bool isBool, bool vec) {
  constexpr int per = 16 / sizeof(T);
  size_t tid = blockIdx.x * size_t(blockDim.x) + threadIdx.x, stride = size_t(gridDim.x) * blockDim.x;
  size_t nvec = vec ? n / per : 0;
  using A = Acc<T>;
  for (size_t v = tid; v < nvec; v += stride) {
    uint4 raw = static_cast<const uint4*>(s.p[0])[v];
    const T* x = reinterpret_cast<const T*>(&raw);
    typename A::type acc[per];
#pragma unroll
    for (int e = 0; e < per; ++e) acc[e] = A::in(x[e]);
    for (int j = 1; j < s.k; ++j) {
      uint4 r = static_cast<const uint4*>(s.p[j])[v];
      const T* y = reinterpret_cast<const T*>(&r);
#pragma unroll
      for (int e = 0; e < per; ++e) acc[e] = apply(op, acc[e], A::in(y[e]), isBool);
    }
    uint4 out;
    T* o = reinterpret_cast<T*>(&out);
#pragma unroll
    for (int e = 0; e < per; ++e) o[e] = A::out(acc[e]);
    reinterpret_cast<uint4*>(dst)[v] = out;
  }
  for (size_t i = nvec * per + tid; i < n; i += stride) reduceOne(dst, s, i, op, isBool);
}

template <typename T>
void launch(void* dst, const Sources& s, size_t n, ReduceOp op, bool isBool) {
  bool vec = (reinterpret_cast<uintptr_t>(dst) & 15) == 0;
  for (int j = 0; j < s.k; ++j) vec = vec && (reinterpret_cast<uintptr_t>(s.p[j]) & 15) == 0;
  int threads = 256;
  size_t work = vec ? (n + 16 / sizeof(T) - 1) / (16 / sizeof(T)) : n;
  int blocks = int(work / threads + 1 < 65535 * 4 ? work / threads + 1 : 65535 * 4);
  reduceKernel<T><<<blocks, threads>>>(static_cast<T*>(dst), s, n, op, isBool, vec);
  cudaCheck(cudaGetLastError(), "reduce kernel launch");
}

void launchTyped(void* dst, const Sources& s, size_t n, DType dtype, ReduceOp op) {
  switch (dtype) {
    case DType::Float32: return launch<float>(dst, s, n, op, false);
    case DType::Float64: return launch<double>(dst, s, n, op, false);
    case DType::Float16: return launch<__half>(dst, s, n, op, false);
    case DType::BFloat16: return launch<__nv_bfloat16>(dst, s, n, op, false);
    case DType::Int8: return launch<int8_t>(dst, s, n, op, false);
    case DType::UInt8: return launch<uint8_t>(dst, s, n, op, false);
    case DType::Int32: return launch<int32_t>(dst, s, n, op, false);
    case DType::Int64: return launch<int64_t>(dst, s, n, op, false);
    case DType::Bool: return launch<uint8_t>(dst, s, n, op, true);
  }
}

}  // namespace

int cudaDevices() {
  requireGpu("ringflow CUDA kernels");
  int n = 0;
  cudaCheck(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
  return n;
}

void cudaReduceN(void* dst, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op) {
  checkReduceOp(dtype, op);
  if (k == 0) throw InvalidArgument("reduceN needs at least one source");
  requireGpu("cuda reduce");
  if (n == 0) return;
  if (k == 1) {
    if (dst != srcs[0])
      cudaCheck(cudaMemcpy(dst, srcs[0], n * elementSize(dtype), cudaMemcpyDeviceToDevice), "cudaMemcpy");
    return;
  }
  // Half types must accumulate all inputs before rounding; with more than
  // kMaxSources they round once per pass (documented difference).
  size_t done = 0;
  while (done < k) {
    Sources s{};
    s.k = 0;
    if (done > 0) s.p[s.k++] = dst;
    while (s.k < kMaxSources && done < k) s.p[s.k++] = srcs[done++];
    launchTyped(dst, s, n, dtype, op);
  }
  cudaCheck(cudaDeviceSynchronize(), "reduce kernel");
}

}  // namespace ringflow::kernels
