"""ringflow: collective communication for distributed deep learning.

Importing ringflow registers the "ringflow" backend with torch.distributed
when torch is installed: at once if torch is imported already, else when it
is (torch's import calls ringflow_autoload), so that ringflow's commands
that need no torch start without importing it.
"""

from __future__ import annotations

import importlib
import os
import sys

from . import _C
from .errors import Error, InvalidArgument, MismatchError, PeerError, TimeoutError, error_of
from .aggregator import Aggregator
from .shared import shared_empty

__version__ = _C.__version__

__all__ = [
    "Error",
    "InvalidArgument",
    "MismatchError",
    "PeerError",
    "TimeoutError",
    "__version__",
    "Aggregator",
    "build_info",
    "error_of",
    "reset_stats",
    "shared_empty",
    "stats",
]


def build_info() -> dict:
    """What this build contains: version, CUDA kernels, SIMD level, transports."""
    return dict(_C.build_info())


def stats() -> dict:
    """Timings of this process's calls and the ring-relay watchdog's counters.

    ``ops`` maps each kind of call to its count, total/max time and summed
    aggregation-phase time; ``recent`` lists the last 64 calls with their
    aggregation and total times and the peer waited on longest (the slow
    hop); ``warnings`` counts calls slower than ``warn_ms``
    (RINGFLOW_WARN_MS, default 10000; 0 disables the warnings).
    ``aggregate`` counts this process's packet-aggregation traffic
    (packets and bytes sent and received, retransmissions); ``huge_pages``
    the buffers collapsed into huge pages (RINGFLOW_SHM_HUGEPAGES);
    ``shared_buffers`` this process's shared tensors (shared_empty) and the
    peers' ones it maps.  ``bytes_sent`` counts the bytes this process's
    collectives handed to links, ``cross_host_bytes_sent`` those of them on
    levels that cross hosts (the higher-order rings), ``bytes_sent_to``
    those bytes per destination (transport rank -> bytes), and
    ``compressed_calls`` the allreduces whose cross-host level ran low-bit
    compressed (RINGFLOW_COMPRESS).
    """
    out = dict(_C.stats())
    out["aggregate"] = dict(_C.aggregate_traffic())
    out["huge_pages"] = dict(_C.huge_page_stats())
    out["shared_buffers"] = dict(_C.shared_buffer_stats())
    return out


def reset_stats() -> None:
    """Clears the counters and timings stats() reports."""
    _C.reset_stats()


def _torch_registers_us_on_import() -> bool:
    """Whether `import torch` will register the backend itself: torch calls
    the `torch.backends` entry points (ringflow_autoload) unless
    TORCH_DEVICE_BACKEND_AUTOLOAD says otherwise."""
    if os.environ.get("TORCH_DEVICE_BACKEND_AUTOLOAD", "1") != "1":
        return False
    from importlib.metadata import entry_points

    return any(e.name == "ringflow" for e in entry_points(group="torch.backends"))


def _register_torch_backend() -> None:
    # Importing torch takes seconds.  Commands that never touch it (the
    # training service's client, `ringflow info`) should not pay for it, so
    # when torch is not imported yet and will register the backend itself,
    # registration waits for torch's import.
    if "torch" not in sys.modules and _torch_registers_us_on_import():
        return
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        return
    from . import backend, hooks  # noqa: F401 - ringflow.hooks: DDP communication hooks

    backend.register()


def __getattr__(name: str):
    # ringflow.backend and ringflow.hooks without importing them first, as
    # when importing ringflow imported torch.
    if name in ("backend", "hooks"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ringflow' has no attribute {name!r}")


_register_torch_backend()
