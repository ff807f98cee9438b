"""Tuned schedules on disk: one JSON file, entries keyed by a fingerprint of
the topology (world size, every rank's host, the build), written whole to a
temporary file and renamed into place so a reader never sees half of one."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from .. import _C

CACHE_ENV = "RINGFLOW_TUNE_CACHE"


def path() -> str:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ringflow", "tune.json")


def fingerprint(hosts, shm: bool) -> str:
    """Same hosts in the same places, same build, same RINGFLOW_SHM: the
    same links to expect, so the same schedule applies."""
    key = {"world": len(hosts), "hosts": list(hosts), "shm": bool(shm),
           "version": _C.__version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def load_all(where: str | None = None) -> dict:
    where = where or path()
    try:
        with open(where) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"tune cache {where} is unreadable ({e}); delete it to retune") from None
    if not isinstance(data, dict):
        raise ValueError(f"tune cache {where} is not a JSON object; delete it to retune")
    return data


def load(key: str, where: str | None = None) -> dict | None:
    return load_all(where).get(key)


def store(key: str, entry: dict, where: str | None = None) -> str:
    where = where or path()
    data = load_all(where)
    data[key] = entry
    os.makedirs(os.path.dirname(os.path.abspath(where)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(where)), prefix=".tune.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, where)
    except BaseException:
        os.unlink(tmp)
        raise
    return where
