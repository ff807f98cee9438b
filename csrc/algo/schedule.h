// Building blocks the algorithms' schedules share (private to csrc/algo):
// message slots, block splits, pieces, and the two halves of the ring.
#pragma once

#include <functional>
#include <vector>

#include "ringflow/algorithms.h"
#include "ringflow/comm.h"
#include "ringflow/types.h"

namespace ringflow::algo {

// Large messages travel as pieces so that reducing (or forwarding) one piece
// overlaps receiving the next.  RINGFLOW_PIECE_BYTES overrides.
size_t pieceBytes();
// A tuned schedule's piece size on `c` where one is set, else pieceBytes().
size_t pieceBytes(const Comm& c);

// Message slot within a call: which phase, which step, which piece.
inline uint64_t slotOf(uint64_t phase, uint64_t step, uint64_t piece) {
  return (phase << 56) | (step << 32) | piece;
}

// Splits `count` elements into `parts` nearly equal blocks, or blocks of
// the given counts laid out one after another, or blocks at given starts
// (a tuned ring's position p holding rank order[p]'s block).
struct Blocks {
  Blocks(size_t count, int parts);
  Blocks(const std::vector<size_t>& counts);
  Blocks(std::vector<size_t> starts, std::vector<size_t> counts)
      : starts(std::move(starts)), counts(std::move(counts)) {}
  size_t offset(int b) const { return starts[b]; }
  size_t count(int b) const { return counts[b]; }
  size_t maxCount() const;
  std::vector<size_t> starts, counts;  // one entry per block
};

// Where a ring collective runs: the tuned schedule's ring (its rank p is the
// rank at ring position p) when one is set on `parent`, else `parent` itself
// (algo/tuned.cc).  Sub-calls on the tuned ring run inline in the parent's call.
struct RingView {
  Comm& parent;
  Comm* ring;  // null: parent's own rank order
  Comm& comm() const { return ring ? *ring : parent; }
  // The ring position of parent rank `rank`.
  int position(int rank) const;
  // Blocks of `count` elements each, block p being the one of the rank at
  // ring position p in a buffer laid out in parent rank order.
  Blocks equalBlocks(size_t count) const;
  void run(OpKind kind, const std::function<void(Comm&)>& body) const;
};
RingView ringView(Comm& c);

// The two halves of the ring, in place on `work` split into c.size()
// blocks: afterwards rank r's block r holds the reduction / every block is
// everywhere (block r being this rank's contribution).
void reduceScatterInPlace(Comm& c, const Buffer& work, const Blocks& blocks, ReduceOp op);
void allgatherInPlace(Comm& c, const Buffer& work, const Blocks& blocks);

// Piece-by-piece send/receive of one contiguous region.
void sendPieces(Comm& c, int peer, uint64_t phase, uint64_t step, const char* data, size_t bytes,
                std::vector<RequestPtr>& out);
void recvPieces(Comm& c, int peer, uint64_t phase, uint64_t step, char* data, size_t bytes,
                std::vector<RequestPtr>& out);

}  // namespace ringflow::algo
