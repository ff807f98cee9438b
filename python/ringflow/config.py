"""RINGFLOW_* environment settings, logged once per process.

Unset or empty means the default.  The settings the C++ core reads
(registered in csrc where each is read; PYTHON_SETTINGS lists the ones
Python reads) are checked, with
SHM_QUEUE_BYTES and SHM_SLOT_BYTES, when the group is built and before the
store is used: a malformed or out-of-range value raises
ringflow.InvalidArgument (a ValueError) naming the variable and the value.
RINGFLOW_AGGREGATOR alone waits for the first aggregate call (resolving its
host names would fail jobs that never use it).  Numbers there are whole and non-negative
unless said otherwise; booleans are 1/true/yes/on or 0/false/no/off;
microsecond settings are at most an hour.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("ringflow")

# The settings Python reads.  The core's register themselves where they are
# read (csrc/include/ringflow/settings.h); `settings()` merges both.
PYTHON_SETTINGS = {
    "RINGFLOW_ADDR": "address advertised to peers (default: route towards MASTER_ADDR)",
    "RINGFLOW_BIND": "address the TCP listener binds (default 0.0.0.0)",
    "RINGFLOW_GROUPS": "hierarchical layout: one group label per rank, e.g. 0,0,1,1",
    "RINGFLOW_LOG": "log level of the 'ringflow' logger (default WARNING)",
    "RINGFLOW_HOST_ID": "host identity compared to find same-host ranks (default hostname/boot id)",
    "RINGFLOW_MASTER": "HOST:PORT of the training service's master, for `ringflow worker`, "
                       "`submit`, `jobs`, `job` and `data` without --master",
    "RINGFLOW_SERVICE_TOKEN": "shared secret of the training service: required by a master bound "
                              "beyond loopback, sent by its clients and workers",
    "RINGFLOW_SHM": "0 (or false, no, off) disables the shared-memory transport between same-host "
                    "ranks (default 1)",
    "RINGFLOW_SHM_CMA": "0 (or false, no, off) forbids single-copy process_vm_readv/writev in the shm allreduce "
                        "(default 1; used only where it works between every pair; on, each process "
                        "lets processes of its user access it (prctl PR_SET_PTRACER_ANY), which Yama's "
                        "ptrace_scope 1 would otherwise refuse between sibling ranks)",
    "RINGFLOW_SHM_QUEUE_BYTES": "bytes of each per-sender shared-memory queue (default 1048576)",
    "RINGFLOW_SHM_SLOT_BYTES": "bytes of each rank's allreduce slot (default 1048576)",
    "RINGFLOW_TUNE": "1: at init, set the tuned schedule for this topology from the cache, or tune "
                     "now and cache it (only with RINGFLOW_ALGO=auto; default 0)",
    "RINGFLOW_TUNE_CACHE": "file of tuned schedules (default ~/.cache/ringflow/tune.json)",
    "RINGFLOW_DETERMINISTIC": "1: at init, every allreduce, reduce-scatter and reduce reduces each "
                              "element in rank order, whatever the message or bucket size "
                              "(default 0)",
    "RINGFLOW_TIMELINE": "write a Chrome trace of every call here: trace.json -> trace.rank<N>.json "
                         "per rank, at exit (default: none)",
}


def settings() -> dict[str, str]:
    """Every setting the library reads, with what it does, sorted by name."""
    from . import _C

    merged = {**_C.settings(), **PYTHON_SETTINGS}
    return dict(sorted(merged.items()))


_logged = False


def log_config_once() -> None:
    global _logged
    if _logged:
        return
    _logged = True
    level = os.environ.get("RINGFLOW_LOG")
    if level:
        if not isinstance(logging.getLevelName(level.upper()), int):
            raise ValueError(f"RINGFLOW_LOG={level!r} is not a log level "
                             f"(use DEBUG, INFO, WARNING, ERROR or CRITICAL)")
        logging.basicConfig()
        log.setLevel(level.upper())
    set_vars = {k: v for k, v in os.environ.items() if k.startswith("RINGFLOW_")}
    unknown = sorted(set(set_vars) - set(settings()))
    log.info("ringflow settings: %s", set_vars or "defaults")
    if unknown:
        log.warning("unknown RINGFLOW_* variables ignored: %s", ", ".join(unknown))
