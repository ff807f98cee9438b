// Lower- and higher-order rings of a hierarchical communicator, and running
// their steps inline inside a call of the parent.
#include <algorithm>
#include <map>

#include "ringflow/comm.h"

namespace ringflow {

void Comm::setGroups(const std::vector<int>& groupOf) { setGroupsInOrder(groupOf, {}); }

void Comm::setGroupsInOrder(const std::vector<int>& groupOf, const std::vector<int>& ringOrder) {
  if (int(groupOf.size()) != size())
    throw InvalidArgument("setGroups: " + std::to_string(groupOf.size()) + " labels for " +
                          std::to_string(size()) + " ranks");
  if (!ringOrder.empty() && int(ringOrder.size()) != size())
    throw InvalidArgument("setGroups: a ring order of " + std::to_string(ringOrder.size()) +
                          " ranks for " + std::to_string(size()) + " ranks");
  std::map<int, std::vector<int>> groups;  // label -> ranks, in ring (default: rank) order
  for (int i = 0; i < size(); ++i) {
    int r = ringOrder.empty() ? i : ringOrder[size_t(i)];
    groups[groupOf[size_t(r)]].push_back(r);
  }
  size_t shards = size_t(size());
  for (auto& [label, ranks] : groups) shards = std::min(shards, ranks.size());
  const std::vector<int>& mine = groups[groupOf[rank_]];
  size_t local = size_t(std::find(mine.begin(), mine.end(), rank_) - mine.begin());
  // Tags differ per group / per local index so concurrent sub-rings never
  // share an id, and per layout so a later layout's rings never reuse one.
  const uint64_t generation = uint64_t(layouts_++) << 40;
  lower_ = subgroup(mine, 0x10000000ull + uint64_t(uint32_t(groupOf[rank_])) + generation);
  higher_ = nullptr;
  if (local < shards) {
    std::vector<int> across;  // the rank with my local index in every group
    for (auto& [label, ranks] : groups) across.push_back(ranks[local]);
    higher_ = subgroup(across, 0x20000000ull + uint64_t(local) + generation);
    higher_->crossesHosts_ = groups.size() > 1;
  }
  hierarchyGroups_ = int(groups.size());
  hierarchyShards_ = int(shards);
}

void Comm::runInline(OpDesc desc, Comm& parent, const std::function<void()>& body) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    desc.seq = nextSeq_++;
  }
  op_ = desc;
  opStart_ = Clock::now();
  deadline_ = parent.deadline_;
  waitMs_.assign(members_.size(), 0.0);
  creditWaitsTo_ = &parent;
  try {
    transport_->beginOp(id_, op_);
    body();
    transport_->endOp(id_);
    inflight_.clear();
  } catch (const std::exception& e) {
    for (auto& r : inflight_) transport_->cancel(r);
    inflight_.clear();
    transport_->endOp(id_);
    transport_->abort(id_, "rank " + std::to_string(rank_) + " failed: " + e.what());
    throw;
  }
}

}  // namespace ringflow
