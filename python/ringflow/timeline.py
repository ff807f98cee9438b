"""A Chrome-trace timeline of a ringflow job (mechanism 5's evidence).

Set ``RINGFLOW_TIMELINE=trace.json`` and every rank writes its own file,
``trace.rank0.json``, ``trace.rank1.json``, ... when the process exits (or
when `flush()` is called).  Each file is a Chrome trace ({"traceEvents":
[...]}) that Perfetto and chrome://tracing open; `merge()` (or
``ringflow timeline merge OUT IN...``) joins the ranks' files into
one.  One file per rank, rather than one gathered by rank 0, because the
rank that would gather is the one most likely to be gone when a job fails,
and a failing job is when the timeline is wanted.

Tracks: pid = the rank (one process row per rank), with threads
  tid 1 "compute"     spans the training code reports (`span()`),
  tid 2 "collectives" every ringflow call: a "queue" span from the call's
                      submission to the moment the core started it, then the
                      call itself with its aggregation and dispatch times,
  tid 3 "sync"        per-model synchronisation spans the pipeline reports.
Timestamps are CLOCK_MONOTONIC microseconds (time.perf_counter), which every
process on a host shares, so merged ranks line up.

Zero cost when the variable is unset: `ACTIVE` is None and the backend only
tests it.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

COMPUTE, COLLECTIVES, SYNC = 1, 2, 3
_TRACK_NAMES = {COMPUTE: "compute", COLLECTIVES: "collectives", SYNC: "sync"}


def _now_us() -> float:
    return time.perf_counter() * 1e6


def rank_path(path: str, rank: int) -> str:
    """trace.json -> trace.rank3.json (the file rank 3 writes)."""
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}{ext or '.json'}"


@dataclass
class Timeline:
    """The events one rank has recorded; written as one Chrome-trace file."""

    path: str
    rank: int = -1
    events: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _watch: "queue.SimpleQueue | None" = field(default=None, repr=False)

    def set_rank(self, rank: int) -> None:
        # The rank is only known once a group exists; the first one wins
        # (the default group is created first).
        if self.rank < 0:
            self.rank = rank

    def add(self, name: str, tid: int, start_us: float, end_us: float, args: dict | None = None) -> None:
        ev = {"name": name, "ph": "X", "ts": start_us, "dur": max(0.0, end_us - start_us), "tid": tid}
        if args:
            ev["args"] = args
        with self._lock:
            self.events.append(ev)

    @contextmanager
    def span(self, name: str, tid: int = COMPUTE, **args):
        start = _now_us()
        try:
            yield
        finally:
            self.add(name, tid, start, _now_us(), args or None)

    # -- collectives ---------------------------------------------------------
    def collective(self, core_works, rank: int) -> None:
        """Records core works submitted now by `rank`; a watcher thread stamps
        their completion as it happens, whether or not the caller ever waits."""
        self.set_rank(rank)
        if self._watch is None:
            with self._lock:
                if self._watch is None:
                    self._watch = queue.SimpleQueue()
                    threading.Thread(target=self._watcher, daemon=True, name="ringflow-timeline").start()
        submitted = _now_us()
        for w in core_works:
            self._watch.put((w, submitted))

    def _watcher(self) -> None:
        # Works on one communicator finish in submission order, so waiting on
        # them first-in first-out stamps each end within a wake-up of the truth.
        from . import _C

        while True:
            w, submitted = self._watch.get()
            error = ""
            try:
                w.wait()
            except Exception as e:  # noqa: BLE001 - recorded, raised to the caller elsewhere
                error = str(e)
            self._record_call(w, submitted, _now_us(), error, _C)

    def _record_call(self, w, submitted, ended, error, _C) -> None:
        what = w.what
        kind = what.split(" ", 1)[0]  # "allreduce #5 (count=...)" -> "allreduce"
        run_us = w.seconds * 1e6
        started = max(submitted, ended - run_us) if run_us > 0 else ended
        args = {"op": what, "total_ms": run_us / 1e3, "queued_ms": (started - submitted) / 1e3}
        agg = _aggregation_ms(_C, what)
        if agg is not None:
            args["aggregation_ms"] = agg
            args["dispatch_ms"] = max(0.0, run_us / 1e3 - agg)
        if error:
            args["error"] = error
        if started > submitted:
            self.add(f"{kind} queued", COLLECTIVES, submitted, started, {"op": what})
        self.add(kind, COLLECTIVES, started, ended, args)

    # -- output ----------------------------------------------------------------
    def trace(self) -> dict:
        rank = max(self.rank, 0)
        with self._lock:
            events = [dict(e, pid=rank) for e in self.events]
        meta = [{"name": "process_name", "ph": "M", "pid": rank, "tid": 0, "args": {"name": f"rank {rank}"}},
                {"name": "process_sort_index", "ph": "M", "pid": rank, "tid": 0, "args": {"sort_index": rank}}]
        meta += [{"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": name}}
                 for tid, name in _TRACK_NAMES.items()]
        return {"traceEvents": meta + events, "displayTimeUnit": "ms"}

    def flush(self) -> str:
        """Writes this rank's file (renamed into place, so a reader never
        sees half of it); returns its path."""
        out = rank_path(self.path, max(self.rank, 0))
        tmp = f"{out}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.trace(), f)
        os.replace(tmp, out)
        return out


def _aggregation_ms(_C, what: str):
    """The core's aggregation-phase time for the call named `what`, from the
    last calls it remembers (None: no such phase, or already forgotten)."""
    for r in reversed(_C.stats()["recent"]):
        if r["op"] == what:
            return r["aggregation_ms"]
    return None


def _from_env() -> Timeline | None:
    path = os.environ.get("RINGFLOW_TIMELINE", "")
    if not path:
        return None
    tl = Timeline(path)
    atexit.register(_flush_quietly, tl)
    return tl


def _flush_quietly(tl: Timeline) -> None:
    try:
        tl.flush()
    except OSError as e:
        print(f"ringflow: could not write the timeline: {e}", file=sys.stderr)


# The process's timeline, or None when RINGFLOW_TIMELINE is unset.
ACTIVE: Timeline | None = _from_env()


def enable(path: str, rank: int = -1) -> Timeline:
    """Turns the timeline on from code (as RINGFLOW_TIMELINE would)."""
    global ACTIVE
    if ACTIVE is None:
        ACTIVE = Timeline(path, rank)
        atexit.register(_flush_quietly, ACTIVE)
    return ACTIVE


@contextmanager
def span(name: str, tid: int = COMPUTE, **args):
    """A compute span on the active timeline; nothing when there is none."""
    if ACTIVE is None:
        yield
        return
    with ACTIVE.span(name, tid, **args):
        yield


def flush() -> str | None:
    return ACTIVE.flush() if ACTIVE is not None else None


def merge(out: str, paths: list[str]) -> str:
    """Joins per-rank trace files into one (each keeps its pid, its rank)."""
    events = []
    for p in paths:
        with open(p) as f:
            events += json.load(f)["traceEvents"]
    with open(out, "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
    return out


def main(argv: list[str]) -> int:
    """`ringflow timeline merge OUT.json RANK.json...`"""
    if len(argv) < 3 or argv[0] != "merge":
        print("usage: ringflow timeline merge OUT.json RANK_FILE.json...", file=sys.stderr)
        return 2
    print(merge(argv[1], argv[2:]))
    return 0
