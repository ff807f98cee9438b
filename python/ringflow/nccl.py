"""Finding NCCL at run time (ringflow loads it, never links it): the
library of an installed nvidia-nccl wheel, else the system's."""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os


def candidates() -> list[str]:
    paths = []
    explicit = os.environ.get("RINGFLOW_NCCL_LIBRARY")
    if explicit:
        paths.append(explicit)
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        paths += sorted(glob.glob(os.path.join(root, "nccl", "lib", "libnccl.so*")))
    paths.append("libnccl.so.2")  # the dynamic loader's search path
    return paths


def find() -> tuple[str, str] | None:
    """(library, version) of the first NCCL that loads, or None."""
    for path in candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        version = ctypes.c_int(0)
        try:
            if lib.ncclGetVersion(ctypes.byref(version)) != 0:
                continue
        except AttributeError:
            continue
        v = version.value
        major, minor = (v // 10000, v // 100 % 100) if v >= 10000 else (v // 1000, v // 100 % 10)
        return path, f"{major}.{minor}.{v % 100}"
    return None
