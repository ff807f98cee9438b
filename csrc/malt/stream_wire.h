// What MALT's cross-host streams carry (stream_out.cc -> stream_in.cc):
// a Hello, then frames of one update each.  The other direction carries
// single bytes: kBeat every kBeatEvery, kGoodbye when the receiver closes.
#pragma once

#include <chrono>
#include <cstdint>

namespace ringflow::malt {

constexpr uint32_t kStreamMagic = 0x4d414c54;  // "MALT"
constexpr char kBeat = 'b';
constexpr char kGoodbye = 'g';

struct Hello {
  uint32_t magic = kStreamMagic;
  uint32_t sender = 0;  // the ring it writes into: the sender's rank
  uint64_t token = 0;   // the group's, so a stray connection is refused
  uint64_t count = 0;   // floats per update
};

struct FrameHead {
  uint64_t step = 0;
  uint32_t updates = 0;  // how many pushes the payload sums (Coalesce), else 1
  uint32_t pad = 0;
};  // then count floats

inline int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace ringflow::malt
