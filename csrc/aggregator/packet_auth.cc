// Packet integrity: the unkeyed checksum and the keyed SipHash-2-4 MAC.
// Both stream over the header (mac field zeroed) and then the payload, as
// 64-bit little-endian words, so neither needs the two contiguous.
#include <cstring>

#include "ringflow/packet.h"

namespace ringflow::agg {
namespace {

inline uint64_t load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

// The header with mac = 0, the form both digests cover.
PacketHeader unsignedCopy(const PacketHeader& h) {
  PacketHeader c = h;
  c.mac = 0;
  return c;
}

// Fletcher-style: four lanes (word i goes to lane i % 4), each keeping a
// running sum a and a sum of running sums b, so both the value and the
// position of every word count.  Four independent lanes vectorise.
struct Checksum {
  uint64_t a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
  uint64_t words = 0, bytes = 0;

  void word(uint64_t w) {
    int l = int(words++ & 3);
    a[l] += w;
    b[l] += a[l];
  }
  void update(const void* data, size_t n) {
    auto* p = static_cast<const unsigned char*>(data);
    bytes += n;
    while (n >= 8 && (words & 3)) word(load64(p)), p += 8, n -= 8;
    for (; n >= 32; p += 32, n -= 32) {
      for (int l = 0; l < 4; ++l) {
        a[l] += load64(p + 8 * l);
        b[l] += a[l];
      }
      words += 4;
    }
    for (; n >= 8; p += 8, n -= 8) word(load64(p));
    if (n) {  // the tail, zero-padded to a word; only ever at the very end
      unsigned char last[8] = {0};
      std::memcpy(last, p, n);
      word(load64(last));
    }
  }
  uint64_t finish() const {
    constexpr uint64_t k1 = 0x9e3779b97f4a7c15ull, k2 = 0xbf58476d1ce4e5b9ull;
    uint64_t h = 0;
    for (int l = 0; l < 4; ++l) {
      h = (h ^ a[l]) * k1;
      h = (h ^ b[l]) * k1;
    }
    h ^= bytes;
    h ^= h >> 33;
    h *= k2;
    return h ^ (h >> 29);
  }
};

// SipHash-2-4 over a stream whose pieces are whole words except the last.
struct SipHash {
  uint64_t v0, v1, v2, v3, bytes = 0;
  SipHash(uint64_t k0, uint64_t k1)
      : v0(k0 ^ 0x736f6d6570736575ull), v1(k1 ^ 0x646f72616e646f6dull),
        v2(k0 ^ 0x6c7967656e657261ull), v3(k1 ^ 0x7465646279746573ull) {}

  void round() {
    v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32);
    v2 += v3; v3 = rotl(v3, 16); v3 ^= v2;
    v0 += v3; v3 = rotl(v3, 21); v3 ^= v0;
    v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32);
  }
  void word(uint64_t m) {
    v3 ^= m;
    round();
    round();
    v0 ^= m;
  }
  uint64_t finish(const unsigned char* tail, size_t n) {
    unsigned char last[8] = {0};
    std::memcpy(last, tail, n);
    uint64_t b = load64(last) | ((bytes + n) << 56);
    word(b);
    v2 ^= 0xff;
    for (int i = 0; i < 4; ++i) round();
    return v0 ^ v1 ^ v2 ^ v3;
  }
  // Whole words of `data`; returns where the partial tail starts.
  const unsigned char* update(const void* data, size_t n) {
    auto* p = static_cast<const unsigned char*>(data);
    for (; n >= 8; p += 8, n -= 8, bytes += 8) word(load64(p));
    return p;
  }
  uint64_t hash(const void* data, size_t n) {
    const unsigned char* tail = update(data, n);
    return finish(tail, n % 8);
  }
};

}  // namespace

const char* errorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::WrongWorkers: return "the job is open with another worker count";
    case ErrorCode::SlotOutOfRange: return "slot index beyond the aggregator's slots per job";
    case ErrorCode::TooManyJobs: return "the aggregator serves its maximum number of jobs";
    case ErrorCode::TooManyElements: return "more elements per packet than the aggregator accepts";
    case ErrorCode::Inconsistent: return "workers sent different calls, tensor sizes, offsets or "
                                         "exponents for one round (mismatched allreduce calls?)";
  }
  return "unknown error";
}

uint64_t packetChecksum(const void* header, size_t headerBytes, const void* payload,
                        size_t payloadBytes) {
  Checksum c;
  c.update(header, headerBytes);
  c.update(payload, payloadBytes);
  return c.finish();
}

PacketAuth::PacketAuth(const std::string& token) : keyed_(!token.empty()) {
  if (!keyed_) return;
  k0_ = SipHash(0x72696e67666c6f77ull, 0x6b65792d30000000ull).hash(token.data(), token.size());
  k1_ = SipHash(0x72696e67666c6f77ull, 0x6b65792d31000000ull).hash(token.data(), token.size());
}

uint64_t PacketAuth::digest(const PacketHeader& h, const void* payload, size_t bytes) const {
  PacketHeader c = unsignedCopy(h);
  if (!keyed_) return packetChecksum(&c, sizeof c, payload, bytes);
  SipHash s(k0_, k1_);
  s.update(&c, sizeof c);  // 64 bytes: whole words
  const unsigned char* tail = s.update(payload, bytes);
  return s.finish(tail, bytes % 8);
}

void PacketAuth::sign(PacketHeader& h, const void* payload, size_t bytes) const {
  h.flags = uint16_t(keyed_ ? (h.flags | kFlagKeyed) : (h.flags & ~kFlagKeyed));
  h.mac = digest(h, payload, bytes);
}

bool PacketAuth::verify(const PacketHeader& h, const void* payload, size_t bytes) const {
  if (bool(h.flags & kFlagKeyed) != keyed_) return false;
  return h.mac == digest(h, payload, bytes);
}

uint64_t PacketAuth::fingerprint() const {
  if (!keyed_) return 0;
  static const char kLabel[] = "ringflow-token-fingerprint";
  return SipHash(k0_, k1_).hash(kLabel, sizeof kLabel - 1);
}

}  // namespace ringflow::agg
