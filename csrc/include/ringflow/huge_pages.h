// Transparent huge pages for the buffers the shm allreduce shares across
// processes (RINGFLOW_SHM_HUGEPAGES, on by default; 0 turns it off).
//
// Peers read and write a rank's buffer with process_vm_readv/writev, which
// pin and copy it page by page; with 4 KiB pages that, not memory
// bandwidth, bounds a large same-host allreduce (bench/RESULTS.md: 2 ranks,
// 16 MiB, ~4.9 ms on small pages, ~3.0 ms on huge ones).  Collapsing a
// buffer into huge pages costs a copy of it (~70 ms per 16 MiB here), so
// only a buffer offered again and again at the same address -- one the
// application keeps, as DDP keeps its gradient buckets -- is collapsed,
// once.  On by default because the buffers this pays for are the ones
// training keeps; an application that must not have its memory advised sets
// RINGFLOW_SHM_HUGEPAGES=0.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ringflow::shm {

struct HugePageCounts {
  uint64_t collapsed = 0;       // buffers collapsed into huge pages
  uint64_t collapsedBytes = 0;  // their whole 2 MiB pages
  uint64_t failed = 0;          // madvise refused (no THP, or no memory for it)
};

// RINGFLOW_SHM_HUGEPAGES, read once (a malformed value throws, naming it).
bool hugePagesEnabled();

// A buffer the shm allreduce is about to let its peers read.  The third
// time the same range is offered, its whole 2 MiB pages are advised
// (MADV_HUGEPAGE) and collapsed (MADV_COLLAPSE), once; its contents stay.
void offerBuffer(const void* p, size_t bytes);

// Advises and collapses the whole 2 MiB pages inside [p, p + bytes) now, if
// RINGFLOW_SHM_HUGEPAGES allows; counted like offerBuffer's.  Shared (memfd)
// memory collapses too, whatever the shmem THP setting, once its pages exist.
void collapseRange(const void* p, size_t bytes);

HugePageCounts hugePageCounts();

}  // namespace ringflow::shm
