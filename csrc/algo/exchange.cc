// Everyone-to-everyone calls: all-to-all with per-rank counts, and the
// dissemination barrier (log2(n) rounds of empty messages).
#include <cstring>

#include "schedule.h"

namespace ringflow::algo {
namespace {
constexpr uint64_t kPhaseExchange = 5;
constexpr uint64_t kPhaseBarrier = 6;
}  // namespace

void pairwiseAlltoall(Comm& c, Buffer in, Buffer out, const std::vector<size_t>& inCounts,
                      const std::vector<size_t>& outCounts) {
  Blocks src(inCounts), dst(outCounts);
  const size_t es = elementSize(in.dtype);
  const int n = c.size(), r = c.rank();
  std::vector<RequestPtr> reqs;
  // Post every receive first so most data lands straight in `out`; start the
  // sends at r+1 so no single rank is hit by everyone at once.
  for (int k = 1; k < n; ++k) {
    int from = (r - k + n) % n;
    recvPieces(c, from, kPhaseExchange, 0, out.at(dst.offset(from)), dst.count(from) * es, reqs);
  }
  for (int k = 1; k < n; ++k) {
    int to = (r + k) % n;
    sendPieces(c, to, kPhaseExchange, 0, in.at(src.offset(to)), src.count(to) * es, reqs);
  }
  if (src.count(r) != dst.count(r))
    throw MismatchError("alltoall on rank " + std::to_string(r) + " sends itself " +
                        std::to_string(src.count(r)) + " elements but expects " +
                        std::to_string(dst.count(r)));
  if (src.count(r)) std::memmove(out.at(dst.offset(r)), in.at(src.offset(r)), src.count(r) * es);
  c.waitAll(reqs);
}

void disseminationBarrier(Comm& c) {
  const int n = c.size(), r = c.rank();
  for (int dist = 1, round = 0; dist < n; dist *= 2, ++round) {
    std::vector<RequestPtr> reqs;
    reqs.push_back(c.isend((r + dist) % n, slotOf(kPhaseBarrier, round, 0), nullptr, 0));
    reqs.push_back(c.irecv((r - dist + n) % n, slotOf(kPhaseBarrier, round, 0), nullptr, 0));
    c.waitAll(reqs);
  }
}

}  // namespace ringflow::algo
