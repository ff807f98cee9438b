// C++ error kinds become Python classes: ringflow.Error is a RuntimeError;
// timeouts, dead peers and mismatched calls are subclasses of it; bad
// arguments are ValueErrors.
#include "bind.h"
#include "ringflow/types.h"

namespace py = pybind11;

namespace ringflow::bind {

void bindErrors(py::module_& m) {
  static py::exception<Error> error(m, "Error", PyExc_RuntimeError);
  static py::exception<TimeoutError> timeout(m, "TimeoutError", error.ptr());
  static py::exception<PeerError> peer(m, "PeerError", error.ptr());
  static py::exception<MismatchError> mismatch(m, "MismatchError", error.ptr());
  static py::exception<InvalidArgument> invalid(m, "InvalidArgument", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      py::set_error(invalid, e.what());
    } catch (const TimeoutError& e) {
      py::set_error(timeout, e.what());
    } catch (const PeerError& e) {
      py::set_error(peer, e.what());
    } catch (const MismatchError& e) {
      py::set_error(mismatch, e.what());
    } catch (const Error& e) {
      py::set_error(error, e.what());
    }
  });
}

}  // namespace ringflow::bind
