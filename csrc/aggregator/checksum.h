// The unkeyed packet checksum (packet.h, "Integrity"), and the aggregator's
// loops that compute it while they copy or add a payload, so a packet's
// bytes are read once instead of once to check and once to use.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ringflow/packet.h"

namespace ringflow::agg {

// Fletcher-style: four lanes (64-bit word i goes to lane i % 4), each keeping
// a running sum a and a sum of running sums b, so both the value and the
// position of every word count.  Four independent lanes vectorise.
struct Checksum {
  uint64_t a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
  uint64_t words = 0, bytes = 0;

  // The tail of a piece that is not whole words is zero-padded to a word,
  // so only the last piece may have one.
  void update(const void* data, size_t n);
  uint64_t finish() const;
  // True when whole 32-byte blocks may follow: lane 0 comes next.
  bool aligned() const { return (words & 3) == 0 && bytes % 8 == 0; }
};

// Runs work(first, count) over the n int32 at `words` a piece at a time and
// folds each piece into `c` right after it, while the piece is still in L1:
// work may write the piece (a payload being built, then summed) or read it
// (a payload being used, whose sum is checked afterwards).  The same sum as
// one update over all n.
constexpr size_t kChecksumPiece = 1024;  // int32 values: 4 KiB
template <class Work>
void foldPieces(const int32_t* words, size_t n, Checksum& c, Work work) {
  for (size_t i = 0; i < n; i += kChecksumPiece) {
    size_t m = n - i < kChecksumPiece ? n - i : kChecksumPiece;
    work(i, m);
    c.update(words + i, m * sizeof(int32_t));
  }
}

// The checksum's state after header h with its mac taken as 0: where every
// packet's checksum starts, the payload's bytes to follow.
Checksum headerChecksum(const PacketHeader& h);

// dst[i] = src[i] for n int32, folding src's bytes into `in`.
void copyChecksummed(int32_t* dst, const void* src, size_t n, Checksum& in);
// dst[i] += src[i] (wrapping) for n int32, folding src's bytes into `in` and,
// when `out` is given, the new dst's into `out`.
void addChecksummed(int32_t* dst, const void* src, size_t n, Checksum& in, Checksum* out);
// dst[i] -= src[i] (wrapping): undoes an add whose packet failed its check.
void subtract(int32_t* dst, const void* src, size_t n);

}  // namespace ringflow::agg
