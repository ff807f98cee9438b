#include "ringflow/types.h"

namespace ringflow {

size_t elementSize(DType t) {
  switch (t) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::Float16: return 2;
    case DType::BFloat16: return 2;
    case DType::Int8: return 1;
    case DType::UInt8: return 1;
    case DType::Int32: return 4;
    case DType::Int64: return 8;
    case DType::Bool: return 1;
  }
  throw InvalidArgument("unknown dtype " + std::to_string(int(t)));
}

const char* dtypeName(DType t) {
  static const char* names[] = {"float32", "float64", "float16", "bfloat16", "int8",
                                "uint8",   "int32",   "int64",   "bool"};
  int i = int(t);
  return i < kNumDTypes ? names[i] : "unknown-dtype";
}

const char* reduceOpName(ReduceOp op) {
  static const char* names[] = {"sum", "product", "min", "max", "avg", "band", "bor", "bxor"};
  int i = int(op);
  return i < kNumReduceOps ? names[i] : "unknown-op";
}

bool isFloating(DType t) {
  return t == DType::Float32 || t == DType::Float64 || t == DType::Float16 ||
         t == DType::BFloat16;
}

void checkReduceOp(DType t, ReduceOp op) {
  bool bitwise = op == ReduceOp::BAnd || op == ReduceOp::BOr || op == ReduceOp::BXor;
  if (bitwise && isFloating(t))
    throw InvalidArgument(std::string("reduce op ") + reduceOpName(op) +
                          " needs an integer or bool dtype, got " + dtypeName(t));
  if (op == ReduceOp::Avg && !isFloating(t))
    throw InvalidArgument(std::string("reduce op avg needs a floating-point dtype, got ") +
                          dtypeName(t));
}

DType dtypeFromInt(int v) {
  if (v < 0 || v >= kNumDTypes) throw InvalidArgument("unknown dtype code " + std::to_string(v));
  return DType(v);
}

ReduceOp reduceOpFromInt(int v) {
  if (v < 0 || v >= kNumReduceOps)
    throw InvalidArgument("unknown reduce op code " + std::to_string(v));
  return ReduceOp(v);
}

}  // namespace ringflow
