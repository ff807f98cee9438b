// A tuned schedule on a communicator: its ring in the tuned order, its
// lower-order groups, its piece size (mechanism 9; the tuner is Python).
#include <algorithm>
#include <numeric>

#include "ringflow/comm.h"

namespace ringflow {
namespace {

void checkShape(const Schedule& s, int n) {
  if (!s.ringOrder.empty()) {
    std::vector<int> sorted = s.ringOrder;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int> want(static_cast<size_t>(n));
    std::iota(want.begin(), want.end(), 0);
    if (sorted != want)
      throw InvalidArgument("schedule: ring order must list each of the " + std::to_string(n) +
                            " ranks once");
  }
  if (!s.groupOf.empty() && int(s.groupOf.size()) != n)
    throw InvalidArgument("schedule: " + std::to_string(s.groupOf.size()) + " group labels for " +
                          std::to_string(n) + " ranks");
  for (size_t i = 1; i < s.algorithms.size(); ++i)
    if (s.algorithms[i].minBytes <= s.algorithms[i - 1].minBytes)
      throw InvalidArgument("schedule: algorithm rules must have strictly ascending sizes");
  if (s.pieceBytes != 0 && s.pieceBytes < 64)
    throw InvalidArgument("schedule: piece size " + std::to_string(s.pieceBytes) +
                          " is below 64 bytes");
}

bool isIdentity(const std::vector<int>& order) {
  for (size_t i = 0; i < order.size(); ++i)
    if (order[i] != int(i)) return false;
  return true;
}

}  // namespace

void Comm::setSchedule(const Schedule& s) {
  checkShape(s, size());
  if (!untunedLayout_)
    untunedLayout_.reset(new Layout{lower_, higher_, hierarchyGroups_, hierarchyShards_});
  if (!s.groupOf.empty()) setGroupsInOrder(s.groupOf, s.ringOrder);
  // Its own id, apart from the lower (0x1...) and higher (0x2...) rings and
  // from earlier schedules' rings.
  const uint64_t tag = 0x30000000ull + (uint64_t(schedules_++) << 40);
  ring_ = s.ringOrder.empty() || isIdentity(s.ringOrder) ? nullptr : subgroup(s.ringOrder, tag);
  schedule_ = std::make_shared<const Schedule>(s);
  setPieceBytes(s.pieceBytes);
}

void Comm::clearSchedule() {
  if (untunedLayout_) {
    lower_ = untunedLayout_->lower;
    higher_ = untunedLayout_->higher;
    hierarchyGroups_ = untunedLayout_->groups;
    hierarchyShards_ = untunedLayout_->shards;
    untunedLayout_.reset();
  }
  ring_ = nullptr;
  schedule_ = nullptr;
  setPieceBytes(0);
}

void Comm::setPieceBytes(size_t bytes) {
  pieceBytes_ = bytes;
  for (Comm* sub : {lower_.get(), higher_.get(), ring_.get()})
    if (sub) sub->pieceBytes_ = bytes;
}

}  // namespace ringflow
