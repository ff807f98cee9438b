// Calls with a root.  Broadcast and reduce run as pipelined chains in ring
// order (a tuned schedule's, else rank order) starting at the root, so
// every link carries the message once; gather and scatter talk to the root
// directly.
#include <cstring>

#include "schedule.h"
#include "ringflow/kernels.h"

namespace ringflow::algo {
namespace {

constexpr uint64_t kPhaseChain = 3;
constexpr uint64_t kPhaseDirect = 4;

// Position in the chain: the root is 0.
int position(const Comm& c, int root) { return (c.rank() - root + c.size()) % c.size(); }
int rankAt(const Comm& c, int root, int pos) { return (root + pos) % c.size(); }

}  // namespace

void sendPieces(Comm& c, int peer, uint64_t phase, uint64_t step, const char* data, size_t bytes,
                std::vector<RequestPtr>& out) {
  size_t pb = pieceBytes(), piece = 0;
  do {
    size_t n = std::min(pb, bytes - piece * pb);
    out.push_back(c.isend(peer, slotOf(phase, step, piece), data + piece * pb, n));
    ++piece;
  } while (piece * pb < bytes);
}

void recvPieces(Comm& c, int peer, uint64_t phase, uint64_t step, char* data, size_t bytes,
                std::vector<RequestPtr>& out) {
  size_t pb = pieceBytes(), piece = 0;
  do {
    size_t n = std::min(pb, bytes - piece * pb);
    out.push_back(c.irecv(peer, slotOf(phase, step, piece), data + piece * pb, n));
    ++piece;
  } while (piece * pb < bytes);
}

namespace {

void chainBroadcastOn(Comm& c, Buffer data, int root) {
  const int n = c.size(), pos = position(c, root);
  if (n == 1) return;
  std::vector<RequestPtr> recvs, sends;
  char* p = static_cast<char*>(data.ptr);
  if (pos == 0) {
    sendPieces(c, rankAt(c, root, 1), kPhaseChain, 0, p, data.bytes(), sends);
  } else {
    recvPieces(c, rankAt(c, root, pos - 1), kPhaseChain, 0, p, data.bytes(), recvs);
    size_t pb = pieceBytes();
    for (size_t i = 0; i < recvs.size(); ++i) {
      c.wait(recvs[i]);
      if (pos < n - 1)
        sends.push_back(c.isend(rankAt(c, root, pos + 1), slotOf(kPhaseChain, 0, i), p + i * pb,
                                std::min(pb, data.bytes() - i * pb)));
    }
  }
  c.waitAll(sends);
}

void chainReduceOn(Comm& c, Buffer data, int root, ReduceOp op) {
  const int n = c.size(), pos = position(c, root);
  const size_t es = elementSize(data.dtype);
  const size_t pe = std::max<size_t>(1, pieceBytes() / es);
  std::vector<RequestPtr> recvs, sends;
  if (n > 1 && pos == n - 1) {
    sendPieces(c, rankAt(c, root, pos - 1), kPhaseChain, 0, static_cast<char*>(data.ptr),
               data.bytes(), sends);
  } else if (n > 1) {
    // Partial sums travel towards the root; only the root's buffer changes.
    static thread_local std::vector<char> acc;
    if (acc.size() < data.bytes()) acc.resize(data.bytes());
    char* dst = pos == 0 ? static_cast<char*>(data.ptr) : acc.data();
    recvPieces(c, rankAt(c, root, pos + 1), kPhaseChain, 0, acc.data(), data.bytes(), recvs);
    for (size_t i = 0; i < recvs.size(); ++i) {
      size_t first = i * pe, cnt = std::min(pe, data.count - first);
      c.wait(recvs[i]);
      kernels::reduce(dst + first * es, data.at(first), acc.data() + first * es, cnt, data.dtype,
                      op);
      if (pos > 0)
        sends.push_back(c.isend(rankAt(c, root, pos - 1), slotOf(kPhaseChain, 0, i),
                                dst + first * es, cnt * es));
    }
  }
  c.waitAll(sends);
  c.markAggregated();
  if (pos == 0 && op == ReduceOp::Avg) kernels::divide(data.ptr, data.count, data.dtype, n);
}

}  // namespace

void chainBroadcast(Comm& c, Buffer data, int root) {
  const RingView ring = ringView(c);
  ring.run(OpKind::Broadcast,
           [&](Comm& rc) { chainBroadcastOn(rc, data, ring.position(root)); });
}

void chainReduce(Comm& c, Buffer data, int root, ReduceOp op) {
  if (c.schedule() && c.schedule()->deterministic) return deterministicReduce(c, data, root, op);
  const RingView ring = ringView(c);
  ring.run(OpKind::Reduce, [&](Comm& rc) { chainReduceOn(rc, data, ring.position(root), op); });
}

void directGather(Comm& c, Buffer in, Buffer out, int root) {
  std::vector<RequestPtr> reqs;
  if (c.rank() != root) {
    sendPieces(c, root, kPhaseDirect, 0, static_cast<const char*>(in.ptr), in.bytes(), reqs);
  } else {
    for (int r = 0; r < c.size(); ++r) {
      char* slot = out.at(size_t(r) * in.count);
      if (r == root) {
        if (in.count) std::memmove(slot, in.ptr, in.bytes());
      } else {
        recvPieces(c, r, kPhaseDirect, 0, slot, in.bytes(), reqs);
      }
    }
  }
  c.waitAll(reqs);
}

void directScatter(Comm& c, Buffer in, Buffer out, int root) {
  std::vector<RequestPtr> reqs;
  if (c.rank() != root) {
    recvPieces(c, root, kPhaseDirect, 0, static_cast<char*>(out.ptr), out.bytes(), reqs);
  } else {
    for (int r = 0; r < c.size(); ++r) {
      const char* slot = in.at(size_t(r) * out.count);
      if (r == root) {
        if (out.count) std::memmove(out.ptr, slot, out.bytes());
      } else {
        sendPieces(c, r, kPhaseDirect, 0, slot, out.bytes(), reqs);
      }
    }
  }
  c.waitAll(reqs);
}

}  // namespace ringflow::algo
