// The layout of one Inbox segment.  Shared between processes: plain data and
// address-free (always lock-free) atomics, no pointers.
//
//   SegmentHeader | Ring 0 | Ring 1 | ... (one per sender)
//   Ring = RingCtl | (SlotHead | payload) x slots
//
// Fields on one cache line have one writer: the producer (seq, step, count,
// pushes...) or the consumer (reading, taken, merged), so neither side's
// stores bounce the other's line.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "ringflow/malt.h"

namespace ringflow::malt {

constexpr uint64_t kMagic = 0x31544c414d'4652ull;  // "RFMALT1"
constexpr size_t kLine = 64;
// Set in a slot's seq while its producer writes it.
constexpr uint64_t kWriting = uint64_t(1) << 63;
constexpr int kMaxSlots = 64;  // Ring::reading is a bit per slot

static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared atomics must be lock-free");
static_assert(std::atomic<uint32_t>::is_always_lock_free, "shared atomics must be lock-free");

struct alignas(kLine) SegmentHeader {
  uint64_t magic = 0;
  uint64_t count = 0;  // floats per update
  uint32_t senders = 0;
  uint32_t slots = 0;
  uint32_t policy = 0;
  int32_t pid = 0;
  uint64_t slotStride = 0;
  uint64_t ringStride = 0;
  alignas(kLine) std::atomic<uint64_t> heartbeat{0};
  std::atomic<uint32_t> closed{0};
};

struct alignas(kLine) SlotHead {
  std::atomic<uint64_t> seq{0};  // push number published here; kWriting while written
  std::atomic<uint64_t> step{0};
  std::atomic<uint32_t> count{0};
  alignas(kLine) std::atomic<uint64_t> taken{0};  // the seq the consumer merged last
};

struct alignas(kLine) Ring {
  std::atomic<uint64_t> reading{0};  // bit s: the consumer is reading slot s
  std::atomic<uint64_t> merged{0};
  alignas(kLine) std::atomic<uint64_t> pushes{0};
  std::atomic<uint64_t> dropped{0};
  std::atomic<uint64_t> coalesced{0};

  SlotHead& head(const SegmentHeader& h, int s) {
    return *reinterpret_cast<SlotHead*>(reinterpret_cast<char*>(this) + sizeof(Ring) +
                                        size_t(s) * h.slotStride);
  }
  float* payload(const SegmentHeader& h, int s) {
    return reinterpret_cast<float*>(reinterpret_cast<char*>(&head(h, s)) + sizeof(SlotHead));
  }
};

inline size_t roundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

inline size_t slotStride(size_t count) { return sizeof(SlotHead) + roundUp(count * 4, kLine); }
inline size_t ringStride(size_t count, int slots) {
  return sizeof(Ring) + size_t(slots) * slotStride(count);
}
inline size_t segmentBytes(size_t count, int senders, int slots) {
  return roundUp(sizeof(SegmentHeader) + size_t(senders) * ringStride(count, slots), 4096);
}
inline Ring& ringAt(char* base, const SegmentHeader& h, int sender) {
  return *reinterpret_cast<Ring*>(base + sizeof(SegmentHeader) + size_t(sender) * h.ringStride);
}

}  // namespace ringflow::malt
