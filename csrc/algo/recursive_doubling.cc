// Recursive doubling allreduce, the latency-optimal one for small messages:
// log2(n) rounds, in round k position v and v xor 2^k swap their whole
// partial results and both reduce, so a call costs log2(n) message
// latencies where the ring pays 2(n-1) -- at log2(n) times the message on
// every link where the ring sends 2(n-1)/n of it.  When n is not a power of
// two, p being the largest power of two below it and rem = n - p, the first
// 2*rem ranks fold pairwise first (the even one hands its data to the odd
// one and sits the rounds out) and get the result back at the end.
// Both partners of a round reduce (lower half's value, upper half's value)
// in that order, so every rank computes the same bits even where op(a, b)
// and op(b, a) differ in them (NaN payloads under min/max).
#include <vector>

#include "schedule.h"
#include "ringflow/kernels.h"

namespace ringflow::algo {
namespace {

constexpr uint64_t kPhaseDoubling = 9;
constexpr uint64_t kStepFold = 0, kStepUnfold = 1, kStepFirstRound = 2;

// Swaps `data` with `peer` (step `step`) and reduces: lower's value first.
void exchangeAndReduce(Comm& c, int peer, bool lower, uint64_t step, Buffer data, char* scratch,
                       ReduceOp op) {
  std::vector<RequestPtr> reqs;
  recvPieces(c, peer, kPhaseDoubling, step, scratch, data.bytes(), reqs);
  sendPieces(c, peer, kPhaseDoubling, step, static_cast<const char*>(data.ptr), data.bytes(), reqs);
  c.waitAll(reqs);
  if (lower)
    kernels::reduce(data.ptr, data.ptr, scratch, data.count, data.dtype, op);
  else
    kernels::reduce(data.ptr, scratch, data.ptr, data.count, data.dtype, op);
}

}  // namespace

void recursiveDoublingAllreduce(Comm& c, Buffer data, ReduceOp op) {
  const int n = c.size(), r = c.rank();
  if (n > 1 && data.count > 0) {
    int p = 1;
    while (p * 2 <= n) p *= 2;
    const int rem = n - p;
    // Kept across calls: fresh pages cost far more to touch than to reuse.
    static thread_local std::vector<char> scratch;
    if (scratch.size() < data.bytes()) scratch.resize(data.bytes());
    char* buf = static_cast<char*>(data.ptr);
    std::vector<RequestPtr> reqs;
    int v = r - rem;  // position among the p ranks of the rounds; -1: sits out
    if (r < 2 * rem && r % 2 == 0) {
      sendPieces(c, r + 1, kPhaseDoubling, kStepFold, buf, data.bytes(), reqs);
      c.waitAll(reqs);
      reqs.clear();
      v = -1;
    } else if (r < 2 * rem) {
      recvPieces(c, r - 1, kPhaseDoubling, kStepFold, scratch.data(), data.bytes(), reqs);
      c.waitAll(reqs);
      reqs.clear();
      kernels::reduce(buf, scratch.data(), buf, data.count, data.dtype, op);
      v = r / 2;
    }
    if (v >= 0) {
      uint64_t step = kStepFirstRound;
      for (int mask = 1; mask < p; mask <<= 1, ++step) {
        const int pv = v ^ mask, peer = pv < rem ? 2 * pv + 1 : pv + rem;
        exchangeAndReduce(c, peer, v < pv, step, data, scratch.data(), op);
      }
    }
    if (r < 2 * rem) {
      if (r % 2 == 0)
        recvPieces(c, r + 1, kPhaseDoubling, kStepUnfold, buf, data.bytes(), reqs);
      else
        sendPieces(c, r - 1, kPhaseDoubling, kStepUnfold, buf, data.bytes(), reqs);
      c.waitAll(reqs);
    }
  }
  c.markAggregated();
  if (op == ReduceOp::Avg) kernels::divide(data.ptr, data.count, data.dtype, double(n));
}

}  // namespace ringflow::algo
