// One registration function per bound concept; module.cc calls them all.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

namespace ringflow::bind {

// Every blocking call drops the GIL.
using Release = pybind11::call_guard<pybind11::gil_scoped_release>;

// Buffers cross the binding as integer addresses.
template <typename T = void>
T* at(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void bindErrors(pybind11::module_& m);
void bindComm(pybind11::module_& m);
void bindShm(pybind11::module_& m);
void bindKernels(pybind11::module_& m);
void bindStats(pybind11::module_& m);
void bindAggregator(pybind11::module_& m);
void bindSchedule(pybind11::module_& m);
void bindMalt(pybind11::module_& m);
void bindCompress(pybind11::module_& m);
}  // namespace ringflow::bind
