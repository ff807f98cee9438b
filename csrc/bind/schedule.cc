// A tuned schedule (mechanism 9) crosses as a plain struct the Python tuner
// fills and sets on a communicator between calls.
#include <pybind11/stl.h>

#include "bind.h"
#include "ringflow/algorithms.h"
#include "ringflow/comm.h"

namespace py = pybind11;

namespace ringflow::bind {

void bindSchedule(py::module_& m) {
  py::class_<Schedule>(m, "Schedule")
      .def(py::init<>())
      .def_readwrite("ring_order", &Schedule::ringOrder,
                     "ring position -> rank (empty: rank order)")
      .def_readwrite("group_of", &Schedule::groupOf,
                     "rank -> lower-order group label (empty: layout unchanged)")
      .def_property(
          "algorithms",
          [](const Schedule& s) {
            std::vector<std::pair<size_t, std::string>> out;
            for (const SizeRule& r : s.algorithms) out.emplace_back(r.minBytes, r.algorithm);
            return out;
          },
          [](Schedule& s, const std::vector<std::pair<size_t, std::string>>& rules) {
            s.algorithms.clear();
            for (const auto& [bytes, name] : rules) s.algorithms.push_back(SizeRule{bytes, name});
          },
          "[(min_bytes, algorithm)], ascending: the last rule at or below a size wins")
      .def_readwrite("piece_bytes", &Schedule::pieceBytes, "0: RINGFLOW_PIECE_BYTES")
      .def_readwrite("deterministic", &Schedule::deterministic,
                     "one reduction order per element whatever the message size");

  m.def("set_schedule", [](Comm& c, const Schedule& s) { algo::setSchedule(c, s); },
        py::arg("comm"), py::arg("schedule"),
        "Sets a tuned schedule on `comm` (every rank the same one, between calls).");
  m.def("clear_schedule", [](Comm& c) { c.clearSchedule(); }, py::arg("comm"),
        "Drops the tuned schedule and brings back the layout from before it.");
  m.def("has_schedule", [](Comm& c) { return c.schedule() != nullptr; }, py::arg("comm"));
}

}  // namespace ringflow::bind
