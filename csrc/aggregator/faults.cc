#include "faults.h"

#include <cstdlib>
#include <cstring>

#include "ringflow/env.h"
#include "ringflow/types.h"

namespace ringflow::agg {

FaultSpec parseFaults(const std::string& spec) {
  FaultSpec f;
  size_t start = 0;
  while (start < spec.size()) {
    size_t comma = spec.find(',', start);
    std::string item = spec.substr(start, comma == std::string::npos ? comma : comma - start);
    start = comma == std::string::npos ? spec.size() : comma + 1;
    if (item.empty()) continue;
    size_t colon = item.find(':');
    std::string name = item.substr(0, colon);
    char* end = nullptr;
    double p = colon == std::string::npos ? -1 : std::strtod(item.c_str() + colon + 1, &end);
    if (colon == std::string::npos || *end || !(p >= 0 && p < 1))
      throw InvalidArgument("RINGFLOW_AGG_FAULTS: '" + item +
                            "' is not NAME:P with P in [0, 1) (names: drop, dup, reorder)");
    if (name == "drop") f.drop = p;
    else if (name == "dup") f.dup = p;
    else if (name == "reorder") f.reorder = p;
    else
      throw InvalidArgument("RINGFLOW_AGG_FAULTS: unknown fault '" + name +
                            "' (expected drop, dup or reorder)");
  }
  if (f.drop + f.dup + f.reorder >= 1)
    throw InvalidArgument("RINGFLOW_AGG_FAULTS: the probabilities must add up to less than 1");
  return f;
}

FaultSpec faultsFromEnv() { return parseFaults(envString("RINGFLOW_AGG_FAULTS")); }

FaultInjector::FaultInjector(FaultSpec spec, uint64_t seed)
    : spec_(spec), state_(seed | 1) {}

FaultInjector::Fate FaultInjector::decide() {
  if (!active()) return Fate::Deliver;
  // splitmix64: plenty for drawing faults.
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  double u = double((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
  if (u < spec_.drop) return ++counts_.dropped, Fate::Drop;
  if ((u -= spec_.drop) < spec_.dup) return ++counts_.duplicated, Fate::Duplicate;
  if ((u -= spec_.dup) < spec_.reorder) return ++counts_.reordered, Fate::Hold;
  return Fate::Deliver;
}

void FaultInjector::add(SendBatch& batch, const sockaddr_storage* to, socklen_t toLen,
                        const void* a, size_t aBytes, const void* b, size_t bBytes) {
  switch (decide()) {
    case Fate::Drop: return;
    case Fate::Duplicate: batch.add(to, toLen, a, aBytes, b, bBytes); [[fallthrough]];
    case Fate::Deliver: batch.add(to, toLen, a, aBytes, b, bBytes); return;
    case Fate::Hold: {
      Held h;
      if (to) std::memcpy(&h.to, to, toLen);
      h.toLen = to ? toLen : 0;
      h.bytes.resize(aBytes + bBytes);
      std::memcpy(h.bytes.data(), a, aBytes);
      if (bBytes) std::memcpy(h.bytes.data() + aBytes, b, bBytes);
      held_.push_back(std::move(h));
      return;
    }
  }
}

void FaultInjector::releaseInto(SendBatch& batch) {
  // What was held during the previous batch goes out after this one's
  // datagrams; what was held during this one waits for the next.
  releasing_ = std::move(waiting_);
  waiting_ = std::move(held_);
  held_.clear();
  for (auto& h : releasing_)
    batch.add(h.toLen ? &h.to : nullptr, h.toLen, h.bytes.data(), h.bytes.size());
}

}  // namespace ringflow::agg
