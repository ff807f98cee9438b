// Allreduce through aggregator services (the packet aggregator): sum or average of a
// floating-point tensor, quantised to fixed point so the aggregator's
// integer adds are exact and every rank gets the same bits.  Configured by
// RINGFLOW_AGGREGATOR=host:port[,host:port...] (several aggregators share
// the chunks), RINGFLOW_AGG_SLOTS, RINGFLOW_AGG_PACKET_ELEMS,
// RINGFLOW_AGG_TOKEN and RINGFLOW_AGG_FAULTS.
#include <random>
#include <vector>

#include "ringflow/aggregator_client.h"
#include "ringflow/algorithms.h"
#include "ringflow/env.h"
#include "ringflow/kernels.h"
#include "ringflow/settings.h"

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

// Only a job that uses the aggregator resolves its address: a job that never
// does must not fail on it.  One that does fails when its communicator is
// built, alike on every rank.
const SettingsRegistration kSettings(
    {{"RINGFLOW_AGGREGATOR",
      "aggregate: the aggregator service(s), host:port[,host:port...]; chunks are shared "
      "round-robin"},
     {"RINGFLOW_AGG_SLOTS",
      "aggregate: packets in flight per aggregator, at most its slots per job (default 32)"},
     {"RINGFLOW_AGG_PACKET_ELEMS",
      "aggregate: int32 values per packet (default 16352: one 64 KiB datagram)"},
     {"RINGFLOW_AGG_TOKEN",
      "aggregate: shared secret; packets then carry a keyed MAC (required by an aggregator "
      "listening beyond loopback)"},
     {"RINGFLOW_AGG_FAULTS",
      "aggregate fault injector, e.g. drop:0.1,dup:0.1,reorder:0.1 (tests)"}},
    [] {
      slotsSetting();
      packetElemsSetting();
      agg::faultsFromEnv();
      if (aggregateChosen()) aggregatorsSetting();
    });

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

}  // namespace

bool aggregateApplies(DType dtype, ReduceOp op) {
  return isFloating(dtype) && (op == ReduceOp::Sum || op == ReduceOp::Avg);
}

void aggregateAllreduce(Comm& c, Buffer data, ReduceOp op) {
  if (c.size() == 1 || data.count == 0) return;  // nothing to add
  auto& client = c.attachment<agg::Client>();
  if (!client) client = makeClient(c);
  // Half and double tensors travel as float32 (fixed point has 31 bits anyway).
  std::vector<float> staged;
  float* x = static_cast<float*>(data.ptr);
  if (data.dtype != DType::Float32) {
    staged.resize(data.count);
    kernels::convert(staged.data(), DType::Float32, data.ptr, data.dtype, data.count);
    x = staged.data();
  }
  client->allreduceSum(x, data.count, uint32_t(c.op().seq), c.deadline(),
                       [&c] { return c.transport().abortReason(c.id()); });
  c.markAggregated();
  if (op == ReduceOp::Avg) kernels::divide(x, data.count, DType::Float32, double(c.size()));
  if (!staged.empty()) kernels::convert(data.ptr, data.dtype, x, DType::Float32, data.count);
}

}  // namespace ringflow::algo
