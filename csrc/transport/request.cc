#include "ringflow/spin.h"
#include "ringflow/transport.h"

namespace ringflow {

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
