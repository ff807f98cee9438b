// The vocabulary every layer shares: element types, reduction operators and
// an untyped view of a buffer.  Deliberately torch-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace ringflow {

// Values are part of the wire format (message descriptors): append only.
enum class DType : uint8_t {
  Float32 = 0,
  Float64 = 1,
  Float16 = 2,
  BFloat16 = 3,
  Int8 = 4,
  UInt8 = 5,
  Int32 = 6,
  Int64 = 7,
  Bool = 8,
};
constexpr int kNumDTypes = 9;

// The operators torch.distributed.ReduceOp offers (minus PREMUL_SUM).
enum class ReduceOp : uint8_t {
  Sum = 0,
  Product = 1,
  Min = 2,
  Max = 3,
  Avg = 4,
  BAnd = 5,
  BOr = 6,
  BXor = 7,
};
constexpr int kNumReduceOps = 8;

size_t elementSize(DType t);
const char* dtypeName(DType t);
const char* reduceOpName(ReduceOp op);
bool isFloating(DType t);

// Checks that `op` is defined for `t` (bitwise ops need integers or bool,
// avg needs floating point), throwing an InvalidArgument that names both.
void checkReduceOp(DType t, ReduceOp op);

DType dtypeFromInt(int v);
ReduceOp reduceOpFromInt(int v);

// A view of host memory owned by someone else (a tensor, a numpy array).
// Only the kernels know about device memory (kernels_cuda.h); the Python
// backend stages any other tensor through host memory first.
struct Buffer {
  void* ptr = nullptr;
  size_t count = 0;  // elements, not bytes
  DType dtype = DType::Float32;

  size_t bytes() const { return count * elementSize(dtype); }
  char* at(size_t element) const {
    return static_cast<char*>(ptr) + element * elementSize(dtype);
  }
};

// Errors carry a kind so the bindings can map each to its own Python class.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class InvalidArgument : public Error {
 public:
  using Error::Error;
};
class TimeoutError : public Error {
 public:
  using Error::Error;
};
// A peer died, disconnected, or reported that it failed.
class PeerError : public Error {
 public:
  using Error::Error;
};
// Ranks issued calls that do not match (different op, size, dtype, root...).
class MismatchError : public Error {
 public:
  using Error::Error;
};

}  // namespace ringflow
