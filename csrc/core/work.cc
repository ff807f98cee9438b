#include "ringflow/work.h"

#include "ringflow/spin.h"

#include <chrono>

namespace ringflow {
namespace {
double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

bool Work::wait(double timeoutSec) {
  spinUntil(doneFlag_, std::chrono::microseconds(timeoutSec < 0 || timeoutSec > 1e-4 ? 50 : 0));
  std::unique_lock<std::mutex> lock(mu_);
  auto ready = [this] { return done_; };
  if (timeoutSec < 0) {
    cv_.wait(lock, ready);
  } else if (!cv_.wait_for(lock, std::chrono::duration<double>(timeoutSec), ready)) {
    return false;
  }
  if (error_) std::rethrow_exception(error_);
  return true;
}

std::string Work::what() {
  std::lock_guard<std::mutex> lock(mu_);
  if (describe_) {
    what_ = desc_.str();
    describe_ = false;
  }
  return what_;
}

bool Work::completed() {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

bool Work::succeeded() {
  std::lock_guard<std::mutex> lock(mu_);
  return done_ && !error_;
}

std::string Work::errorMessage() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!error_) return "";
  try {
    std::rethrow_exception(error_);
  } catch (const std::exception& e) {
    return e.what();
  }
}

double Work::seconds() {
  std::lock_guard<std::mutex> lock(mu_);
  return done_ ? ended_ - started_ : 0.0;
}

void Work::markStarted() {
  std::lock_guard<std::mutex> lock(mu_);
  started_ = now();
}

void Work::finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    ended_ = now();
    doneFlag_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
}

void Work::fail(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    error_ = error;
    ended_ = now();
    doneFlag_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
}

}  // namespace ringflow
