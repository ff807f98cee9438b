// The wire format of gradient packet aggregation.
//
// Workers cut a float tensor into chunks of at most k elements, quantise
// each chunk to int32 fixed point (kernels/quantize_fixed.cc) and send it
// as one UDP datagram: a 64-byte PacketHeader followed by `count` int32
// values.  The aggregator adds the payloads of every worker for the same
// (job, slot, round) and, once all `workers` have contributed, sends the
// sum back to each of them as a Result packet of the same shape.
//
// Slots and rounds.  A job owns a pool of slots; a worker keeps at most one
// packet outstanding per slot, so the pool is the flow-control window (a
// result frees its slot for the worker's next chunk).  Every use of a slot
// is a round, numbered from 0 per job and slot.  Each slot has two sets
// (the shadow copies of SwitchML): round r lives in set r & 1, so the
// previous round's result survives while the next round fills the other
// set, and a worker whose result was lost retransmits and is answered from
// the shadow copy without its payload being added again.  The set bit is
// also carried in the top bit of `slot`; the full round number lets the
// aggregator tell a stale or duplicated packet of an older round from a new
// one however late the network delivers it.
//
// Exponents.  All workers must quantise a chunk with the same exponent e
// (2^e >= max|x| over every worker's chunk).  As in SwitchML, a packet
// carries in `next_exponent` the sender's own exponent for the next chunk
// this slot will carry; the aggregator keeps the maximum and returns it in
// the result, which is exactly when the workers need it.  The first round
// of a slot in a call carries no payload, only next_exponent.
// kNonFiniteExponent marks a chunk holding NaN or inf: its result comes
// back all NaN on every worker.
//
// Integrity.  `mac` covers the header (with mac = 0) and the payload.  It is
// a keyed MAC of four SipHash-2-4 lanes (csrc/aggregator/siphash.h defines
// it exactly) when the job has a token (flag kFlagKeyed; required
// whenever the aggregator listens beyond loopback), else a fast 64-bit
// Fletcher-style checksum that catches truncation and corruption but
// authenticates nothing.
//
// Goodbye.  When a worker's communicator shuts down, its client sends a
// Goodbye (header only, count 0, signed like a Data packet) a few times,
// since UDP may lose one and nothing answers it.  Once every worker of a
// job has said goodbye, the aggregator frees the job's entry at once
// instead of after --job-idle-s of silence, and drops (as stale) packets
// that still arrive for that job id.  A Goodbye never opens a job.
//
// Rejected notices.  A MAC is only worth anything if forged packets are
// dropped, but a worker whose token differs from the aggregator's would
// then only see silence until its timeout.  So the aggregator answers a
// well-formed packet whose MAC (or keyed-ness) is wrong with a Rejected
// notice: the packet's own header with type Rejected, sender kNoWorker,
// count 0, flags 0 and mac 0.  It cannot be authenticated (the worker's
// key is not the aggregator's), so a worker may let notices only fail a
// call sooner -- after a run of them with no authentic packet from that
// aggregator in between (the client: 3 notices over at least 500 ms), it
// fails with an error naming RINGFLOW_AGG_TOKEN -- never change a result.
// A notice is never longer than the packet that caused it (the header
// alone), and the aggregator sends at most 4 a second to one source address
// and 256 a second in all (NoticeLimiter, aggregator/job_table.h), so it
// cannot be used as an amplifier.  Malformed datagrams get no notice.
//
// Goodbye and Rejected extend version 1 compatibly: an aggregator that
// predates them counts a Goodbye as malformed (the entry then frees after
// --job-idle-s, as before), and a worker that predates them ignores
// notices (its call then ends at its timeout, as before).
//
// Mismatched calls.  Every packet names the call and the tensor's size, and
// the aggregator checks that all contributions to a round agree; if not it
// sends an Inconsistent error to every worker of the job, so ranks that
// called with different tensors fail instead of mixing their data.
//
// Byte order: little-endian throughout (every platform we build for).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace ringflow::agg {

constexpr uint32_t kPacketMagic = 0x47414652;  // "RFAG" as read little-endian
constexpr uint8_t kPacketVersion = 1;
constexpr uint32_t kShadowBit = 0x80000000u;   // in PacketHeader::slot
constexpr uint16_t kNoWorker = 0xffff;         // sender of packets from the aggregator
constexpr int16_t kNoExponent = INT16_MIN;     // next_exponent when no next chunk
constexpr int16_t kNonFiniteExponent = INT16_MAX;

// The largest UDP payload over IPv4, and the default k: one packet fills a
// 64 KiB loopback datagram (MTU 65536) without IP fragmentation.
constexpr size_t kMaxDatagram = 65507;
constexpr uint32_t kDefaultPacketElems = 16352;
constexpr uint32_t kDefaultSlots = 32;

enum class PacketType : uint8_t {
  Data = 1,    // worker -> aggregator: a contribution
  Result = 2,  // aggregator -> worker: the sum of every contribution
  Error = 3,   // aggregator -> worker: the packet was refused; count holds the ErrorCode
  Goodbye = 4,   // worker -> aggregator: this worker's communicator shut down
  Rejected = 5,  // aggregator -> worker, unauthenticated: the packet's MAC failed
};

enum PacketFlag : uint16_t {
  kFlagKeyed = 1,  // mac is a keyed MAC (the job has a token), not a checksum
};

// Why the aggregator refused a well-formed, authentic packet.
enum class ErrorCode : uint32_t {
  WrongWorkers = 1,     // the job was opened with another worker count
  SlotOutOfRange = 2,   // slot index >= the aggregator's slots per job
  TooManyJobs = 3,      // every job entry is taken; offset holds the aggregator's
                        // --jobs and total its --job-idle-s in milliseconds
  TooManyElements = 4,  // count > the aggregator's elements per packet
  Inconsistent = 5,     // workers disagree on a round's call, size, offset or exponent
};
const char* errorCodeName(ErrorCode code);

#pragma pack(push, 1)
struct PacketHeader {
  uint32_t magic;         // kPacketMagic
  uint8_t version;        // kPacketVersion
  uint8_t type;           // PacketType
  uint16_t flags;         // PacketFlag bits
  uint32_t job;           // job id: one communicator's traffic
  uint32_t slot;          // slot index | kShadowBit when round is odd
  uint32_t round;         // uses of this slot in the job before this one
  uint32_t call;          // the communicator's call number (low 32 bits)
  uint16_t sender;        // worker rank (kNoWorker from the aggregator)
  uint16_t workers;       // workers in the job
  uint32_t count;         // int32 payload values (Error: the ErrorCode;
                          // Goodbye and Rejected: 0)
  uint64_t offset;        // first element of the chunk in the tensor
  uint64_t total;         // elements in the whole tensor
  int16_t exponent;       // the block exponent the payload is scaled by
  int16_t nextExponent;   // Data: sender's exponent for the slot's next chunk;
                          // Result: the maximum over all workers
  uint32_t reserved;      // 0
  uint64_t mac;           // checksum or keyed MAC, see above
};
#pragma pack(pop)
static_assert(sizeof(PacketHeader) == 64, "the wire header is 64 bytes");
// The most int32 values one datagram can carry after the header.
constexpr uint32_t kMaxPacketElems = (kMaxDatagram - sizeof(PacketHeader)) / sizeof(int32_t);

// What an Error packet says, with what its fields add (TooManyJobs: the
// aggregator's limits and the flags that change them).
std::string errorText(const PacketHeader& error);

inline uint32_t slotIndex(const PacketHeader& h) { return h.slot & ~kShadowBit; }
inline uint32_t slotField(uint32_t index, uint32_t round) {
  return index | ((round & 1u) ? kShadowBit : 0u);
}
inline size_t payloadBytes(uint32_t count) { return size_t(count) * sizeof(int32_t); }

class SipHashX4;

// Signs and checks packets: four-lane SipHash-2-4 keyed from the token when
// there is one, else the checksum.  The token never travels.
class PacketAuth {
 public:
  explicit PacketAuth(const std::string& token = "");
  bool keyed() const { return keyed_; }
  // Fills h.flags' kFlagKeyed and h.mac over h and `payload`.
  void sign(PacketHeader& h, const void* payload, size_t payloadBytes) const;
  // True when h.mac matches and the packet is keyed exactly when we are.
  bool verify(const PacketHeader& h, const void* payload, size_t payloadBytes) const;
  // A fingerprint of the key, so that workers can check they share a token
  // without revealing it.
  uint64_t fingerprint() const;

 private:
  uint64_t digest(const PacketHeader& h, const void* payload, size_t bytes) const;
  bool keyed_;
  uint64_t k0_ = 0, k1_ = 0;
  std::shared_ptr<const SipHashX4> lanes_;  // the keyed MAC, when keyed_
};

// The unkeyed checksum of `bytes` bytes, exposed for tests of the format.
uint64_t packetChecksum(const void* header, size_t headerBytes, const void* payload,
                        size_t payloadBytes);

}  // namespace ringflow::agg
