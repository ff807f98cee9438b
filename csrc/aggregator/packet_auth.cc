// Packet integrity: the unkeyed checksum and the keyed four-lane SipHash-2-4
// MAC (siphash.h).  Both read the header (mac field zeroed) and then the
// payload as 64-bit little-endian words, so neither needs the two contiguous.
#include <cstdio>
#include <cstring>
#include <string>

#include "checksum.h"
#include "ringflow/packet.h"
#include "siphash.h"

namespace ringflow::agg {
namespace {

// The header with mac = 0, the form both digests cover.
PacketHeader unsignedCopy(const PacketHeader& h) {
  PacketHeader c = h;
  c.mac = 0;
  return c;
}

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

std::string errorText(const PacketHeader& e) {
  auto code = ErrorCode(e.count);
  std::string text = errorCodeName(code);
  if (code != ErrorCode::TooManyJobs) return text;
  // The aggregator says what its limits are, so the message can name them.
  char idle[32];
  std::snprintf(idle, sizeof idle, "%g", double(e.total) / 1000);
  return text + " (--jobs " + std::to_string(e.offset) +
         "); a job's entry frees when every worker of it has shut down its communicator (a "
         "clean exit or destroy_process_group), or after " + idle +
         " s without packets (--job-idle-s): wait, or restart the aggregator with a larger "
         "--jobs or a smaller --job-idle-s";
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
  lanes_ = std::make_shared<SipHashX4>(k0_, k1_);
}

uint64_t PacketAuth::digest(const PacketHeader& h, const void* payload, size_t bytes) const {
  if (!keyed_) {
    Checksum c = headerChecksum(h);
    c.update(payload, bytes);
    return c.finish();
  }
  PacketHeader c = unsignedCopy(h);
  return lanes_->mac(&c, sizeof c, payload, bytes);  // the header is 64 bytes: two blocks
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
