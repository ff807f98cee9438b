// MALT's queues and merge (csrc/malt/).  Buffers are float32 addresses the
// Python side checked (python/ringflow/malt/); nothing here ever waits, so
// the calls keep the GIL except the merge and push, which copy bytes.
#include <pybind11/stl.h>

#include "bind.h"
#include "ringflow/malt.h"
#include "ringflow/types.h"

namespace py = pybind11;

namespace ringflow::bind {

namespace {

py::dict countsDict(const malt::RingCounts& c) {
  py::dict d;
  d["pushes"] = c.pushes;
  d["dropped"] = c.dropped;
  d["coalesced"] = c.coalesced;
  d["merged"] = c.merged;
  return d;
}

}  // namespace

void bindMalt(py::module_& m) {
  using malt::Inbox;
  using malt::Outbox;
  py::enum_<malt::FullPolicy>(m, "MaltFullPolicy")
      .value("drop_oldest", malt::FullPolicy::DropOldest)
      .value("coalesce", malt::FullPolicy::Coalesce);

  py::class_<malt::Arrival>(m, "MaltArrival")
      .def_readonly("sender", &malt::Arrival::sender)
      .def_readonly("slot", &malt::Arrival::slot)
      .def_readonly("seq", &malt::Arrival::seq)
      .def_readonly("step", &malt::Arrival::step)
      .def_readonly("count", &malt::Arrival::count)
      .def("__repr__", [](const malt::Arrival& a) {
        return "MaltArrival(sender=" + std::to_string(a.sender) + ", slot=" + std::to_string(a.slot) +
               ", seq=" + std::to_string(a.seq) + ", step=" + std::to_string(a.step) +
               ", count=" + std::to_string(a.count) + ")";
      });

  py::class_<Inbox>(m, "MaltInbox", "This rank's receive queues: one slot ring per sender.")
      .def(py::init<int, size_t, int, malt::FullPolicy>(), py::arg("senders"), py::arg("count"),
           py::arg("slots"), py::arg("policy"))
      .def_property_readonly("pid", &Inbox::pid)
      .def_property_readonly("fd", &Inbox::fd)
      .def_property_readonly("bytes", &Inbox::bytes)
      .def_property_readonly("count", &Inbox::count)
      .def_property_readonly("senders", &Inbox::senders)
      .def_property_readonly("slots", &Inbox::slots)
      .def("arrivals", &Inbox::arrivals, "Every complete update not merged yet.")
      .def("merge",
           [](Inbox& in, uintptr_t dst, const std::vector<std::tuple<int, int, uint64_t, double>>& takes,
              double selfWeight, bool average) {
             std::vector<malt::Take> ts;
             for (const auto& [sender, slot, seq, w] : takes) ts.push_back({sender, slot, seq, w});
             malt::MergeResult r;
             {
               py::gil_scoped_release nogil;
               r = in.merge(at<float>(dst), ts, selfWeight, average);
             }
             py::dict d;
             d["merged"] = r.merged;
             d["discarded"] = r.discarded;
             d["skipped"] = r.skipped;
             d["weight"] = r.weight;
             return d;
           },
           py::arg("dst"), py::arg("takes"), py::arg("self_weight"), py::arg("average") = true,
           "dst = (self_weight*dst + sum w*x) / (self_weight + sum w*count) over the takes "
           "(sender, slot, seq, weight) still intact, or with average=False dst += sum w*x "
           "(deltas); weight 0 discards one unread.")
      .def("counts", [](const Inbox& in, int sender) { return countsDict(in.counts(sender)); },
           py::arg("sender"))
      .def("close", &Inbox::close, Release());

  py::class_<Outbox>(m, "MaltOutbox", "A sender's ring inside a peer's MaltInbox.")
      .def(py::init<int, int, size_t, int, size_t>(), py::arg("pid"), py::arg("fd"),
           py::arg("bytes"), py::arg("sender"), py::arg("count"))
      .def("push", [](Outbox& o, uintptr_t src, uint64_t step) { return o.push(at<float>(src), step); },
           py::arg("src"), py::arg("step"), Release(), "Copies the update in; never waits.")
      .def("alive",
           [](Outbox& o, double departAfterS) {
             return o.alive(std::chrono::milliseconds(int64_t(departAfterS * 1000)));
           },
           py::arg("depart_after"), "False once the owner closed or its heartbeat stood still.")
      .def("counts", [](const Outbox& o) { return countsDict(o.counts()); })
      .def("_push_half_for_test", [](Outbox& o, uintptr_t src) { o.pushHalfForTest(at<float>(src)); },
           py::arg("src"));

  py::class_<malt::StreamOutbox>(m, "MaltStreamOutbox",
                                 "A sender's stream to a peer on another host: a bounded queue "
                                 "drained by a background thread.")
      .def(py::init<const std::string&, int, size_t, int, malt::FullPolicy, bool, uint64_t, double>(),
           py::arg("addr"), py::arg("sender"), py::arg("count"), py::arg("slots"), py::arg("policy"),
           py::arg("newest_only"), py::arg("token"), py::arg("timeout"), Release())
      .def("push",
           [](malt::StreamOutbox& o, uintptr_t src, uint64_t step) { return o.push(at<float>(src), step); },
           py::arg("src"), py::arg("step"), Release(), "Queues a copy; never waits.")
      .def("alive",
           [](malt::StreamOutbox& o, double departAfterS) {
             return o.alive(std::chrono::milliseconds(int64_t(departAfterS * 1000)));
           },
           py::arg("depart_after"),
           "False once the stream ended or the peer closed, or while its beats have stopped "
           "longer than depart_after.")
      .def("counts", [](const malt::StreamOutbox& o) { return countsDict(o.counts()); })
      .def("close",
           [](malt::StreamOutbox& o, double flushS) {
             o.close(std::chrono::milliseconds(int64_t(flushS * 1000)));
           },
           py::arg("flush") = 1.0, Release(), "Sends what is queued for at most `flush` s, then ends the stream.");

  py::class_<malt::StreamListener>(m, "MaltStreamListener",
                                   "Accepts the streams of senders on other hosts into an inbox.")
      .def(py::init<Inbox&, const std::string&, uint64_t, const std::vector<int>&>(),
           py::arg("inbox"), py::arg("bind"), py::arg("token"), py::arg("senders"),
           py::keep_alive<1, 2>())
      .def_property_readonly("port", &malt::StreamListener::port)
      .def("close", &malt::StreamListener::close, Release());

  m.def("malt_weighted_sum",
        [](uintptr_t out, float a0, const std::vector<uintptr_t>& xs, const std::vector<float>& as,
           size_t n) {
          if (xs.size() != as.size()) throw InvalidArgument("one weight per input");
          std::vector<const float*> ps;
          for (uintptr_t x : xs) ps.push_back(at<const float>(x));
          py::gil_scoped_release nogil;
          malt::weightedSum(at<float>(out), a0, ps.data(), as.data(), ps.size(), n);
        },
        py::arg("out"), py::arg("a0"), py::arg("xs"), py::arg("weights"), py::arg("count"),
        "out = a0*out + sum weights[j]*xs[j] over count float32s (the merge's kernel).");
}

}  // namespace ringflow::bind
