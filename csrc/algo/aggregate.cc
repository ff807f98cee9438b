// Allreduce through aggregator services (mechanism 3): sum or average of a
// floating-point tensor, quantised to fixed point so the aggregator's
// integer adds are exact and every rank gets the same bits.  Configured by
// RINGFLOW_AGGREGATOR=host:port[,host:port...] (several aggregators share
// the chunks), RINGFLOW_AGG_SLOTS, RINGFLOW_AGG_PACKET_ELEMS,
// RINGFLOW_AGG_TOKEN and RINGFLOW_AGG_FAULTS.
#include <random>
#include <vector>

#include "aggregator/client.h"
#include "algorithms.h"
#include "kernels/half.h"
#include "ringflow/env.h"
#include "ringflow/kernels.h"

namespace ringflow::algo {
namespace {

uint32_t slotsSetting() {
  return uint32_t(envSize("RINGFLOW_AGG_SLOTS", agg::kDefaultSlots, 1, 4096));
}
uint32_t packetElemsSetting() {
  return uint32_t(envSize("RINGFLOW_AGG_PACKET_ELEMS", agg::kDefaultPacketElems, 1,
                          agg::kMaxPacketElems));
}

// RINGFLOW_AGGREGATOR, resolved.  An aggregator beyond loopback serves only
// workers with its token (it refuses to listen there without one), so
// without RINGFLOW_AGG_TOKEN every packet would be rejected: say so now.
std::vector<agg::Endpoint> aggregatorsSetting() {
  std::string where = envString("RINGFLOW_AGGREGATOR");
  if (where.empty())
    throw InvalidArgument("RINGFLOW_ALGO=aggregate needs RINGFLOW_AGGREGATOR=host:port[,host:port...], "
                          "the address of a running `ringflow aggregator`");
  std::vector<agg::Endpoint> all = agg::parseEndpoints(where);
  if (envString("RINGFLOW_AGG_TOKEN").empty())
    for (const agg::Endpoint& e : all)
      if (!agg::isLoopback(e.addr))
        throw InvalidArgument("RINGFLOW_AGGREGATOR=" + where + ": aggregator " + e.text + " (" +
                              agg::addressText(e.addr) +
                              ") is beyond loopback and needs a token: set RINGFLOW_AGG_TOKEN on "
                              "every rank to the one the aggregator was started with");
  return all;
}

// Whether allreduces may go through the aggregator (select.cc's choice).
bool aggregateChosen() { return envString("RINGFLOW_ALGO") == "aggregate"; }

}  // namespace

void readAggregateSettings() {
  slotsSetting();
  packetElemsSetting();
  agg::faultsFromEnv();
  // Only a job that uses the aggregator resolves its address: a job that
  // never does must not fail on it.  One that does fails here, when its
  // communicator is built, alike on every rank.
  if (aggregateChosen()) aggregatorsSetting();
}

namespace {

// Every rank must agree on the job and the shape of the protocol; rank 0's
// random job id is everyone's.  Checked with one small allgather, so a
// mismatch fails on every rank alike.
std::shared_ptr<agg::Client> makeClient(Comm& c) {
  agg::ClientConfig cfg;
  cfg.aggregators = aggregatorsSetting();
  cfg.slots = slotsSetting();
  cfg.packetElems = packetElemsSetting();
  cfg.token = envString("RINGFLOW_AGG_TOKEN");
  cfg.faults = agg::faultsFromEnv();
  cfg.rank = c.rank();
  cfg.workers = c.size();
  uint64_t fingerprint = agg::PacketAuth(cfg.token).fingerprint();
  std::vector<int64_t> mine = {int64_t(std::random_device{}()), cfg.slots, cfg.packetElems,
                               int64_t(cfg.aggregators.size()), int64_t(fingerprint)};
  const size_t fields = mine.size();
  std::vector<int64_t> all(fields * size_t(c.size()));
  ringAllgather(c, Buffer{mine.data(), fields, DType::Int64},
                Buffer{all.data(), all.size(), DType::Int64});
  static const char* names[] = {"job", "RINGFLOW_AGG_SLOTS", "RINGFLOW_AGG_PACKET_ELEMS",
                                "the number of aggregators in RINGFLOW_AGGREGATOR",
                                "RINGFLOW_AGG_TOKEN"};
  for (int r = 1; r < c.size(); ++r)
    for (size_t f = 1; f < fields; ++f)
      if (all[r * fields + f] != all[f])
        throw MismatchError("aggregate: rank " + std::to_string(r) + " and rank 0 differ in " +
                            names[f] + (f == 4 ? "" : " (" + std::to_string(all[r * fields + f]) +
                                                          " against " + std::to_string(all[f]) + ")"));
  cfg.job = uint32_t(all[0]);
  return std::make_shared<agg::Client>(std::move(cfg));
}

// Half and double tensors travel as float32 (fixed point has 31 bits
// anyway).  The dtype is chosen once per tensor, not per element.
std::vector<float> toFloat(const Buffer& b) {
  std::vector<float> f(b.count);
  auto convert = [&](auto* src, auto cast) {
    for (size_t i = 0; i < b.count; ++i) f[i] = cast(src[i]);
  };
  if (b.dtype == DType::Float16) convert(static_cast<const uint16_t*>(b.ptr), kernels::halfToFloat);
  else if (b.dtype == DType::BFloat16) convert(static_cast<const uint16_t*>(b.ptr), kernels::bf16ToFloat);
  else convert(static_cast<const double*>(b.ptr), [](double v) { return float(v); });
  return f;
}

void fromFloat(const std::vector<float>& f, const Buffer& b) {
  auto convert = [&](auto* dst, auto cast) {
    for (size_t i = 0; i < b.count; ++i) dst[i] = cast(f[i]);
  };
  if (b.dtype == DType::Float16) convert(static_cast<uint16_t*>(b.ptr), kernels::floatToHalf);
  else if (b.dtype == DType::BFloat16) convert(static_cast<uint16_t*>(b.ptr), kernels::floatToBf16);
  else convert(static_cast<double*>(b.ptr), [](float v) { return double(v); });
}

}  // namespace

bool aggregateApplies(DType dtype, ReduceOp op) {
  return isFloating(dtype) && (op == ReduceOp::Sum || op == ReduceOp::Avg);
}

void aggregateAllreduce(Comm& c, Buffer data, ReduceOp op) {
  if (c.size() == 1 || data.count == 0) return;  // nothing to add
  auto& client = c.aggregateClient();
  if (!client) client = makeClient(c);
  std::vector<float> staged;
  float* x = static_cast<float*>(data.ptr);
  if (data.dtype != DType::Float32) {
    staged = toFloat(data);
    x = staged.data();
  }
  client->allreduceSum(x, data.count, uint32_t(c.op().seq), c.deadline(),
                       [&c] { return c.transport().abortReason(c.id()); });
  c.markAggregated();
  if (op == ReduceOp::Avg) kernels::divide(x, data.count, DType::Float32, double(c.size()));
  if (!staged.empty()) fromFloat(staged, data);
}

}  // namespace ringflow::algo
