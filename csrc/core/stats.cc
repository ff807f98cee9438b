#include "ringflow/stats.h"

#include <cstdio>

#include "ringflow/env.h"
#include "ringflow/settings.h"

namespace ringflow {
namespace {
constexpr size_t kRecent = 64;

std::string ms(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f ms", v);
  return buf;
}
}  // namespace

Stats& Stats::global() {
  static Stats* s = new Stats();  // never destroyed: op threads may record at exit
  return *s;
}

namespace {
const SettingsRegistration kSettings(
    {{"RINGFLOW_WARN_MS",
      "watchdog: warn when a call's aggregation phase or whole call exceeds this many ms, a "
      "decimal number (default 10000, 0 or less = off)"}},
    [] { Stats::global(); });
}  // namespace

Stats::Stats() : warnMs_(envDouble("RINGFLOW_WARN_MS", 10000.0)) {}

void Stats::setWarnMs(double v) {
  std::lock_guard<std::mutex> lock(mu_);
  warnMs_ = v;
}

std::string Stats::record(const std::string& kind, OpRecord r) {
  std::string warning;
  std::lock_guard<std::mutex> lock(mu_);
  if (warnMs_ > 0) {
    const char* phase = nullptr;
    double took = 0;
    if (r.aggregationMs > warnMs_) {
      phase = "aggregation phase";
      took = r.aggregationMs;
    } else if (r.totalMs > warnMs_) {
      phase = "aggregation+dispatch phase";
      took = r.totalMs;
    }
    if (phase) {
      r.warned = true;
      warning = "ringflow watchdog: rank " + std::to_string(r.rank) + ": " + r.op() + ": " + phase +
                " took " + ms(took) + " (RINGFLOW_WARN_MS=" + ms(warnMs_) + ")";
      if (r.slowPeer >= 0)
        warning += "; slowest hop: waiting for rank " + std::to_string(r.slowPeer) + " (" +
                   ms(r.slowWaitMs) + ")";
      ++warnings_;
      lastWarning_ = warning;
    }
  }
  OpKindStats& k = kinds_[kind];
  ++k.count;
  k.totalMs += r.totalMs;
  if (r.totalMs > k.maxMs) k.maxMs = r.totalMs;
  if (r.aggregationMs >= 0) k.aggregationMs += r.aggregationMs;
  if (r.warned) ++k.warnings;
  recent_.push_back(std::move(r));
  if (recent_.size() > kRecent) recent_.pop_front();
  return warning;
}

std::map<std::string, OpKindStats> Stats::byKind() {
  std::lock_guard<std::mutex> lock(mu_);
  return kinds_;
}

std::deque<OpRecord> Stats::recent() {
  std::lock_guard<std::mutex> lock(mu_);
  return recent_;
}

uint64_t Stats::warnings() {
  std::lock_guard<std::mutex> lock(mu_);
  return warnings_;
}

std::string Stats::lastWarning() {
  std::lock_guard<std::mutex> lock(mu_);
  return lastWarning_;
}

const char* compressPhaseName(CompressPhase p) {
  static const char* const kNames[] = {"intra_reduce", "quantize", "exchange", "lut_sum",
                                       "requantize",   "result_wait", "decode", "intra_gather"};
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == size_t(CompressPhase::Count));
  return kNames[size_t(p)];
}

void Stats::addSent(size_t bytes, bool crossHost) {
  bytesSent_.fetch_add(bytes, std::memory_order_relaxed);
  if (crossHost) crossHostBytes_.fetch_add(bytes, std::memory_order_relaxed);
}

void Stats::reset() {
  bytesSent_ = 0;
  crossHostBytes_ = 0;
  compressedCalls_ = 0;
  for (auto& n : sentTo_) n = 0;
  for (auto& ns : compressPhaseNs_) ns = 0;
  std::lock_guard<std::mutex> lock(mu_);
  kinds_.clear();
  recent_.clear();
  warnings_ = 0;
  lastWarning_.clear();
}

}  // namespace ringflow
