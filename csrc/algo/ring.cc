// The ring: reduce-scatter then allgather, each a pipeline of pieces.  Rank r
// sends to r+1 and receives from r-1; after n-1 reduce-scatter steps rank r
// holds block r fully reduced, and n-1 allgather steps hand every block round.
#include <cstring>

#include "schedule.h"
#include "ringflow/env.h"
#include "ringflow/settings.h"
#include "ringflow/kernels.h"

namespace ringflow::algo {
namespace {

constexpr uint64_t kPhaseReduceScatter = 1;
constexpr uint64_t kPhaseAllgather = 2;

int mod(int a, int n) { return ((a % n) + n) % n; }

// Pieces of block b: [first element, element count) pairs.
std::vector<std::pair<size_t, size_t>> piecesOf(const Blocks& blocks, int b, size_t pieceElems) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t start = blocks.offset(b), n = blocks.count(b);
  for (size_t done = 0; done < n; done += pieceElems)
    out.push_back({start + done, std::min(pieceElems, n - done)});
  return out;
}

size_t pieceElemsFor(const Comm& c, DType t) {
  return std::max<size_t>(1, pieceBytes(c) / elementSize(t));
}

}  // namespace

void reduceScatterInPlace(Comm& c, const Buffer& work, const Blocks& blocks, ReduceOp op) {
  const int n = c.size(), r = c.rank(), next = mod(r + 1, n), prev = mod(r - 1, n);
  const size_t es = elementSize(work.dtype), pe = pieceElemsFor(c, work.dtype);
  // Kept across calls: fresh pages cost far more to touch than to reuse.
  static thread_local std::vector<char> scratch[2];
  for (auto& s : scratch)
    if (s.size() < blocks.maxCount() * es) s.resize(blocks.maxCount() * es);
  std::vector<RequestPtr> recvs[2], sends;

  auto postRecvs = [&](int s) {
    int b = mod(r - s - 2, n);
    size_t base = blocks.offset(b);
    for (auto [first, cnt] : piecesOf(blocks, b, pe))
      recvs[s % 2].push_back(c.irecv(prev, slotOf(kPhaseReduceScatter, s, (first - base) / pe),
                                     scratch[s % 2].data() + (first - base) * es, cnt * es));
  };
  int b0 = mod(r - 1, n);
  for (auto [first, cnt] : piecesOf(blocks, b0, pe))
    sends.push_back(c.isend(next, slotOf(kPhaseReduceScatter, 0, (first - blocks.offset(b0)) / pe),
                            work.at(first), cnt * es));
  postRecvs(0);
  if (n > 2) postRecvs(1);
  for (int s = 0; s < n - 1; ++s) {
    int b = mod(r - s - 2, n);
    size_t base = blocks.offset(b);
    auto pieces = piecesOf(blocks, b, pe);
    for (size_t p = 0; p < pieces.size(); ++p) {
      auto [first, cnt] = pieces[p];
      c.wait(recvs[s % 2][p]);
      kernels::reduce(work.at(first), work.at(first), scratch[s % 2].data() + (first - base) * es,
                      cnt, work.dtype, op);
      if (s < n - 2) sends.push_back(c.isend(next, slotOf(kPhaseReduceScatter, s + 1, p),
                                             work.at(first), cnt * es));
    }
    recvs[s % 2].clear();
    if (s + 2 < n - 1) postRecvs(s + 2);
  }
  c.waitAll(sends);
}

void allgatherInPlace(Comm& c, const Buffer& work, const Blocks& blocks) {
  const int n = c.size(), r = c.rank(), next = mod(r + 1, n), prev = mod(r - 1, n);
  const size_t es = elementSize(work.dtype), pe = pieceElemsFor(c, work.dtype);
  std::vector<std::vector<RequestPtr>> recvs(n);
  std::vector<RequestPtr> sends;
  for (int s = 0; s < n - 1; ++s) {
    int b = mod(r - s - 1, n);
    size_t base = blocks.offset(b);
    for (auto [first, cnt] : piecesOf(blocks, b, pe))
      recvs[s].push_back(c.irecv(prev, slotOf(kPhaseAllgather, s, (first - base) / pe),
                                 work.at(first), cnt * es));
  }
  for (auto [first, cnt] : piecesOf(blocks, r, pe))
    sends.push_back(c.isend(next, slotOf(kPhaseAllgather, 0, (first - blocks.offset(r)) / pe),
                            work.at(first), cnt * es));
  for (int s = 0; s < n - 1; ++s) {
    int b = mod(r - s - 1, n);
    auto pieces = piecesOf(blocks, b, pe);
    for (size_t p = 0; p < pieces.size(); ++p) {
      c.wait(recvs[s][p]);
      if (s < n - 2)
        sends.push_back(c.isend(next, slotOf(kPhaseAllgather, s + 1, p), work.at(pieces[p].first),
                                pieces[p].second * es));
    }
  }
  c.waitAll(sends);
}

size_t pieceBytes() {
  static const size_t bytes = [] {
    constexpr size_t kDefault = 256 << 10;
    size_t v = envSize("RINGFLOW_PIECE_BYTES", kDefault);
    return v >= 64 ? v : kDefault;  // below 64 B (0 included) means the default
  }();
  return bytes;
}

size_t pieceBytes(const Comm& c) { return c.pieceBytes() ? c.pieceBytes() : pieceBytes(); }

namespace {
const SettingsRegistration kSettings(
    {{"RINGFLOW_PIECE_BYTES",
      "pipelining piece size of ring/chain algorithms (default 262144; below 64 means the default)"}},
    [] { pieceBytes(); });
}  // namespace

Blocks::Blocks(size_t count, int parts) : starts(parts), counts(parts) {
  for (int b = 0; b < parts; ++b) {
    counts[b] = count / parts + (size_t(b) < count % parts ? 1 : 0);
    starts[b] = b ? starts[b - 1] + counts[b - 1] : 0;
  }
}

Blocks::Blocks(const std::vector<size_t>& counts) : starts(counts.size()), counts(counts) {
  for (size_t b = 1; b < counts.size(); ++b) starts[b] = starts[b - 1] + counts[b - 1];
}

size_t Blocks::maxCount() const {
  size_t m = 0;
  for (size_t n : counts) m = std::max(m, n);
  return m;
}

void ringAllreduce(Comm& c, Buffer data, ReduceOp op) {
  Blocks blocks(data.count, c.size());
  if (c.size() > 1) reduceScatterInPlace(c, data, blocks, op);
  c.markAggregated();
  if (op == ReduceOp::Avg)
    kernels::divide(data.at(blocks.offset(c.rank())), blocks.count(c.rank()), data.dtype,
                    double(c.size()));
  if (c.size() > 1) allgatherInPlace(c, data, blocks);
}

// Reduce-scatter and allgather run on the tuned ring when a schedule sets
// one: blocks stay in rank order in the buffers, ring position p handling
// the block of the rank there.
void ringReduceScatter(Comm& c, Buffer in, Buffer out, ReduceOp op) {
  if (c.schedule() && c.schedule()->deterministic) return deterministicReduceScatter(c, in, out, op);
  const RingView ring = ringView(c);
  const Blocks blocks = ring.equalBlocks(out.count);
  static thread_local std::vector<char> work;
  if (work.size() < in.bytes()) work.resize(in.bytes());
  if (!work.empty()) std::memcpy(work.data(), in.ptr, in.bytes());
  Buffer w{work.data(), in.count, in.dtype};
  if (c.size() > 1)
    ring.run(OpKind::ReduceScatter, [&](Comm& rc) { reduceScatterInPlace(rc, w, blocks, op); });
  c.markAggregated();
  if (out.count) std::memcpy(out.ptr, w.at(size_t(c.rank()) * out.count), out.bytes());
  if (op == ReduceOp::Avg) kernels::divide(out.ptr, out.count, out.dtype, double(c.size()));
}

void ringAllgather(Comm& c, Buffer in, Buffer out) {
  const RingView ring = ringView(c);
  const Blocks blocks = ring.equalBlocks(in.count);
  if (in.count && out.at(size_t(c.rank()) * in.count) != in.ptr)
    std::memmove(out.at(size_t(c.rank()) * in.count), in.ptr, in.bytes());
  if (c.size() > 1)
    ring.run(OpKind::AllGather, [&](Comm& rc) { allgatherInPlace(rc, out, blocks); });
}

}  // namespace ringflow::algo
