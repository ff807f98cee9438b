// Building blocks the algorithms' schedules share (private to csrc/algo):
// message slots, block splits, pieces, and the two halves of the ring.
#pragma once

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

// Splits `count` elements into `parts` nearly equal blocks.
struct Blocks {
  Blocks(size_t count, int parts);
  Blocks(std::vector<size_t> counts);
  size_t offset(int b) const { return offsets[b]; }
  size_t count(int b) const { return offsets[b + 1] - offsets[b]; }
  size_t maxCount() const;
  std::vector<size_t> offsets;  // parts + 1 entries
};

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
