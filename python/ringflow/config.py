"""RINGFLOW_* environment settings, logged once per process.

Unset or empty means the default.  The settings the C++ core reads
(csrc/env.cc; all below but ADDR, BIND, GROUPS, LOG, HOST_ID, SHM, SHM_CMA,
SHM_QUEUE_BYTES and SHM_SLOT_BYTES, which Python reads) are checked, with
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

# Every setting the library reads, with what it does.
SETTINGS = {
    "RINGFLOW_ADDR": "address advertised to peers (default: route towards MASTER_ADDR)",
    "RINGFLOW_BIND": "address the TCP listener binds (default 0.0.0.0)",
    "RINGFLOW_PIECE_BYTES": "pipelining piece size of ring/chain algorithms (default 262144; "
                            "below 64 means the default)",
    "RINGFLOW_WARN_MS": "watchdog: warn when a call's aggregation phase or whole call exceeds this "
                        "many ms, a decimal number (default 10000, 0 or less = off)",
    "RINGFLOW_SIMD": "caps the CPU kernels' instruction set (avx512, avx2, scalar)",
    "RINGFLOW_KERNEL_THREADS": "threads for very large N-way reductions (default: one per CPU, "
                               "at most 4; 0 or 1 = none)",
    "RINGFLOW_GROUPS": "hierarchical layout: one group label per rank, e.g. 0,0,1,1",
    "RINGFLOW_HIER_MIN_BYTES": "auto picks hierarchical from this message size up (default 65536)",
    "RINGFLOW_LOG": "log level of the 'ringflow' logger (default WARNING)",
    "RINGFLOW_TRACE": "1 (or true/yes/on) prints control events (aborts, goodbyes, lost "
                      "peers) to stderr",
    "RINGFLOW_ALGO": "allreduce algorithm: auto (default: shared-memory arena when every rank "
                     "is on this host, hierarchical rings for a multi-group layout, ring "
                     "otherwise), ring, shm, hierarchical, or aggregate",
    "RINGFLOW_AGGREGATOR": "aggregate: the aggregator service(s), host:port[,host:port...]; "
                           "chunks are shared round-robin",
    "RINGFLOW_AGG_SLOTS": "aggregate: packets in flight per aggregator, at most its slots per "
                          "job (default 32)",
    "RINGFLOW_AGG_PACKET_ELEMS": "aggregate: int32 values per packet (default 16352: one 64 KiB "
                                 "datagram)",
    "RINGFLOW_AGG_TOKEN": "aggregate: shared secret; packets then carry a keyed MAC (required "
                          "by an aggregator listening beyond loopback)",
    "RINGFLOW_AGG_FAULTS": "aggregate fault injector, e.g. drop:0.1,dup:0.1,reorder:0.1 (tests)",
    "RINGFLOW_HOST_ID": "host identity compared to find same-host ranks (default hostname/boot id)",
    "RINGFLOW_SHM": "0 (or false, no, off) disables the shared-memory transport between same-host "
                    "ranks (default 1)",
    "RINGFLOW_SHM_CMA": "0 (or false, no, off) forbids single-copy process_vm_readv/writev in the shm allreduce "
                        "(default 1; used only where it works between every pair; on, each process "
                        "lets processes of its user access it (prctl PR_SET_PTRACER_ANY), which Yama's "
                        "ptrace_scope 1 would otherwise refuse between sibling ranks)",
    "RINGFLOW_SHM_QUEUE_BYTES": "bytes of each per-sender shared-memory queue (default 1048576)",
    "RINGFLOW_SHM_SLOT_BYTES": "bytes of each rank's allreduce slot (default 1048576)",
    "RINGFLOW_SHM_SMALL_BYTES": "shm allreduce: at or below this, one copy-in step; above, "
                                "single-copy reduce-scatter + allgather (default 262144; "
                                "0 = default)",
    "RINGFLOW_SHM_PIECE_BYTES": "shm allreduce: bytes read from a peer per piece (default 262144; "
                                "0 = default)",
    "RINGFLOW_SHM_MAPPED_PIECE_BYTES": "shm allreduce over shared tensors (shared_empty) on every "
                                       "rank: bytes reduced per piece (default 65536; 0 = default)",
    "RINGFLOW_SHM_SPIN_US": "shm reader thread: microseconds of polling before it sleeps (default 50)",
    "RINGFLOW_SHM_ARENA_SPIN_US": "shm allreduce waits: microseconds of pure spinning (default 5; "
                                  "0 = default)",
    "RINGFLOW_SHM_ARENA_YIELD_US": "shm allreduce waits: then microseconds of polling between "
                                   "sched_yield calls before sleeping on the peer's bell "
                                   "(default 2000; 0 = default)",
    "RINGFLOW_SHM_HUGEPAGES": "collapse a large buffer the shm allreduce sees a third time at "
                              "the same address into transparent huge pages, once (peers read "
                              "it faster; costs a copy of it; default 1, 0 turns it off)",
    "RINGFLOW_INLINE_BYTES": "blocking collectives up to this size run on the calling thread when "
                             "nothing is queued (default 262144; 0 = never)",
}

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
    unknown = sorted(set(set_vars) - set(SETTINGS))
    log.info("ringflow settings: %s", set_vars or "defaults")
    if unknown:
        log.warning("unknown RINGFLOW_* variables ignored: %s", ", ".join(unknown))
