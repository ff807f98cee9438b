// The handle an asynchronous call returns.
#pragma once

#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <string>

namespace ringflow {

class Work {
 public:
  explicit Work(std::string what) : what_(std::move(what)) {}

  // Blocks until the call ends (its own timeout bounds that) or, when
  // timeoutSec >= 0, until timeoutSec passes; returns false on the latter.
  // Rethrows the call's error.
  bool wait(double timeoutSec = -1);
  bool completed();
  // The error's message, or "" while running or after success.
  std::string errorMessage();
  const std::string& what() const { return what_; }
  // Seconds the call ran, once completed.
  double seconds();

  void markStarted();
  void finish();
  void fail(std::exception_ptr error);

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::atomic<bool> doneFlag_{false};  // done_, readable without the lock
  std::exception_ptr error_;
  double started_ = 0, ended_ = 0;
};
using WorkPtr = std::shared_ptr<Work>;

}  // namespace ringflow
