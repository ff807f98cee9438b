// The handle an asynchronous call returns.
#pragma once

#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <string>

#include "ringflow/op.h"

namespace ringflow {

class Work {
 public:
  explicit Work(std::string what) : what_(std::move(what)) {}
  // A collective's Work: its description is formatted only when asked for,
  // as most calls never are and formatting costs a small call microseconds.
  explicit Work(const OpDesc& desc) : desc_(desc), describe_(true) {}

  // Blocks until the call ends (its own timeout bounds that) or, when
  // timeoutSec >= 0, until timeoutSec passes; returns false on the latter.
  // Rethrows the call's error.
  bool wait(double timeoutSec = -1);
  bool completed();
  // Done without an error: a caller may drop the Work without waiting on it.
  bool succeeded();
  // The error's message, or "" while running or after success.
  std::string errorMessage();
  std::string what();
  // Seconds the call ran, once completed.
  double seconds();

  // The rank a receive from any source took its message from (-1 before).
  int source() const { return source_.load(std::memory_order_acquire); }
  void setSource(int rank) { source_.store(rank, std::memory_order_release); }

  void markStarted();
  void finish();
  void fail(std::exception_ptr error);

 private:
  std::mutex mu_;
  std::string what_;  // formatted from desc_ on first use when describe_
  OpDesc desc_;
  bool describe_ = false;
  std::condition_variable cv_;
  bool done_ = false;
  std::atomic<bool> doneFlag_{false};  // done_, readable without the lock
  std::exception_ptr error_;
  std::atomic<int> source_{-1};
  double started_ = 0, ended_ = 0;
};
using WorkPtr = std::shared_ptr<Work>;

}  // namespace ringflow
