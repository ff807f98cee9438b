"""RINGFLOW_* environment settings, logged once per process."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("ringflow")

# Every setting the library reads, with what it does.
SETTINGS = {
    "RINGFLOW_ADDR": "address advertised to peers (default: route towards MASTER_ADDR)",
    "RINGFLOW_BIND": "address the TCP listener binds (default 0.0.0.0)",
    "RINGFLOW_PIECE_BYTES": "pipelining piece size of ring/chain algorithms (default 262144)",
    "RINGFLOW_WARN_MS": "watchdog: warn when a call's aggregation phase or whole call exceeds this (default 10000, 0 = off)",
    "RINGFLOW_TRACE": "1 prints aborts, goodbyes and lost peers to stderr",
    "RINGFLOW_SIMD": "caps the CPU kernels' instruction set (avx512, avx2, scalar)",
    "RINGFLOW_KERNEL_THREADS": "threads for very large N-way reductions (1 = none)",
    "RINGFLOW_GROUPS": "hierarchical layout: one group label per rank, e.g. 0,0,1,1",
    "RINGFLOW_ALGO": "allreduce algorithm: auto (default), ring, hierarchical",
    "RINGFLOW_HIER_MIN_BYTES": "auto picks hierarchical from this message size up (default 65536)",
    "RINGFLOW_LOG": "log level of the 'ringflow' logger (default WARNING)",
}

_logged = False


def log_config_once() -> None:
    global _logged
    if _logged:
        return
    _logged = True
    level = os.environ.get("RINGFLOW_LOG")
    if level:
        logging.basicConfig()
        log.setLevel(level.upper())
    set_vars = {k: v for k, v in os.environ.items() if k.startswith("RINGFLOW_")}
    unknown = sorted(set(set_vars) - set(SETTINGS))
    log.info("ringflow settings: %s", set_vars or "defaults")
    if unknown:
        log.warning("unknown RINGFLOW_* variables ignored: %s", ", ".join(unknown))
