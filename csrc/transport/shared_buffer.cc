#include "ringflow/shared_buffer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "ringflow/types.h"
#include "ringflow/huge_pages.h"

namespace ringflow::shm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kPage = 4096;
// Mapped at a multiple of 2 MiB, here and in every peer, so huge pages of
// the file can be mapped whole on both sides.
constexpr size_t kAlign = size_t(2) << 20;
constexpr size_t kMaxBytes = size_t(1) << 46;
constexpr uint64_t kTagMagic = 0x3146'5542'5348'4652ull;  // "RFHSBUF1"
// How often a peer looks for mappings whose owner freed them (or exited).
constexpr auto kStaleCheckEvery = std::chrono::seconds(1);
constexpr size_t kUnmappableKept = 64;

// The page after the data: which buffer this file is.
struct Tag {
  uint64_t magic;
  uint64_t id;
  uint64_t bytes;
};

struct Owned {
  char* base;
  size_t bytes;
  int fd;
  uint64_t id;
};

struct PeerMap {
  int pid;
  uint64_t id;
  int ownerFd;  // the owner's fd number, to tell whether it still holds the file
  int fd;       // ours, opened through /proc
  ino_t ino;
  dev_t dev;
  char* base;
  size_t bytes;
};

struct Registry {
  std::mutex mu;
  std::vector<Owned> owned;
  std::vector<PeerMap> peers;
  std::vector<std::pair<int, uint64_t>> unmappable;  // (pid, id): fall back at once
  SharedCounts counts;
  Clock::time_point nextStaleCheck;
};

// Never destroyed: Python may free a buffer after static destructors ran.
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

uint64_t newId() {
  static std::atomic<uint64_t> next{(uint64_t(std::random_device{}()) << 32) |
                                    std::random_device{}()};
  uint64_t id;
  do id = next.fetch_add(1); while (id == 0);
  return id;
}

std::string errnoText(int err) { return std::strerror(err); }

// Maps `len` bytes of `fd` (shared, read-write, page tables filled now) at a
// 2 MiB boundary; nullptr with errno set on failure.
char* mapAligned(int fd, size_t len) {
  void* span = mmap(nullptr, len + kAlign, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                    -1, 0);
  if (span == MAP_FAILED) return nullptr;
  const uintptr_t lo = uintptr_t(span), at = (lo + kAlign - 1) & ~uintptr_t(kAlign - 1);
  void* m = mmap(reinterpret_cast<void*>(at), len, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd, 0);
  if (m == MAP_FAILED) {
    int err = errno;
    munmap(span, len + kAlign);
    errno = err;
    return nullptr;
  }
  if (at > lo) munmap(span, at - lo);
  const uintptr_t end = at + len, spanEnd = lo + len + kAlign;
  if (spanEnd > end) munmap(reinterpret_cast<void*>(end), spanEnd - end);
  return reinterpret_cast<char*>(at);
}

std::string procFd(int pid, int fd) {
  return "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
}

// Whether the owner still holds the file this mapping shows, untruncated.
bool stillHeld(const PeerMap& m) {
  struct stat theirs, ours;
  if (stat(procFd(m.pid, m.ownerFd).c_str(), &theirs) != 0) return false;
  if (theirs.st_ino != m.ino || theirs.st_dev != m.dev) return false;
  return fstat(m.fd, &ours) == 0 && ours.st_size > 0;
}

void dropStale(Registry& r) {
  for (size_t i = 0; i < r.peers.size();) {
    PeerMap& m = r.peers[i];
    if (stillHeld(m)) {
      ++i;
      continue;
    }
    munmap(m.base, m.bytes);
    close(m.fd);
    r.counts.peerMapsDropped++;
    r.peers[i] = r.peers.back();
    r.peers.pop_back();
  }
}

// Opens and maps peer `pid`'s buffer; false (said once on stderr) if it
// cannot, or if the file there is not the buffer announced.
bool openPeer(Registry& r, int pid, const SharedPlace& place, PeerMap& out) {
  std::string why;
  int fd = open(procFd(pid, place.fd).c_str(), O_RDWR | O_CLOEXEC);
  struct stat st;
  Tag tag{};
  if (fd < 0) {
    why = "open " + procFd(pid, place.fd) + ": " + errnoText(errno);
  } else if (fstat(fd, &st) != 0 || size_t(st.st_size) < 2 * kPage ||
             pread(fd, &tag, sizeof(tag), st.st_size - kPage) != ssize_t(sizeof(tag)) ||
             tag.magic != kTagMagic || tag.id != place.id) {
    why = "the file at " + procFd(pid, place.fd) + " is not the buffer announced";
  } else if (char* base = mapAligned(fd, size_t(st.st_size) - kPage)) {
    out = {pid, place.id, place.fd, fd, st.st_ino, st.st_dev, base, size_t(st.st_size) - kPage};
    return true;
  } else {
    why = "mmap: " + errnoText(errno);
  }
  if (fd >= 0) close(fd);
  if (r.counts.peerMapFailures++ == 0)
    std::fprintf(stderr,
                 "ringflow: cannot map process %d's shared buffer (%s); its allreduces copy "
                 "through process_vm_readv/writev instead\n",
                 pid, why.c_str());
  if (r.unmappable.size() == kUnmappableKept) r.unmappable.erase(r.unmappable.begin());
  r.unmappable.emplace_back(pid, place.id);
  return false;
}

}  // namespace

SharedBuffer::SharedBuffer(size_t bytes) : bytes_(bytes), id_(newId()), creator_(getpid()) {
  if (bytes == 0) throw InvalidArgument("a shared buffer needs at least one byte");
  if (bytes > kMaxBytes)
    throw InvalidArgument("a shared buffer of " + std::to_string(bytes) +
                          " bytes is larger than the 64 TiB limit");
  hugePagesEnabled();  // a malformed setting throws here, before anything is held
  mapped_ = (bytes + kPage - 1) / kPage * kPage;
  fd_ = memfd_create("ringflow-shared", MFD_CLOEXEC);
  if (fd_ < 0) throw Error("memfd_create for a shared buffer failed: " + errnoText(errno));
  // Reserved now, so a shortage fails here rather than as a SIGBUS mid-call.
  const Tag tag{kTagMagic, id_, bytes};
  int err = posix_fallocate(fd_, 0, off_t(mapped_ + kPage));
  if (err == 0 && pwrite(fd_, &tag, sizeof(tag), off_t(mapped_)) != ssize_t(sizeof(tag)))
    err = errno;
  if (err == 0 && !(base_ = mapAligned(fd_, mapped_))) err = errno;
  if (err != 0) {
    close(fd_);
    throw Error("cannot allocate a shared buffer of " + std::to_string(bytes) +
                " bytes: " + errnoText(err));
  }
  collapseRange(base_, mapped_);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.owned.push_back({base_, bytes_, fd_, id_});
  r.counts.live++;
  r.counts.liveBytes += bytes_;
}

SharedBuffer::~SharedBuffer() {
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    for (size_t i = 0; i < r.owned.size(); ++i)
      if (r.owned[i].id == id_) {
        r.owned[i] = r.owned.back();
        r.owned.pop_back();
        break;
      }
    r.counts.live--;
    r.counts.liveBytes -= bytes_;
  }
  munmap(base_, mapped_);
  // Returns the memory now, even while peers still map the file (were it
  // to fail, the memory would still go once they drop their mappings).  A
  // forked child's copy of this object must not take it from its parent.
  if (getpid() == creator_) (void)ftruncate(fd_, 0);
  close(fd_);
}

SharedPlace findShared(const void* p, size_t bytes) {
  const char* at = static_cast<const char*>(p);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const Owned& o : r.owned)
    if (at >= o.base && bytes <= o.bytes && at - o.base <= ptrdiff_t(o.bytes - bytes))
      return {o.id, o.fd, uint64_t(at - o.base)};
  return {};
}

char* peerShared(int pid, const SharedPlace& place, size_t bytes) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto find = [&]() -> PeerMap* {
    for (PeerMap& m : r.peers)
      if (m.pid == pid && m.id == place.id) return &m;
    return nullptr;
  };
  PeerMap* m = find();
  const auto now = Clock::now();
  if (!m || now >= r.nextStaleCheck) {
    dropStale(r);  // the announced buffer is live: its owner is in this call
    r.nextStaleCheck = now + kStaleCheckEvery;
    m = find();
  }
  if (!m) {
    for (const auto& u : r.unmappable)
      if (u.first == pid && u.second == place.id) return nullptr;
    PeerMap fresh;
    if (!openPeer(r, pid, place, fresh)) return nullptr;
    r.peers.push_back(fresh);
    r.counts.peerMapsOpened++;
    m = &r.peers.back();
  }
  if (place.offset > m->bytes || bytes > m->bytes - place.offset) return nullptr;
  return m->base + place.offset;
}

SharedCounts sharedCounts() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  SharedCounts c = r.counts;
  c.peerMaps = r.peers.size();
  return c;
}

}  // namespace ringflow::shm
