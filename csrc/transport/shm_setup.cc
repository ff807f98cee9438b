// Creating, mapping and removing the shared-memory segments, and the futex
// bells every shared-memory wait sleeps on.
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ringflow/env.h"
#include "ringflow/settings.h"
#include "shm_internal.h"
#include "trace.h"

namespace ringflow {
namespace shm {

void ring(Bell& bell) {
  // Sequentially consistent on both sides (word then sleepers here, sleepers
  // then word in sleepOn), so a sleeper is either seen or sees the change.
  bell.word.fetch_add(1);
  if (bell.sleepers.load() > 0)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&bell.word), FUTEX_WAKE, INT32_MAX, nullptr,
            nullptr, 0);
}

void sleepOn(Bell& bell, uint32_t seen, std::chrono::microseconds timeout) {
  bell.sleepers.fetch_add(1);
  if (bell.word.load() == seen) {
    timespec ts{time_t(timeout.count() / 1000000), long(timeout.count() % 1000000) * 1000};
    // Not FUTEX_PRIVATE: the word lives in memory other processes map.
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&bell.word), FUTEX_WAIT, seen, &ts, nullptr,
            0);
  }
  bell.sleepers.fetch_sub(1);
}

}  // namespace shm

namespace {

std::string sysError(const std::string& what) { return what + ": " + std::strerror(errno); }

char* mapSegment(int fd, size_t bytes, const std::string& name) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw Error(sysError("mmap of shared-memory segment " + name));
  return static_cast<char*>(p);
}

}  // namespace

namespace {
const SettingsRegistration kSettings(
    {{"RINGFLOW_SHM_SPIN_US",
      "shm reader thread: microseconds of polling before it sleeps (default 50)"}},
    [] { ShmTransport::idleSpinSetting(); });
}  // namespace

std::chrono::microseconds ShmTransport::idleSpinSetting() {
  return envMicros("RINGFLOW_SHM_SPIN_US", std::chrono::microseconds(50));
}

ShmTransport::ShmTransport(int rank, int size, std::vector<int> localRanks,
                           std::shared_ptr<Mailbox> mailbox, uint64_t token, Options options)
    : rank_(rank), size_(size), localRanks_(std::move(localRanks)), localOf_(size, -1),
      mailbox_(std::move(mailbox)), options_(options),
      idleSpin_(idleSpinSetting()) {
  for (size_t i = 0; i < localRanks_.size(); ++i) {
    int g = localRanks_[i];
    if (g < 0 || g >= size || localOf_[g] >= 0)
      throw InvalidArgument("bad list of local ranks for the shared-memory transport");
    localOf_[g] = int(i);
  }
  if (localOf_[rank] < 0) throw InvalidArgument("this rank is not among the local ranks");
  // Under Yama's ptrace_scope 1 (Ubuntu's default) only an ancestor may
  // read or write this process's memory, so torchrun's sibling ranks could
  // not use cross-memory access with each other; open it to any process of
  // this user, as Open MPI does for the same copies.  Done before peers probe
  // it in attach(); without Yama the call fails harmlessly.
  // RINGFLOW_SHM_CMA=0 leaves it alone.
  if (options_.crossMemory) (void)prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
  options_.queueBytes = shm::roundUp(std::max<size_t>(options_.queueBytes, 4096), 4096);
  options_.slotBytes = shm::roundUp(std::max<size_t>(options_.slotBytes, 4096), 4096);
  shm::Layout layout{localRanks_.size(), options_.queueBytes, options_.slotBytes};
  mapBytes_ = layout.total();
  name_ = "/ringflow-" + std::to_string(token) + "-" + std::to_string(rank);
  int fd = shm_open(name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) throw Error(sysError("shm_open(" + name_ + ")"));
  if (ftruncate(fd, off_t(mapBytes_)) != 0) {
    std::string why = sysError("sizing shared-memory segment " + name_);
    ::close(fd);
    shm_unlink(name_.c_str());
    throw Error(why);
  }
  char* mine = nullptr;
  try {
    mine = mapSegment(fd, mapBytes_, name_);
  } catch (...) {
    ::close(fd);
    shm_unlink(name_.c_str());
    throw;
  }
  ::close(fd);
  auto* h = new (mine) shm::Header();
  h->localSize = uint32_t(localRanks_.size());
  h->localIndex = uint32_t(localOf_[rank]);
  h->pid = int32_t(getpid());
  h->selfAddr = reinterpret_cast<uint64_t>(h);
  h->queueBytes = options_.queueBytes;
  h->slotBytes = options_.slotBytes;
  for (size_t s = 0; s < localRanks_.size(); ++s)
    new (mine + layout.ctlOffset() + s * sizeof(shm::QueueCtl)) shm::QueueCtl();
  std::atomic_thread_fence(std::memory_order_release);
  h->magic = shm::kMagic;
  maps_.assign(localRanks_.size(), nullptr);
  maps_[localOf_[rank]] = mine;
}

ShmTransport::~ShmTransport() {
  close();
  unlink();
  for (char* m : maps_)
    if (m) munmap(m, mapBytes_);
}

void ShmTransport::attach(const std::vector<std::string>& names, double timeoutSec) {
  if (names.size() != localRanks_.size())
    throw InvalidArgument("expected one segment name per local rank");
  shm::Layout layout{localRanks_.size(), options_.queueBytes, options_.slotBytes};
  const int me = localOf_[rank_];
  for (size_t i = 0; i < names.size(); ++i) {
    if (int(i) == me) continue;
    int fd = shm_open(names[i].c_str(), O_RDWR, 0600);
    if (fd < 0) throw Error(sysError("shm_open(" + names[i] + ") of rank " +
                                     std::to_string(localRanks_[i])));
    struct stat st {};
    if (fstat(fd, &st) != 0 || size_t(st.st_size) != mapBytes_) {
      ::close(fd);
      throw Error("shared-memory segment " + names[i] + " has the wrong size (ranks disagree "
                  "on RINGFLOW_SHM_QUEUE_BYTES / RINGFLOW_SHM_SLOT_BYTES?)");
    }
    maps_[i] = mapSegment(fd, mapBytes_, names[i]);
    ::close(fd);
  }
  for (size_t i = 0; i < maps_.size(); ++i) {
    headers_.push_back(reinterpret_cast<shm::Header*>(maps_[i]));
    slots_.push_back(maps_[i] + layout.slotOffset());
    if (headers_.back()->magic != shm::kMagic)
      throw Error("shared-memory segment of rank " + std::to_string(localRanks_[i]) +
                  " is not initialised");
  }
  // Single-copy reads and writes every peer's memory: probe each one, by
  // reading its header's magic and writing the same value back.
  bool cma = options_.crossMemory;
  for (size_t i = 0; i < maps_.size() && cma; ++i) {
    if (int(i) == me) continue;
    uint64_t magic = 0;
    iovec local{&magic, sizeof(magic)};
    iovec remote{reinterpret_cast<void*>(headers_[i]->selfAddr), sizeof(magic)};
    ssize_t got = process_vm_readv(headers_[i]->pid, &local, 1, &remote, 1, 0);
    cma = got == ssize_t(sizeof(magic)) && magic == shm::kMagic &&
          process_vm_writev(headers_[i]->pid, &local, 1, &remote, 1, 0) == ssize_t(sizeof(magic));
    if (!cma) trace(rank_, sysError("process_vm_readv/writev of rank " +
                                    std::to_string(localRanks_[i]) +
                                    " unavailable; allreduce copies through shared memory"));
  }
  headers_[me]->cmaOk.store(cma ? 1 : 0, std::memory_order_release);
  for (size_t i = 0; i < maps_.size(); ++i) {
    if (int(i) == me) {
      peers_.emplace_back();
      continue;
    }
    auto l = std::make_unique<PeerQueues>();
    l->peer = localRanks_[i];
    l->peerHeader = headers_[i];
    l->out = reinterpret_cast<shm::QueueCtl*>(maps_[i] + layout.ctlOffset() +
                                              size_t(me) * sizeof(shm::QueueCtl));
    l->outData = maps_[i] + layout.queueOffset(size_t(me));
    l->in = reinterpret_cast<shm::QueueCtl*>(maps_[me] + layout.ctlOffset() +
                                             i * sizeof(shm::QueueCtl));
    l->inData = maps_[me] + layout.queueOffset(i);
    peers_.push_back(std::move(l));
  }
  (void)timeoutSec;
  thread_ = std::thread([this] { progressLoop(); });
}

void ShmTransport::unlink() {
  if (unlinked_) return;
  unlinked_ = true;
  shm_unlink(name_.c_str());
}

bool ShmTransport::crossMemoryEverywhere() {
  if (cmaEverywhere_ < 0) {
    cmaEverywhere_ = 1;
    for (auto* h : headers_)
      if (!h->cmaOk.load(std::memory_order_acquire)) cmaEverywhere_ = 0;
  }
  return cmaEverywhere_ == 1;
}

void ShmTransport::offerArena(uint64_t comm, const std::vector<int>& members) {
  if (int(members.size()) != size_ || localSize() != size_) return;
  uint64_t none = 0;
  arenaComm_.compare_exchange_strong(none, comm);
}

void ShmTransport::publishCurrent(const OpDesc& d) {
  shm::Header& h = *headers_[localOf_[rank_]];
  uint64_t v = h.currentVersion.value.load(std::memory_order_relaxed);
  h.currentVersion.value.store(v + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  h.current.set(d);
  h.currentVersion.value.store(v + 2, std::memory_order_release);
}

bool ShmTransport::readCurrent(int local, OpDesc& d) {
  shm::Header& h = *headers_[local];
  uint64_t v = h.currentVersion.value.load(std::memory_order_acquire);
  if (v == 0 || (v & 1)) return false;
  d = h.current.desc();
  std::atomic_thread_fence(std::memory_order_acquire);
  return h.currentVersion.value.load(std::memory_order_relaxed) == v;
}

void ShmTransport::drain(double timeoutSec) {
  Deadline until = Clock::now() + std::chrono::microseconds(int64_t(timeoutSec * 1e6));
  for (auto& l : peers_) {
    if (!l) continue;
    while (Clock::now() < until) {
      {
        std::lock_guard<std::mutex> lock(l->sendMu);
        if (l->dead || (l->pending.empty() &&
                        l->out->tail.load(std::memory_order_acquire) == l->outHead))
          break;
      }
      if (!mailbox_->peerGoneReason(l->peer).empty()) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
}

void ShmTransport::close() {
  if (closed_.exchange(true)) return;
  if (thread_.joinable()) {
    stop_ = true;
    shm::ring(headers_[localOf_[rank_]]->rxBell);
    thread_.join();
  }
  std::vector<RequestPtr> lost;
  for (auto& l : peers_) {
    if (!l) continue;
    std::lock_guard<std::mutex> lock(l->sendMu);
    l->dead = true;
    for (auto& item : l->pending) lost.push_back(item->req);
    l->pending.clear();
  }
  auto error = std::make_exception_ptr(PeerError("shared-memory transport closed"));
  for (auto& r : lost) r->fail(error);
}

}  // namespace ringflow
