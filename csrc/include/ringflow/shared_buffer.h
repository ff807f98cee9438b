// Buffers that same-host peers map straight into their address space: the
// zero-copy path of the shm allreduce (algo/shm_allreduce.cc).
//
// A plain buffer can only be reached by a peer through process_vm_readv/
// writev: the kernel pins its pages and copies each piece into or out of a
// bounce buffer, so a large allreduce moves each byte through one more copy
// than memory needs and runs at ~60% of the in-place memory bound here.  A
// SharedBuffer lives in a memfd; a peer opens it once through
// /proc/<pid>/fd/<fd> (the same ptrace permission cross-memory access needs),
// maps it, and from then on the owner of a block reduces its peers' data in
// place and stores the result straight into their pages.
//
// The file is `bytes` rounded up to a page, then one tag page naming the
// buffer's id, which a peer checks before it trusts a mapping.  Ids are
// random-based and never reused, so a peer's cached mapping can never be
// taken for a later buffer at the same fd.  Freeing a buffer truncates its
// file, which returns the memory at once, even while peers still map it;
// they drop such mappings the next time they look (peerShared).
//
// A process that forks shares these pages with its child instead of copying
// them, as with any MAP_SHARED memory; a child that frees its copy of the
// object only unmaps it (the truncation is the creating process's alone).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ringflow::shm {

// Where some data lies inside a live SharedBuffer of this process.
struct SharedPlace {
  uint64_t id = 0;      // 0: not in a shared buffer
  int32_t fd = -1;      // the memfd, as /proc/<pid>/fd/<fd> names it to peers
  uint64_t offset = 0;  // of the data from the buffer's start
};

class SharedBuffer {
 public:
  // `bytes` > 0.  Throws InvalidArgument for 0, Error if the memory cannot be had.
  explicit SharedBuffer(size_t bytes);
  ~SharedBuffer();
  SharedBuffer(const SharedBuffer&) = delete;
  SharedBuffer& operator=(const SharedBuffer&) = delete;

  char* data() const { return base_; }
  size_t bytes() const { return bytes_; }
  uint64_t id() const { return id_; }

 private:
  char* base_ = nullptr;
  size_t bytes_ = 0, mapped_ = 0;
  int fd_ = -1;
  uint64_t id_ = 0;
  int creator_ = 0;  // the pid that may truncate it
};

// The live SharedBuffer of this process holding [p, p + bytes), if any.
SharedPlace findShared(const void* p, size_t bytes);

// `bytes` at `place` inside process `pid`'s SharedBuffer, mapped into this
// process (the first time; cached after), or nullptr where it cannot be
// (then the caller goes through process_vm_readv/writev instead).
char* peerShared(int pid, const SharedPlace& place, size_t bytes);

struct SharedCounts {
  uint64_t live = 0;          // this process's SharedBuffers
  uint64_t liveBytes = 0;
  uint64_t peerMaps = 0;      // peers' buffers mapped here now
  uint64_t peerMapsOpened = 0;
  uint64_t peerMapsDropped = 0;  // freed by their owner (or the owner exited)
  uint64_t peerMapFailures = 0;  // could not be opened or did not match
};
SharedCounts sharedCounts();

}  // namespace ringflow::shm
