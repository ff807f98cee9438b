#include "siphash.h"

#include "ringflow/simd_variants.h"

namespace ringflow::agg {
namespace {

// Four lanes in one vector of four 64-bit words: AVX2 holds it in one
// register, baseline x86-64 in two.
using u64x4 = uint64_t __attribute__((vector_size(32)));

struct Lanes {
  u64x4 v0, v1, v2, v3;
};

using u32x8 = uint32_t __attribute__((vector_size(32)));
using u8x32 = uint8_t __attribute__((vector_size(32)));

// In place, so no vector crosses a function boundary (whose ABI would
// differ between the AVX2 and baseline builds).  Without AVX-512 a rotate
// costs two shifts and an or; the byte-multiple ones are one shuffle.
#define RINGFLOW_ROTL4(x, b) ((x) = ((x) << (b)) | ((x) >> (64 - (b))))
#define RINGFLOW_ROTL4_32(x) \
  ((x) = reinterpret_cast<u64x4>(__builtin_shuffle(reinterpret_cast<u32x8>(x), \
                                                   u32x8{1, 0, 3, 2, 5, 4, 7, 6})))
#define RINGFLOW_ROTL4_16(x)                                                          \
  ((x) = reinterpret_cast<u64x4>(__builtin_shuffle(                                  \
       reinterpret_cast<u8x32>(x),                                                   \
       u8x32{6, 7, 0, 1, 2, 3, 4, 5, 14, 15, 8, 9, 10, 11, 12, 13,                   \
             22, 23, 16, 17, 18, 19, 20, 21, 30, 31, 24, 25, 26, 27, 28, 29})))

RINGFLOW_INLINE void round4(Lanes& s) {
  s.v0 += s.v1; RINGFLOW_ROTL4(s.v1, 13); s.v1 ^= s.v0; RINGFLOW_ROTL4_32(s.v0);
  s.v2 += s.v3; RINGFLOW_ROTL4_16(s.v3); s.v3 ^= s.v2;
  s.v0 += s.v3; RINGFLOW_ROTL4(s.v3, 21); s.v3 ^= s.v0;
  s.v2 += s.v1; RINGFLOW_ROTL4(s.v1, 17); s.v1 ^= s.v2; RINGFLOW_ROTL4_32(s.v2);
}

// Absorbs `blocks` 32-byte blocks: word j of each block into lane j.
RINGFLOW_INLINE void absorbBody(Lanes& state, const unsigned char* p, size_t blocks) {
  Lanes s = state;
  for (size_t i = 0; i < blocks; ++i, p += 32) {
    u64x4 m;
    std::memcpy(&m, p, 32);
    s.v3 ^= m;
    round4(s);
    round4(s);
    s.v0 ^= m;
  }
  state = s;
}
RINGFLOW_SIMD_VARIANTS(void, absorb, (Lanes& state, const unsigned char* p, size_t blocks),
                       (state, p, blocks))

}  // namespace

SipHashX4::SipHashX4(uint64_t k0, uint64_t k1) : k0_(k0), k1_(k1) {
  for (int j = 0; j < 4; ++j) {
    const unsigned char label[6] = {'l', 'a', 'n', 'e', static_cast<unsigned char>(j), 0};
    unsigned char label1[6];
    std::memcpy(label1, label, 6);
    label1[5] = 1;
    SipHash lane(SipHash(k0, k1).hash(label, 6), SipHash(k0, k1).hash(label1, 6));
    init_[0][j] = lane.v0;
    init_[1][j] = lane.v1;
    init_[2][j] = lane.v2;
    init_[3][j] = lane.v3;
  }
}

uint64_t SipHashX4::mac(const void* head, size_t headBytes, const void* body,
                        size_t bodyBytes) const {
  Lanes s;
  std::memcpy(&s.v0, init_[0], 32);
  std::memcpy(&s.v1, init_[1], 32);
  std::memcpy(&s.v2, init_[2], 32);
  std::memcpy(&s.v3, init_[3], 32);
  absorb(s, static_cast<const unsigned char*>(head), headBytes / 32);
  auto* p = static_cast<const unsigned char*>(body);
  absorb(s, p, bodyBytes / 32);
  const size_t done = bodyBytes / 32 * 32;
  p += done;

  // The last 0-31 bytes go word by word to lanes 0, 1, 2, 3 in turn.
  SipHash lane[4] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
  for (int j = 0; j < 4; ++j) {
    lane[j].v0 = s.v0[j];
    lane[j].v1 = s.v1[j];
    lane[j].v2 = s.v2[j];
    lane[j].v3 = s.v3[j];
  }
  size_t rest = bodyBytes - done;
  int j = 0;
  for (; rest >= 8; p += 8, rest -= 8, ++j) lane[j].word(load64(p));
  if (rest) {
    unsigned char last[8] = {0};
    std::memcpy(last, p, rest);
    lane[j].word(load64(last));
  }
  // Lane j's message length: its share of all the words (the padded tail one included).
  const size_t words = headBytes / 8 + (bodyBytes + 7) / 8;
  uint64_t out[5];
  for (int l = 0; l < 4; ++l) {
    lane[l].bytes = 8 * (words / 4 + (size_t(l) < words % 4 ? 1 : 0));
    out[l] = lane[l].finish(nullptr, 0);
  }
  out[4] = uint64_t(headBytes + bodyBytes);
  return SipHash(k0_, k1_).hash(out, sizeof out);
}

}  // namespace ringflow::agg
