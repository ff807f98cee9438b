// The aggregator service, its counters, the workers' traffic, and the wire
// format's encoder/decoder (for tests and tools that speak the protocol).
#include <pybind11/stl.h>

#include <cstring>

#include "bind.h"
#include "ringflow/aggregator.h"
#include "ringflow/aggregator_client.h"
#include "ringflow/packet.h"

namespace py = pybind11;

namespace ringflow::bind {
namespace {

using agg::PacketHeader;

py::dict statsDict(const agg::AggregatorStats& s) {
  py::dict d;
  d["packets_received"] = s.packetsReceived, d["bytes_received"] = s.bytesReceived;
  d["packets_sent"] = s.packetsSent, d["bytes_sent"] = s.bytesSent;
  d["contributions"] = s.contributions, d["results"] = s.results, d["elements"] = s.elements;
  d["duplicates"] = s.duplicates, d["shadow_answers"] = s.shadowAnswers, d["stale"] = s.stale;
  d["malformed"] = s.malformed, d["bad_mac"] = s.badMac, d["refused"] = s.refused;
  d["rejected_notices"] = s.rejectedNotices, d["jobs_closed"] = s.jobsClosed;
  d["jobs_opened"] = s.jobsOpened, d["jobs_evicted"] = s.jobsEvicted;
  d["jobs_active"] = s.jobsActive, d["memory_bytes"] = s.memoryBytes;
  d["udp_path"] = s.udpPath, d["gso"] = s.gso, d["gro"] = s.gro;
  d["gso_max_segment"] = s.gsoMaxSegment;
  d["send_calls"] = s.sendCalls, d["recv_calls"] = s.recvCalls;
  d["gso_sends"] = s.gsoSends, d["gso_datagrams"] = s.gsoDatagrams, d["gso_bytes"] = s.gsoBytes;
  d["gro_receives"] = s.groReceives, d["gro_datagrams"] = s.groDatagrams;
  return d;
}

template <class T>
T field(const py::dict& d, const char* name, T fallback) {
  return d.contains(name) ? d[name].cast<T>() : fallback;
}

// A packet from fields (missing ones take Data-packet defaults), signed
// unless `sign` is false.
py::bytes encodePacket(const py::dict& f, const py::bytes& payload, const std::string& token,
                       bool sign) {
  std::string body = payload;
  PacketHeader h{};
  h.magic = field<uint32_t>(f, "magic", agg::kPacketMagic);
  h.version = field<uint8_t>(f, "version", agg::kPacketVersion);
  h.type = field<uint8_t>(f, "type", uint8_t(agg::PacketType::Data));
  h.flags = field<uint16_t>(f, "flags", 0);
  h.job = field<uint32_t>(f, "job", 0);
  h.round = field<uint32_t>(f, "round", 0);
  h.slot = field<uint32_t>(f, "slot", agg::slotField(field<uint32_t>(f, "slot_index", 0), h.round));
  h.call = field<uint32_t>(f, "call", 0);
  h.sender = field<uint16_t>(f, "sender", 0);
  h.workers = field<uint16_t>(f, "workers", 1);
  h.count = field<uint32_t>(f, "count", uint32_t(body.size() / 4));
  h.offset = field<uint64_t>(f, "offset", 0);
  h.total = field<uint64_t>(f, "total", h.count);
  h.exponent = field<int16_t>(f, "exponent", 0);
  h.nextExponent = field<int16_t>(f, "next_exponent", agg::kNoExponent);
  h.reserved = field<uint32_t>(f, "reserved", 0);
  h.mac = field<uint64_t>(f, "mac", 0);
  if (sign) agg::PacketAuth(token).sign(h, body.data(), body.size());
  std::string out(sizeof h + body.size(), '\0');
  std::memcpy(out.data(), &h, sizeof h);
  std::memcpy(out.data() + sizeof h, body.data(), body.size());
  return py::bytes(out);
}

py::dict decodePacket(const py::bytes& packet, const std::string& token) {
  std::string p = packet;
  if (p.size() < sizeof(PacketHeader))
    throw InvalidArgument("packet of " + std::to_string(p.size()) + " bytes is shorter than a header");
  PacketHeader h;
  std::memcpy(&h, p.data(), sizeof h);
  py::dict d;
  d["magic"] = h.magic, d["version"] = h.version, d["type"] = h.type, d["flags"] = h.flags;
  d["job"] = h.job, d["slot"] = h.slot, d["slot_index"] = agg::slotIndex(h), d["round"] = h.round;
  d["call"] = h.call, d["sender"] = h.sender, d["workers"] = h.workers, d["count"] = h.count;
  d["offset"] = h.offset, d["total"] = h.total, d["exponent"] = h.exponent;
  d["next_exponent"] = h.nextExponent, d["reserved"] = h.reserved, d["mac"] = h.mac;
  const char* payload = p.data() + sizeof h;
  size_t bytes = p.size() - sizeof h;
  d["payload"] = py::bytes(payload, bytes);
  d["authentic"] = agg::PacketAuth(token).verify(h, payload, bytes);
  if (h.type == uint8_t(agg::PacketType::Error))
    d["error"] = agg::errorText(h);
  return d;
}

}  // namespace

void bindAggregator(py::module_& m) {
  py::class_<agg::Aggregator>(m, "Aggregator")
      .def(py::init([](int workers, const std::string& host, int port, int jobs, uint32_t slots,
                       uint32_t packetElems, const std::string& token, const std::string& faults,
                       double jobIdleSec) {
             agg::AggregatorConfig c;
             c.workers = workers, c.host = host, c.port = port, c.jobs = jobs, c.slots = slots;
             c.packetElems = packetElems, c.token = token, c.faults = faults;
             c.jobIdleSec = jobIdleSec;
             return std::make_unique<agg::Aggregator>(c);
           }),
           py::arg("workers"), py::arg("host") = "127.0.0.1", py::arg("port") = 0,
           py::arg("jobs") = 4, py::arg("slots") = agg::kDefaultSlots,
           py::arg("packet_elems") = agg::kDefaultPacketElems, py::arg("token") = "",
           py::arg("faults") = "", py::arg("job_idle_s") = 60.0)
      .def_property_readonly("port", &agg::Aggregator::port)
      .def("start", &agg::Aggregator::start)
      .def("run", &agg::Aggregator::run, Release())
      .def("stop", &agg::Aggregator::stop)
      .def("stats", [](const agg::Aggregator& a) { return statsDict(a.stats()); });

  m.def("aggregate_traffic", [] {
    auto& t = agg::clientTraffic();
    py::dict d;
    d["packets_sent"] = t.packetsSent.load(), d["bytes_sent"] = t.bytesSent.load();
    d["packets_received"] = t.packetsReceived.load(), d["bytes_received"] = t.bytesReceived.load();
    d["retransmits"] = t.retransmits.load(), d["stale"] = t.stale.load();
    d["send_calls"] = t.calls.sendCalls.load(), d["recv_calls"] = t.calls.recvCalls.load();
    d["gso_sends"] = t.calls.gsoSends.load(), d["gso_datagrams"] = t.calls.gsoDatagrams.load();
    d["gso_bytes"] = t.calls.gsoBytes.load();
    d["gro_receives"] = t.calls.groReceives.load();
    d["gro_datagrams"] = t.calls.groDatagrams.load();
    return d;
  });
  m.def("encode_packet", &encodePacket, py::arg("fields"), py::arg("payload") = py::bytes(),
        py::arg("token") = "", py::arg("sign") = true);
  m.def("decode_packet", &decodePacket, py::arg("packet"), py::arg("token") = "");
  m.def("packet_checksum", [](const py::bytes& header, const py::bytes& payload) {
    std::string h = header, p = payload;
    return agg::packetChecksum(h.data(), h.size(), p.data(), p.size());
  });
  m.def("parse_faults", [](const std::string& spec) {
    auto f = agg::parseFaults(spec);
    return py::make_tuple(f.drop, f.dup, f.reorder);
  });
  m.attr("PACKET_HEADER_BYTES") = sizeof(PacketHeader);
  m.attr("DEFAULT_PACKET_ELEMS") = agg::kDefaultPacketElems;
  m.attr("DEFAULT_SLOTS") = agg::kDefaultSlots;
}

}  // namespace ringflow::bind
