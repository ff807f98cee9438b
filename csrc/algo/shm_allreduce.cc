// Allreduce when every rank of the communicator is on this host, through the
// shared-memory arena instead of a ring of messages.
//
// Every step starts the same way, whatever the size: a rank waits until its
// peers have finished with what it published last time, writes its call
// descriptor (and buffer address) into its header and advances `arrive`;
// then it compares every peer's descriptor with its own before touching any
// data, so mismatched calls raise MismatchError on every rank.
//
// Small messages (one step): each rank copies its input into its slot and
// reduces all N slots straight from shared memory (kernels::reduceN), every
// block in the same fixed order on every rank, so all get bit-identical
// results (the ring's order, so they also match the ring and gloo).
//
// Large messages, single-copy (when process_vm_readv/writev work between
// every pair): rank r owns block r.  Piece by piece (small enough to stay in
// cache) it reads block r of each peer's buffer, reduces it into its own
// buffer (own data first so the output may alias it; float16/bfloat16 in the
// ring's order, rounding per step, on a copy) and writes the reduced piece,
// still in cache, straight back into every peer's buffer, then advances
// `done`.  Only rank r ever touches block r of a peer's buffer, and it
// overwrites a piece only after reading it, so no ordering is needed beyond
// `arrive` and `done`.  Memory sees each input read once and each output
// written once, 2·S per rank, the least any allreduce can move (a copy-in
// design moves ~5.5·S).  A peer whose buffer is a SharedBuffer
// (ringflow/shared_buffer.h) is mapped here instead: its pieces are reduced
// in place and stored into directly, without the kernel's pinning and bounce
// copy.  Without cross-memory access, large messages go through the slots as
// a sequence of small steps.
//
// The protocol of a step (announcing, waiting for peers, reaching their
// memory, failure handling) is the transport's: ringflow/shm_arena.h.
#include <algorithm>
#include <cstring>
#include <vector>

#include "ringflow/algorithms.h"
#include "ringflow/env.h"
#include "ringflow/kernels.h"
#include "ringflow/settings.h"
#include "ringflow/shm_arena.h"
#include "schedule.h"

namespace ringflow::algo {
namespace {

// In these settings 0 means the default.
size_t envBytes(const char* name, size_t fallback) {
  size_t n = envSize(name, fallback);
  return n > 0 ? n : fallback;
}
// At or below this size one copy-in step beats the three-phase single-copy
// path.  RINGFLOW_SHM_SMALL_BYTES overrides.
size_t smallBytes() {
  static const size_t b = envBytes("RINGFLOW_SHM_SMALL_BYTES", 256 << 10);
  return b;
}
// Pieces of a block read from a peer at once: small enough to stay in L2
// between the read and the reduction.  RINGFLOW_SHM_PIECE_BYTES overrides.
size_t readPieceBytes() {
  static const size_t b = envBytes("RINGFLOW_SHM_PIECE_BYTES", 256 << 10);
  return b;
}

// The same for peers whose buffers are mapped here (SharedBuffers): with no
// system call per piece, smaller pieces cost nothing and keep the owner's
// piece and every peer's in L2 until the result is stored back over them.
// RINGFLOW_SHM_MAPPED_PIECE_BYTES overrides.
size_t mappedPieceBytes() {
  static const size_t b = envBytes("RINGFLOW_SHM_MAPPED_PIECE_BYTES", 64 << 10);
  return b;
}

const SettingsRegistration kSettings(
    {{"RINGFLOW_SHM_SMALL_BYTES",
      "shm allreduce: at or below this, one copy-in step; above, single-copy reduce-scatter + "
      "allgather (default 262144; 0 = default)"},
     {"RINGFLOW_SHM_PIECE_BYTES",
      "shm allreduce: bytes read from a peer per piece (default 262144; 0 = default)"},
     {"RINGFLOW_SHM_MAPPED_PIECE_BYTES",
      "shm allreduce over shared tensors (shared_empty) on every rank: bytes reduced per piece "
      "(default 65536; 0 = default)"}},
    [] {
      smallBytes();
      readPieceBytes();
      mappedPieceBytes();
    });

// One step of the arena protocol for the running call of `c`.
ShmArenaStep arenaStep(Comm& c, ShmTransport& shm) {
  return ShmArenaStep(shm, c.id(), c.members(), c.rank(), c.op(), c.timeout(),
                      [&c](int q, double ms) { c.creditWait(q, ms); });
}

bool halfPrecision(DType t) { return t == DType::Float16 || t == DType::BFloat16; }

// Reduces block b's sources (indexed by rank) in the ring's order, b+1, b+2,
// ..., b: the order ringAllreduce (and gloo) use, so the arena gives the same
// bits as they do even where rounding depends on order.  float16/bfloat16
// round after every step, as each hop of a ring does; the other types fold
// in one reduceN pass, which rounds identically.  dst must not alias a source.
void foldRingOrder(void* dst, const std::vector<const void*>& byRank, int b, size_t cnt,
                   DType t, ReduceOp op) {
  const int n = int(byRank.size());
  std::vector<const void*> order(n);
  for (int k = 0; k < n; ++k) order[k] = byRank[(b + 1 + k) % n];
  if (!halfPrecision(t))
    return kernels::reduceN(dst, order.data(), order.size(), cnt, t, op);
  kernels::reduce(dst, order[1], order[0], cnt, t, op);
  for (int k = 2; k < n; ++k) kernels::reduce(dst, order[k], dst, cnt, t, op);
}

// One copy-in step: `count` elements at `data`, all ranks reduce all slots.
void slotStep(ShmArenaStep a, char* data, size_t count, DType dtype, ReduceOp op) {
  const int n = a.size();
  a.announce(data);
  if (count) std::memcpy(a.slot(a.me()), data, count * elementSize(dtype));
  a.arrive();
  a.checkPeers();
  // Every rank reduces every block, in the same order: identical results.
  Blocks blocks(count, n);
  const size_t es = elementSize(dtype);
  std::vector<const void*> srcs(n);
  for (int b = 0; b < n; ++b) {
    for (int q = 0; q < n; ++q) srcs[q] = a.slot(q) + blocks.offset(b) * es;
    foldRingOrder(data + blocks.offset(b) * es, srcs, b, blocks.count(b), dtype, op);
  }
  a.finish();
}

void singleCopy(Comm& c, ShmArenaStep a, Buffer data, ReduceOp op) {
  const int n = a.size(), me = a.me();
  const size_t es = elementSize(data.dtype);
  // Settings read before the protocol starts: a bad one fails every rank alike.
  const size_t readPiece = readPieceBytes(), mappedPiece = mappedPieceBytes();
  a.announceBuffer(data.ptr, data.bytes());
  a.arrive();
  a.checkPeers();
  Blocks blocks(data.count, n);
  // Peers whose buffers map here are read and written in place; the others
  // through process_vm_readv/writev and a scratch piece.
  std::vector<char*> mapped(n, nullptr);
  bool allMapped = true;
  for (int q = 0; q < n; ++q)
    if (q != me) allMapped &= (mapped[q] = a.mappedPeer(q, data.bytes())) != nullptr;
  const size_t piece = std::max<size_t>(1, (allMapped ? mappedPiece : readPiece) / es);
  static thread_local std::vector<char> scratch;
  if (scratch.size() < piece * es * size_t(n)) scratch.resize(piece * es * size_t(n));
  std::vector<const void*> srcs(n), order(n);
  for (size_t done = 0; done < blocks.count(me); done += piece) {
    const size_t first = blocks.offset(me) + done;
    const size_t cnt = std::min(piece, blocks.count(me) - done);
    const size_t bytes = cnt * es;
    char* out = data.at(first);
    for (int q = 0; q < n; ++q) {
      char* buf = scratch.data() + size_t(q) * piece * es;
      if (mapped[q]) {
        buf = mapped[q] + first * es;
      } else if (q != me) {
        a.readPeer(q, buf, first * es, bytes);
      } else if (halfPrecision(data.dtype)) {
        std::memcpy(buf, out, bytes);  // the fold must not alias its output
      } else {
        buf = out;
      }
      srcs[q] = buf;
    }
    if (halfPrecision(data.dtype)) {
      foldRingOrder(out, srcs, me, cnt, data.dtype, op);
    } else {
      // Own data first, so the output may alias it (no copy); the order is
      // still fixed, and only this rank computes this block.
      for (int k = 0; k < n; ++k) order[k] = srcs[(me + k) % n];
      kernels::reduceN(out, order.data(), order.size(), cnt, data.dtype, op);
    }
    if (op == ReduceOp::Avg) kernels::divide(out, cnt, data.dtype, double(n));
    // Staggered, so owners do not all write into the same peer at once.
    for (int k = 1; k < n; ++k) {
      int q = (me + k) % n;
      if (mapped[q])
        std::memcpy(mapped[q] + first * es, out, bytes);
      else
        a.writePeer(q, out, first * es, bytes);
    }
  }
  c.markAggregated();
  a.finish();
  // Peers read and write this buffer until they are done: only then may the
  // caller have it.
  a.waitPeersFinished();
}

}  // namespace

void shmAllreduce(Comm& c, ShmTransport& shm, Buffer data, ReduceOp op) {
  if (c.size() == 1) return;
  const size_t es = elementSize(data.dtype);
  if (data.bytes() > smallBytes() && shm.crossMemoryEverywhere())
    return singleCopy(c, arenaStep(c, shm), data, op);
  // One slot-sized step at a time; a message that fits takes exactly one.
  const size_t perStep = std::max<size_t>(1, std::min(shm.slotBytes(), smallBytes()) / es);
  size_t done = 0;
  do {
    size_t cnt = std::min(perStep, data.count - done);
    slotStep(arenaStep(c, shm), data.at(done), cnt, data.dtype, op);
    done += cnt;
  } while (done < data.count);
  c.markAggregated();
  if (op == ReduceOp::Avg) kernels::divide(data.ptr, data.count, data.dtype, double(c.size()));
}

}  // namespace ringflow::algo
