// One registration function per bound concept; module.cc calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace ringflow::bind {
void bindErrors(pybind11::module_& m);
void bindComm(pybind11::module_& m);
void bindShm(pybind11::module_& m);
void bindKernels(pybind11::module_& m);
}  // namespace ringflow::bind
