#include "checksum.h"

#include <cstring>

#include "ringflow/simd_variants.h"
#include "siphash.h"  // load64

namespace ringflow::agg {
namespace {

// Vectors stay inside always-inlined code: none crosses a call, whose ABI
// would differ between the AVX2 and baseline builds.
typedef uint64_t u64x4 __attribute__((vector_size(32)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint32_t __attribute__((may_alias, aligned(1))) Word32;

// A checksum's lanes as vectors, for the loops below; whole 32-byte blocks
// only, so the lanes line up with the vector's.
struct Lanes {
  u64x4 a, b;
  uint64_t blocks = 0;
  // Whole-vector copies: filled lane by lane, the vectors stayed on the
  // stack in the loops, a store and reload per block on the fold's
  // dependency chain (about 5x slower).
  RINGFLOW_INLINE explicit Lanes(const Checksum& c) {
    std::memcpy(&a, c.a, sizeof a);
    std::memcpy(&b, c.b, sizeof b);
  }
  RINGFLOW_INLINE void fold(const void* block) {
    u64x4 w;
    std::memcpy(&w, block, 32);
    a += w;
    b += a;
    ++blocks;
  }
  RINGFLOW_INLINE void into(Checksum& c) const {
    std::memcpy(c.a, &a, sizeof a);
    std::memcpy(c.b, &b, sizeof b);
    c.words += 4 * blocks;
    c.bytes += 32 * blocks;
  }
};

// What the vector loops leave, word by word: at most 7 int32, or all of
// them when the checksum is not at a lane boundary (never, after a header).
void tail(int32_t* dst, const unsigned char* src, size_t n, Checksum& in, Checksum* out, bool add) {
  auto* d = reinterpret_cast<uint32_t*>(dst);
  auto* s = reinterpret_cast<const Word32*>(src);
  for (size_t i = 0; i < n; ++i) d[i] = add ? d[i] + s[i] : s[i];
  in.update(src, n * 4);
  if (out) out->update(dst, n * 4);
}

RINGFLOW_INLINE void foldBlocksBody(Checksum& c, const unsigned char* p, size_t blocks) {
  Lanes l(c);
  for (size_t i = 0; i < blocks; ++i) l.fold(p + 32 * i);
  l.into(c);
}
RINGFLOW_SIMD_VARIANTS(void, foldBlocks, (Checksum& c, const unsigned char* p, size_t blocks),
                       (c, p, blocks))

}  // namespace

void Checksum::update(const void* data, size_t n) {
  auto* p = static_cast<const unsigned char*>(data);
  auto word = [this](uint64_t w) {
    int l = int(words++ & 3);
    a[l] += w;
    b[l] += a[l];
  };
  while (n >= 8 && (words & 3)) word(load64(p)), p += 8, n -= 8, bytes += 8;
  if (n >= 32 && bytes % 8 == 0) {
    size_t whole = n & ~size_t(31);
    foldBlocks(*this, p, whole / 32);
    p += whole, n -= whole;
  }
  bytes += n;
  for (; n >= 8; p += 8, n -= 8) word(load64(p));
  if (n) {  // the tail, zero-padded to a word; only ever at the very end
    unsigned char last[8] = {0};
    std::memcpy(last, p, n);
    word(load64(last));
  }
}

uint64_t Checksum::finish() const {
  constexpr uint64_t k1 = 0x9e3779b97f4a7c15ull, k2 = 0xbf58476d1ce4e5b9ull;
  // The shift before each multiply carries high bits down: a multiply alone
  // moves differences only upwards, so a flip of a word's top bit (a's top
  // bit, and b's too when an odd number of words follow in its lane) used to
  // cancel out, and 1.6% of single-bit errors went unseen.
  auto mix = [](uint64_t x) { return (x ^ (x >> 32)) * k1; };
  uint64_t h = 0;
  for (int l = 0; l < 4; ++l) {
    h = mix(h ^ a[l]);
    h = mix(h ^ b[l]);
  }
  h ^= bytes;
  h ^= h >> 33;
  h *= k2;
  return h ^ (h >> 29);
}

Checksum headerChecksum(const PacketHeader& h) {
  PacketHeader c = h;
  c.mac = 0;
  Checksum s;
  s.update(&c, sizeof c);
  return s;
}

RINGFLOW_INLINE void copyChecksummedBody(int32_t* dst, const void* src, size_t n, Checksum& in) {
  auto* s = static_cast<const unsigned char*>(src);
  size_t i = 0;
  if (in.aligned()) {
    Lanes l(in);
    for (; i + 8 <= n; i += 8) {
      l.fold(s + 4 * i);
      std::memcpy(dst + i, s + 4 * i, 32);
    }
    l.into(in);
  }
  tail(dst + i, s + 4 * i, n - i, in, nullptr, false);
}
RINGFLOW_SIMD_VARIANTS(void, copyChecksummed, (int32_t* dst, const void* src, size_t n, Checksum& in),
                       (dst, src, n, in))

// The add loop, built once with and once without the second checksum (a
// branch in the loop would keep it from vectorising cleanly).
template <bool kOut>
RINGFLOW_INLINE size_t addBlocks(int32_t* dst, const unsigned char* s, size_t n, Checksum& in,
                                 Checksum* out) {
  Lanes li(in), lo(kOut ? *out : in);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    u32x8 sum, add;
    std::memcpy(&sum, dst + i, 32);
    std::memcpy(&add, s + 4 * i, 32);
    sum += add;
    std::memcpy(dst + i, &sum, 32);
    li.fold(s + 4 * i);
    if constexpr (kOut) lo.fold(&sum);
  }
  li.into(in);
  if constexpr (kOut) lo.into(*out);
  return i;
}

RINGFLOW_INLINE void addChecksummedBody(int32_t* dst, const void* src, size_t n, Checksum& in,
                                        Checksum* out) {
  auto* s = static_cast<const unsigned char*>(src);
  size_t i = 0;
  if (in.aligned() && (!out || out->aligned()))
    i = out ? addBlocks<true>(dst, s, n, in, out) : addBlocks<false>(dst, s, n, in, out);
  tail(dst + i, s + 4 * i, n - i, in, out, true);
}
RINGFLOW_SIMD_VARIANTS(void, addChecksummed,
                       (int32_t* dst, const void* src, size_t n, Checksum& in, Checksum* out),
                       (dst, src, n, in, out))

RINGFLOW_INLINE void subtractBody(int32_t* dst, const void* src, size_t n) {
  auto* d = reinterpret_cast<uint32_t*>(dst);
  auto* s = static_cast<const Word32*>(src);
  for (size_t i = 0; i < n; ++i) d[i] -= s[i];
}
RINGFLOW_SIMD_VARIANTS(void, subtract, (int32_t* dst, const void* src, size_t n), (dst, src, n))

}  // namespace ringflow::agg
