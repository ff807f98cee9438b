// Low-bit compression of the allreduce level that crosses hosts
// (algo/compressed.cc; mechanism 4, LUT distributed arithmetic, in the
// communication path).  Applies only to floating-point sum and average, and
// only on the higher-order ring of a group layout (RINGFLOW_GROUPS, or one
// group per host): the hierarchical algorithm's cross-host ring, or the flat
// ring when every rank is a group (host) of its own.  Same-host levels stay
// exact.
//
// Modes: none (0 bits), int8 (8), 4bit, 2bit, 1bit.  RINGFLOW_COMPRESS sets
// the default; Comm::setCompressBits overrides it per communicator (a torch
// process group's options, ringflow.backend.Options(compress=...)).
#pragma once

#include <string>

#include "ringflow/comm.h"
#include "ringflow/types.h"

namespace ringflow::algo {

// Bits per element of a mode name ("none" -> 0, "int8" -> 8, "4bit" -> 4,
// "2bit" -> 2, "1bit" -> 1); throws InvalidArgument naming the valid ones.
int compressBitsOf(const std::string& mode);

// The bits an allreduce of `dtype` with `op` on `c` compresses its
// cross-host level to; 0 when it runs exact (not a floating-point sum or
// average, no layout of several groups, or compression off).  The same on
// every rank: it depends only on the call and on settings all ranks share.
int compressBitsFor(Comm& c, DType dtype, ReduceOp op);

// Allreduce (sum) of `shard` over `ring` (a cross-host ring) in low-bit codes
// with error feedback.  `owner` is the call's communicator, which keeps the
// residuals across calls, keyed by (key, key_count): the caller's buffer
// address and element count, so a DDP bucket finds its residual again.
void compressedAllreduce(Comm& ring, Buffer shard, Comm& owner, const void* key, size_t keyCount,
                         int bits);

}  // namespace ringflow::algo
