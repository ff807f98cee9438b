"""ringflow: collective communication for distributed deep learning.

Importing ringflow registers the "ringflow" backend with torch.distributed
when torch is installed.
"""

from __future__ import annotations

from . import _C
from ._C import Error, InvalidArgument, MismatchError, PeerError, TimeoutError

__version__ = _C.__version__

__all__ = [
    "Error",
    "InvalidArgument",
    "MismatchError",
    "PeerError",
    "TimeoutError",
    "__version__",
    "build_info",
]


def build_info() -> dict:
    """What this build contains: version, CUDA kernels, SIMD level, transports."""
    return dict(_C.build_info())


def _register_torch_backend() -> None:
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        return
    from . import backend

    backend.register()


_register_torch_backend()
