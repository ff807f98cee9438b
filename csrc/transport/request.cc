#include <cstdio>

#include "ringflow/spin.h"
#include "ringflow/transport.h"

namespace ringflow {

const char* opKindName(OpKind kind) {
  switch (kind) {
    case OpKind::None: return "none";
    case OpKind::AllReduce: return "allreduce";
    case OpKind::Broadcast: return "broadcast";
    case OpKind::AllGather: return "allgather";
    case OpKind::ReduceScatter: return "reduce_scatter";
    case OpKind::Reduce: return "reduce";
    case OpKind::Gather: return "gather";
    case OpKind::Scatter: return "scatter";
    case OpKind::AllToAll: return "alltoall";
    case OpKind::Barrier: return "barrier";
    case OpKind::Send: return "send";
    case OpKind::Split: return "split";
  }
  return "unknown-op";
}

std::string OpDesc::str() const {
  // snprintf rather than a stream: no locale or stream set-up per call.
  char buf[160];
  int n = std::snprintf(buf, sizeof(buf), "%s #%llu (count=%llu, %s", opKindName(kind),
                        (unsigned long long)seq, (unsigned long long)count, dtypeName(dtype));
  if (kind == OpKind::AllReduce || kind == OpKind::Reduce || kind == OpKind::ReduceScatter)
    n += std::snprintf(buf + n, sizeof(buf) - n, ", %s", reduceOpName(op));
  if (kind == OpKind::Broadcast || kind == OpKind::Reduce || kind == OpKind::Gather ||
      kind == OpKind::Scatter)
    n += std::snprintf(buf + n, sizeof(buf) - n, ", root=%u", root);
  std::snprintf(buf + n, sizeof(buf) - n, ")");
  return buf;
}

bool Request::waitUntil(Deadline deadline) {
  spinUntil(doneFlag_, std::chrono::microseconds(50));
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_until(lock, deadline, [this] { return done_; })) return false;
  if (error_) std::rethrow_exception(error_);
  return true;
}

bool Request::done() {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

void Request::complete() { fail(nullptr); }

void Request::fail(std::exception_ptr error) {
  std::function<void(std::exception_ptr)> cb;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    done_ = true;
    error_ = error;
    cb.swap(callback_);
    doneFlag_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
  if (cb) cb(error);
}

void Request::onDone(std::function<void(std::exception_ptr)> cb) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!done_) {
      callback_ = std::move(cb);
      return;
    }
  }
  cb(error_);
}

}  // namespace ringflow
