// Compressed allreduce of the level that crosses hosts (compress.h): the
// ranks' gradients travel as low-bit codes with block scales, and the N
// ranks' codes are summed by the LUT distributed-arithmetic kernel
// (kernels::lutWeightedSum: coefficients paired four at a time into
// 16-entry tables, one look-up per bit plane), never decoded one by one.
//
// Wire format.  A compressed span of n float32 elements, b bits, block B
// (RINGFLOW_COMPRESS_BLOCK) travels as two messages: its numBlocks(n, B)
// float32 block scales s (little-endian), then its lowbitPackedBytes(n, b)
// bytes of codes, element i at bit i*b, code c meaning s * (2c - (2^b - 1))
// (quantize.h's offset binary).  2 bits, B = 256: 0.27 bytes an element
// against 4.
//
// Schedule over the G ranks of the ring (DeepSpeed's compressed allreduce,
// the sum done by LUT):
//   1. quantise: every rank adds its worker residual for this buffer to the
//      input, quantises each of G chunks (chunk j belongs to ring rank j)
//      and keeps input - decoded as the next residual (error feedback);
//   2. scatter: chunk j goes straight to rank j (G-1 messages of n/G);
//   3. LUT sum: rank j sums the G ranks' codes of chunk j with the block
//      scales as coefficients (lutWeightedSum, coefficient 1 per rank);
//   4. re-quantise: rank j quantises the sum with its server residual and
//      sends the codes to every rank (G-1 messages of n/G);
//   5. decode: every rank decodes every chunk (its own in the re-quantising
//      pass itself, to the same bits), so all ranks hold the same bits.
// stats()["compress_phase_ms"] times each step (CompressPhase in stats.h).
// A rank sends 2 (G-1)/G * n * (b/8 + 4/B) bytes, the exact ring
// 2 (G-1)/G * 4n.  With feedback, T calls on the same buffer sum to T times
// the exact sum minus the last residuals: the error stays bounded.
//
// Residuals are kept with the call's communicator, keyed by the caller's
// buffer (address, element count): a DDP bucket is the same buffer call
// after call.  At most kMaxBuffers buffers keep one; the oldest is dropped.
#include <cstring>
#include <deque>
#include <map>
#include <utility>
#include <vector>

#include "ringflow/compress.h"
#include "ringflow/env.h"
#include "ringflow/kernels.h"
#include "ringflow/lut.h"
#include "ringflow/quantize.h"
#include "ringflow/settings.h"
#include "ringflow/stats.h"
#include "schedule.h"

namespace ringflow::algo {
namespace {

constexpr uint64_t kPhaseScatter = 7;
constexpr uint64_t kPhaseResult = 8;
constexpr uint64_t kStepScales = 0, kStepCodes = 1;
constexpr size_t kMaxBuffers = 64;
constexpr size_t kPieceElements = 16384;  // 64 KiB of LUT sum: stays in L2 until re-quantised

const std::vector<const char*> kModeNames = {"none", "int8", "4bit", "2bit", "1bit"};
const int kModeBits[] = {0, 8, 4, 2, 1};

int envBits() {
  static const int bits = kModeBits[envChoice("RINGFLOW_COMPRESS", 0, kModeNames)];
  return bits;
}

bool feedbackOn() {
  static const bool on = envBool("RINGFLOW_COMPRESS_FEEDBACK", true);
  return on;
}

size_t blockSize() {
  static const size_t b = envSize("RINGFLOW_COMPRESS_BLOCK", 256, 1, size_t(1) << 24);
  return b;
}

const SettingsRegistration kSettings(
    {{"RINGFLOW_COMPRESS",
      "low-bit compression of the allreduce level that crosses hosts (floating-point sum/avg "
      "only): none (default), int8, 4bit, 2bit or 1bit"},
     {"RINGFLOW_COMPRESS_FEEDBACK",
      "error feedback for compressed allreduce: keep each buffer's quantisation residual and add "
      "it to the next call (default 1)"},
     {"RINGFLOW_COMPRESS_BLOCK",
      "elements per block scale of compressed allreduce (default 256; multiples of 8 take the "
      "vector path)"}},
    [] {
      envBits();
      feedbackOn();
      blockSize();
    });

// Buffers of one call, kept with the communicator so that the next call
// (the same DDP bucket, or one as large) reuses warm pages instead of
// faulting in fresh ones: megabytes a call at 64 MiB.
struct Scratch {
  std::vector<uint8_t> mineCodes;  // [g][stride]: every rank's codes of my chunk
  std::vector<float> mineScales;   // [g][nblk]
  std::vector<uint8_t> rowCodes;   // [g][widest chunk's bytes]: my codes of chunk j to send,
  std::vector<float> rowScales;    // then the re-quantised sum of chunk j received back
  std::vector<float> sum;          // the LUT sum of one piece of my chunk
};

struct Residuals {
  struct Entry {
    std::vector<float> worker, server;
  };
  using Key = std::pair<const void*, size_t>;
  std::map<Key, Entry> byBuffer;
  std::deque<Key> order;  // oldest first
  Scratch scratch;

  Entry& of(Key key, size_t workerCount, size_t serverCount) {
    auto it = byBuffer.find(key);
    if (it == byBuffer.end()) {
      if (byBuffer.size() == kMaxBuffers) {
        byBuffer.erase(order.front());
        order.pop_front();
      }
      it = byBuffer.emplace(key, Entry{}).first;
      order.push_back(key);
    }
    Entry& e = it->second;
    if (e.worker.size() != workerCount) e.worker.assign(workerCount, 0.0f);  // new layout
    if (e.server.size() != serverCount) e.server.assign(serverCount, 0.0f);
    return e;
  }
};

// Grows (never shrinks) a scratch vector.
template <typename T>
T* atLeast(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

void sendSpan(Comm& c, int peer, uint64_t phase, const float* scales, const uint8_t* codes,
              size_t n, int bits, std::vector<RequestPtr>& reqs) {
  sendPieces(c, peer, phase, kStepScales, reinterpret_cast<const char*>(scales),
             kernels::numBlocks(n, blockSize()) * sizeof(float), reqs);
  sendPieces(c, peer, phase, kStepCodes, reinterpret_cast<const char*>(codes),
             kernels::lowbitPackedBytes(n, bits), reqs);
}

void recvSpan(Comm& c, int peer, uint64_t phase, float* scales, uint8_t* codes, size_t n, int bits,
              std::vector<RequestPtr>& reqs) {
  recvPieces(c, peer, phase, kStepScales, reinterpret_cast<char*>(scales),
             kernels::numBlocks(n, blockSize()) * sizeof(float), reqs);
  recvPieces(c, peer, phase, kStepCodes, reinterpret_cast<char*>(codes),
             kernels::lowbitPackedBytes(n, bits), reqs);
}

// Steps 1-5 of the schedule on float32 data.
void compressedSum(Comm& ring, float* x, size_t n, Residuals::Entry& res, Scratch& scratch,
                   int bits) {
  const int g = ring.size(), me = ring.rank();
  const size_t block = blockSize();
  Blocks chunks(n, g);
  const size_t mine = chunks.count(me), nblk = kernels::numBlocks(mine, block);
  const size_t stride = kernels::lowbitPackedBytes(mine, bits);
  const size_t rowBytes = kernels::lowbitPackedBytes(chunks.maxCount(), bits);
  const size_t rowBlocks = kernels::numBlocks(chunks.maxCount(), block);
  float* worker = feedbackOn() ? res.worker.data() : nullptr;
  float* server = feedbackOn() ? res.server.data() : nullptr;
  uint8_t* codes = atLeast(scratch.mineCodes, size_t(g) * stride);
  float* scales = atLeast(scratch.mineScales, size_t(g) * nblk);
  uint8_t* rowCodes = atLeast(scratch.rowCodes, size_t(g) * rowBytes);
  float* rowScales = atLeast(scratch.rowScales, size_t(g) * rowBlocks);
  PhaseClock clock;

  // Steps 1-2: every rank's codes of my chunk land in row `rank` of codes.
  std::vector<RequestPtr> reqs;
  for (int k = 1; k < g; ++k) {
    int from = (me - k + g) % g;
    if (mine)
      recvSpan(ring, from, kPhaseScatter, scales + size_t(from) * nblk,
               codes + size_t(from) * stride, mine, bits, reqs);
  }
  for (int k = 1; k <= g; ++k) {
    int to = (me + k) % g;  // own chunk last, straight into its row
    size_t off = chunks.offset(to), cnt = chunks.count(to);
    if (!cnt) continue;
    const bool own = to == me;
    uint8_t* c = own ? codes + size_t(me) * stride : rowCodes + size_t(to) * rowBytes;
    float* s = own ? scales + size_t(me) * nblk : rowScales + size_t(to) * rowBlocks;
    kernels::quantizeLowbit(c, s, worker ? worker + off : nullptr, x + off,
                            worker ? worker + off : nullptr, cnt, bits, block);
    if (!own) sendSpan(ring, to, kPhaseScatter, s, c, cnt, bits, reqs);
  }
  clock.lap(CompressPhase::Quantize);
  ring.waitAll(reqs);
  clock.lap(CompressPhase::Exchange);

  // Steps 3-4, a piece at a time so that the sum is re-quantised while it
  // is still in cache: the G ranks' codes summed by table look-ups (scales
  // as weights), re-quantised with the server residual, and decoded into my
  // output in the same pass.  Pieces start on blocks that start on a byte.
  for (int k = 1; k < g; ++k) {
    int from = (me - k + g) % g;
    size_t cnt = chunks.count(from);
    if (cnt)
      recvSpan(ring, from, kPhaseResult, rowScales + size_t(from) * rowBlocks,
               rowCodes + size_t(from) * rowBytes, cnt, bits, reqs);
  }
  const size_t piece = block % 8 == 0 ? block * ((kPieceElements + block - 1) / block) : mine;
  float* sum = atLeast(scratch.sum, piece < mine ? piece : mine);
  std::vector<float> ones(size_t(g), 1.0f);
  uint8_t* myCodes = rowCodes + size_t(me) * rowBytes;
  float* myScales = rowScales + size_t(me) * rowBlocks;
  float* out = x + chunks.offset(me);
  for (size_t p0 = 0; p0 < mine; p0 += piece) {
    const size_t len = mine - p0 < piece ? mine - p0 : piece, b0 = p0 / block;
    const size_t byte = p0 * size_t(bits) / 8;
    kernels::lutWeightedSumStrided(sum, codes + byte, stride, scales + b0, nblk, ones.data(),
                                   size_t(g), len, bits, block);
    clock.lap(CompressPhase::LutSum);
    kernels::quantizeLowbit(myCodes + byte, myScales + b0, server ? server + p0 : nullptr, sum,
                            server ? server + p0 : nullptr, len, bits, block, out + p0);
    clock.lap(CompressPhase::Requantize);
  }
  for (int k = 1; k < g && mine; ++k)
    sendSpan(ring, (me + k) % g, kPhaseResult, myScales, myCodes, mine, bits, reqs);
  clock.lap(CompressPhase::Requantize);
  ring.waitAll(reqs);
  clock.lap(CompressPhase::ResultWait);
  for (int j = 0; j < g; ++j)
    if (j != me && chunks.count(j))
      kernels::dequantizeLowbit(x + chunks.offset(j), rowCodes + size_t(j) * rowBytes,
                                rowScales + size_t(j) * rowBlocks, chunks.count(j), bits, block);
  clock.lap(CompressPhase::Decode);
}

}  // namespace

int compressBitsOf(const std::string& mode) {
  for (size_t i = 0; i < kModeNames.size(); ++i)
    if (mode == kModeNames[i]) return kModeBits[i];
  throw InvalidArgument("compression mode must be none, int8, 4bit, 2bit or 1bit, got '" + mode +
                        "'");
}

int compressBitsFor(Comm& c, DType dtype, ReduceOp op) {
  if (!aggregateApplies(dtype, op)) return 0;  // floating-point sum and avg only
  if (!c.lower() || c.hierarchyGroups() < 2) return 0;
  const int own = c.compressBits();
  return own >= 0 ? own : envBits();
}

void compressedAllreduce(Comm& ring, Buffer shard, Comm& owner, const void* key, size_t keyCount,
                         int bits) {
  kernels::checkLowbitBits(bits);
  Stats::global().addCompressedCall();
  const size_t n = shard.count;
  auto& store = owner.attachment<Residuals>();
  if (!store) store = std::make_shared<Residuals>();
  Residuals::Entry& res = store->of({key, keyCount}, n, Blocks(n, ring.size()).count(ring.rank()));
  if (shard.dtype == DType::Float32)
    return compressedSum(ring, static_cast<float*>(shard.ptr), n, res, store->scratch, bits);
  std::vector<float> f32(n);
  kernels::convert(f32.data(), DType::Float32, shard.ptr, shard.dtype, n);
  compressedSum(ring, f32.data(), n, res, store->scratch, bits);
  kernels::convert(shard.ptr, shard.dtype, f32.data(), DType::Float32, n);
}

}  // namespace ringflow::algo
