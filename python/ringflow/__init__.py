"""ringflow: collective communication for distributed deep learning.

Importing ringflow registers the "ringflow" backend with torch.distributed
when torch is installed.
"""

from __future__ import annotations

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


def _register_torch_backend() -> None:
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        return
    from . import backend, hooks  # noqa: F401 - ringflow.hooks: DDP communication hooks

    backend.register()


_register_torch_backend()
