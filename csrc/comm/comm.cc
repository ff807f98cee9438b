#include "ringflow/comm.h"

#include <algorithm>
#include <cstdio>

#include "ringflow/stats.h"

namespace ringflow {
namespace {

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::string secondsText(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1fs", s);
  return buf;
}

}  // namespace

Comm::Comm(std::shared_ptr<Transport> transport, uint64_t id, std::vector<int> members,
           double timeoutSec, uint64_t parentId)
    : transport_(std::move(transport)), id_(id), members_(std::move(members)),
      timeoutSec_(timeoutSec) {
  if (timeoutSec_ <= 0) throw InvalidArgument("timeout must be positive");
  // The first use reads RINGFLOW_WARN_MS: a bad value fails here, for the
  // caller to see, not at the end of the first call on the op thread.
  Stats::global();
  for (size_t i = 0; i < members_.size(); ++i)
    if (members_[i] == transport_->rank()) rank_ = int(i);
  if (rank_ < 0) throw InvalidArgument("this process is not a member of the communicator");
  transport_->registerComm(id_, members_, parentId);
  thread_ = std::thread([this] { opLoop(); });
  p2pThread_ = std::thread([this] { watchP2P(); });
}

Comm::~Comm() { shutdown(false); }

void Comm::shutdown(bool closeTransport) {
  std::deque<Task> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  p2pCv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (p2pThread_.joinable()) p2pThread_.join();
  // Algorithms' state goes with the calls: the aggregate client's destructor
  // says goodbye to the aggregator, which then frees the job's entry at once
  // rather than after --job-idle-s.
  attachments_.clear();
  {
    std::lock_guard<std::mutex> lock(mu_);
    dropped.swap(queue_);
  }
  for (auto& t : dropped)
    t.work->fail(std::make_exception_ptr(Error(t.desc.str() + " dropped: communicator shut down")));
  if (closeTransport) transport_->close();
}

WorkPtr Comm::submit(OpDesc desc, std::function<void()> body, bool runHere) {
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) throw Error("communicator has been shut down");
  desc.seq = nextSeq_++;
  auto work = std::make_shared<Work>(desc);
  if (!runHere || busy_ || !queue_.empty()) {
    queue_.push_back(Task{desc, std::move(body), work});
    cv_.notify_one();
    return work;
  }
  busy_ = true;
  lock.unlock();
  Task task{desc, std::move(body), work};
  std::exception_ptr failure;
  try {
    failure = runTask(task);  // catches what a body throws
  } catch (...) {
    release();
    throw;
  }
  release();
  complete(task, failure);
  return work;
}

void Comm::release() {
  bool queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    busy_ = false;
    queued = !queue_.empty();
  }
  if (queued) cv_.notify_one();  // waking an idle op thread costs a context switch
}

void Comm::opLoop() {
  for (;;) {
    Task task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] {
        return (!busy_ && !queue_.empty()) || (stopping_ && queue_.empty());
      });
      if (queue_.empty()) return;  // stopping, and nothing left to run
      task = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    std::exception_ptr failure = runTask(task);
    // Idle before the caller can see its Work done, so that the blocking
    // call it makes next finds the communicator free and runs inline.
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
    }
    complete(task, failure);
  }
}

std::exception_ptr Comm::runTask(Task& task) {
  op_ = task.desc;
  task.work->markStarted();
  opStart_ = Clock::now();
  deadline_ = opStart_ + std::chrono::microseconds(int64_t(timeoutSec_ * 1e6));
  waitMs_.assign(members_.size(), 0.0);
  aggregationMs_ = -1;
  try {
    transport_->beginOp(id_, op_);
    task.body();
    transport_->endOp(id_);
    inflight_.clear();
    recordTimings();
    return nullptr;
  } catch (const std::exception& e) {
    // Nothing may touch the caller's buffers once the work reports failure.
    for (auto& r : inflight_) transport_->cancel(r);
    inflight_.clear();
    transport_->endOp(id_);
    std::string why = "rank " + std::to_string(rank_) + " failed: " + e.what();
    transport_->abort(id_, why);
    return std::current_exception();
  }
}

void Comm::complete(Task& task, std::exception_ptr failure) {
  if (failure)
    task.work->fail(failure);
  else
    task.work->finish();
}

RequestPtr Comm::isend(int to, uint64_t slot, const void* data, size_t bytes) {
  auto r = transport_->send(members_[to], MsgKey{id_, op_.seq, slot, Channel::Collective}, op_,
                            data, bytes);
  Stats::global().addSent(bytes, crossesHosts_);
  Stats::global().addSentTo(members_[to], bytes);
  inflight_.push_back(r);
  return r;
}

RequestPtr Comm::irecv(int from, uint64_t slot, void* data, size_t bytes) {
  auto r = transport_->recv(members_[from], MsgKey{id_, op_.seq, slot, Channel::Collective}, op_,
                            data, bytes);
  inflight_.push_back(r);
  return r;
}

void Comm::wait(const RequestPtr& req) {
  int peer = -1;
  for (size_t i = 0; i < members_.size(); ++i)
    if (members_[i] == req->peer()) peer = int(i);
  if (req->done()) {
    req->waitUntil(deadline_);  // rethrows its failure
    return;
  }
  auto t0 = Clock::now();
  if (!req->waitUntil(deadline_))
    throw TimeoutError(op_.str() + " on rank " + std::to_string(rank_) + " timed out after " +
                       secondsText(timeoutSec_) + " waiting " +
                       (req->isSend() ? "to send to" : "for") + " rank " + std::to_string(peer));
  if (peer >= 0) creditWait(peer, std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
}

void Comm::creditWait(int peer, double ms) {
  waitMs_[peer] += ms;
  if (creditWaitsTo_) {
    const auto& pm = creditWaitsTo_->members_;
    auto it = std::find(pm.begin(), pm.end(), members_[peer]);
    if (it != pm.end()) creditWaitsTo_->waitMs_[it - pm.begin()] += ms;
  }
}

namespace {
int slowest(const std::vector<double>& waits) {
  int best = -1;
  for (size_t i = 0; i < waits.size(); ++i)
    if (waits[i] > 0 && (best < 0 || waits[i] > waits[best])) best = int(i);
  return best;
}
}  // namespace

void Comm::markAggregated() {
  aggregationMs_ = std::chrono::duration<double, std::milli>(Clock::now() - opStart_).count();
  aggregationSlowPeer_ = slowest(waitMs_);
  aggregationSlowMs_ = aggregationSlowPeer_ >= 0 ? waitMs_[aggregationSlowPeer_] : 0;
}

void Comm::recordTimings() {
  OpRecord r;
  r.desc = op_;
  r.rank = rank_;
  r.aggregationMs = aggregationMs_;
  r.totalMs = std::chrono::duration<double, std::milli>(Clock::now() - opStart_).count();
  // The slow hop of the phase that ran over: the aggregation phase's own if
  // it alone is too slow, else the whole call's.
  bool aggregationSlow = aggregationMs_ >= 0 && aggregationMs_ > Stats::global().warnMs();
  r.slowPeer = aggregationSlow ? aggregationSlowPeer_ : slowest(waitMs_);
  r.slowWaitMs = aggregationSlow ? aggregationSlowMs_ : (r.slowPeer >= 0 ? waitMs_[r.slowPeer] : 0);
  std::string warning = Stats::global().record(opKindName(op_.kind), std::move(r));
  if (!warning.empty()) std::fprintf(stderr, "%s\n", warning.c_str());
}

void Comm::waitAll(std::vector<RequestPtr>& reqs) {
  for (auto& r : reqs) wait(r);
  reqs.clear();
}

std::shared_ptr<Comm> Comm::splitByColor(const std::vector<int64_t>& all, int color) {
  if (all.size() != 2 * size_t(size()))
    throw InvalidArgument("split: " + std::to_string(all.size()) + " values for " +
                          std::to_string(size()) + " ranks");
  uint64_t tag = mix(++splits_) ^ mix(uint64_t(int64_t(color)) + 0x5157);
  if (color < 0) return nullptr;
  std::vector<std::pair<int64_t, int>> order;
  for (int r = 0; r < size(); ++r)
    if (all[2 * r] == color) order.push_back({all[2 * r + 1], r});
  std::sort(order.begin(), order.end());
  std::vector<int> ranks;
  for (auto& kv : order) ranks.push_back(kv.second);
  return subgroup(ranks, tag);
}

std::shared_ptr<Comm> Comm::subgroup(const std::vector<int>& ranks, uint64_t tag) {
  std::vector<int> globals;
  uint64_t id = mix(id_ ^ mix(tag));
  bool member = false;
  for (int r : ranks) {
    if (r < 0 || r >= size())
      throw InvalidArgument("rank " + std::to_string(r) + " is not in a communicator of size " +
                            std::to_string(size()));
    globals.push_back(members_[r]);
    id = mix(id ^ uint64_t(r));
    member |= r == rank_;
  }
  if (!member) return nullptr;
  return std::make_shared<Comm>(transport_, id, globals, timeoutSec_, id_);
}

}  // namespace ringflow
