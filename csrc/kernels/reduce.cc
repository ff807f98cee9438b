// Entry points of the reduce kernels: validate, pick the widest instruction
// set this CPU has (checked once at run time, so the binary stays baseline
// x86-64), and split a reduction over as many threads as the caller asks.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "half.h"
#include "reduce_isa.h"
#include "simd.h"
#include "ringflow/env.h"
#include "ringflow/kernels.h"
#include "ringflow/settings.h"

namespace ringflow::kernels {
namespace {

constexpr int kScalar = int(Simd::Scalar), kAvx2 = int(Simd::Avx2), kAvx512 = int(Simd::Avx512);
const char* const kLevelNames[] = {"scalar", "avx2", "avx512"};

int detectLevel() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kScalar;
}

int parseLevel(const std::string& name) {
  for (int i = 0; i < 3; ++i)
    if (name == kLevelNames[i]) return i;
  throw InvalidArgument("unknown SIMD level '" + name + "' (expected scalar, avx2 or avx512)");
}

// RINGFLOW_SIMD can only lower the level: asking for more than the CPU has
// would crash on the first instruction it lacks.
int initialLevel() {
  int level = detectLevel();
  int want = int(envChoice("RINGFLOW_SIMD", kAvx512,
                           {std::begin(kLevelNames), std::end(kLevelNames)}));
  return want < level ? want : level;
}

std::atomic<int>& currentLevel() {
  static std::atomic<int> level{initialLevel()};
  return level;
}

using IsaReduceN = void (*)(void*, const void* const*, size_t, size_t, DType, ReduceOp);

IsaReduceN isaFor(int level) {
  if (level == kAvx512) return avx512::reduceN;
  if (level == kAvx2) return avx2::reduceN;
  return nullptr;
}

// Runs fn over [0, n) split into `parts` ranges aligned to 64 elements.
void runSplit(IsaReduceN fn, void* dst, const void* const* srcs, size_t k, size_t n, DType dtype,
              ReduceOp op, size_t parts) {
  size_t es = elementSize(dtype);
  size_t per = ((n + parts - 1) / parts + 63) & ~size_t(63);
  auto part = [&](size_t begin) {
    size_t len = begin + per < n ? per : n - begin;
    std::vector<const void*> s(k);
    for (size_t j = 0; j < k; ++j) s[j] = static_cast<const char*>(srcs[j]) + begin * es;
    fn(static_cast<char*>(dst) + begin * es, s.data(), k, len, dtype, op);
  };
  std::vector<std::thread> workers;
  for (size_t b = per; b < n; b += per) workers.emplace_back(part, b);
  part(0);
  for (auto& t : workers) t.join();
}

}  // namespace

void reduceN(void* dst, const void* const* srcs, size_t k, size_t n, DType dtype, ReduceOp op,
             size_t threads) {
  checkReduceOp(dtype, op);
  if (k == 0) throw InvalidArgument("reduceN needs at least one source");
  if (n == 0) return;
  if (k == 1) {
    if (dst != srcs[0]) std::memcpy(dst, srcs[0], n * elementSize(dtype));
    return;
  }
  IsaReduceN fn = isaFor(currentLevel().load(std::memory_order_relaxed));
  if (!fn) return reduceNScalar(dst, srcs, k, n, dtype, op);
  // Each thread gets at least 64 elements (the split's alignment).
  size_t parts = std::min(threads, (n + 63) / 64);
  if (parts <= 1) return fn(dst, srcs, k, n, dtype, op);
  runSplit(fn, dst, srcs, k, n, dtype, op, parts);
}

void reduce(void* dst, const void* a, const void* b, size_t n, DType dtype, ReduceOp op) {
  const void* srcs[2] = {a, b};
  reduceN(dst, srcs, 2, n, dtype, op);
}

void divide(void* data, size_t n, DType dtype, double divisor) {
  // float32 and float64 use the widest divide instructions this CPU has (the
  // same plain loop built per ISA; baseline x86-64 builds it with SSE2).
  const int level = currentLevel().load(std::memory_order_relaxed);
  switch (dtype) {
    case DType::Float32: {
      auto* p = static_cast<float*>(data);
      const float d = float(divisor);  // float division, as torch does it
      if (level == kAvx512) return avx512::divideF32(p, n, d);
      if (level == kAvx2) return avx2::divideF32(p, n, d);
      for (size_t i = 0; i < n; ++i) p[i] = p[i] / d;
      return;
    }
    case DType::Float64: {
      auto* p = static_cast<double*>(data);
      if (level == kAvx512) return avx512::divideF64(p, n, divisor);
      if (level == kAvx2) return avx2::divideF64(p, n, divisor);
      for (size_t i = 0; i < n; ++i) p[i] /= divisor;
      return;
    }
    case DType::Float16: {
      auto* p = static_cast<uint16_t*>(data);
      for (size_t i = 0; i < n; ++i) p[i] = floatToHalf(halfToFloat(p[i]) / float(divisor));
      return;
    }
    case DType::BFloat16: {
      auto* p = static_cast<uint16_t*>(data);
      for (size_t i = 0; i < n; ++i) p[i] = floatToBf16(bf16ToFloat(p[i]) / float(divisor));
      return;
    }
    default:
      throw InvalidArgument(std::string("divide needs a floating-point dtype, got ") +
                            dtypeName(dtype));
  }
}

namespace {
const SettingsRegistration kSettings(
    {{"RINGFLOW_SIMD", "caps the CPU kernels' instruction set (avx512, avx2, scalar)"}},
    [] { currentLevel(); });
}  // namespace

Simd currentSimd() { return Simd(currentLevel().load(std::memory_order_relaxed)); }

const char* simdLevel() { return kLevelNames[currentLevel().load(std::memory_order_relaxed)]; }

const char* setSimdLevel(const char* name) {
  int want = parseLevel(name);
  int have = detectLevel();
  currentLevel().store(want < have ? want : have);
  return simdLevel();
}

const char* detectedSimdLevel() { return kLevelNames[detectLevel()]; }

}  // namespace ringflow::kernels
