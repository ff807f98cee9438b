"""Tuning a live communicator (mechanism 9): measure its links, search for
the best pattern, confirm the top patterns by running them, and set the
winner on every rank.  Rank 0 decides and broadcasts, so every rank runs
the same schedule; the result is cached by topology and reused."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict

import numpy as np

from .. import _C
from .._dtypes import DTYPE_CODE, REDUCE_OP_CODE
from . import cache
from .calibrate import calibrate_aggregator, calibrate_arena, calibrate_latency, timed_allreduce
from .cost import CostModel, Overheads, rule_boundary
from .links import measure
from .pattern import BUCKETS, Links, Pattern, groups_by_host
from .search import multi_start

log = logging.getLogger("ringflow")

_U8, _MAX = DTYPE_CODE["uint8"], REDUCE_OP_CODE["max"]

_SHARE_BYTES = 4096  # most schedules fit: one call (a cache hit at init is latency-bound)


def _from_rank0(comm, block: np.ndarray) -> None:
    """Rank 0's `block` on every rank (the others' blocks are zeros).  On one
    host the arena's allreduce (max against zeros) wakes every rank once,
    where a broadcast chain wakes them one after another: n-1 scheduling
    delays on a loaded host (65-91 ms for 8 ranks on 2 CPUs)."""
    if _C.allreduce_algorithm(comm, block.size) == "shm":
        comm.allreduce(block.ctypes.data, block.size, _U8, _MAX, True).wait()
    else:
        comm.broadcast(block.ctypes.data, block.size, _U8, 0, True).wait()


def share(comm, obj):
    """Rank 0's JSON-able `obj` on every rank (the others pass anything):
    one call for a length-prefixed block, a second for whatever does not
    fit in it."""
    block = np.zeros(_SHARE_BYTES, np.uint8)
    if comm.rank == 0:
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
        block[:8] = np.frombuffer(np.int64(data.size).tobytes(), np.uint8)
        block[8:8 + min(data.size, _SHARE_BYTES - 8)] = data[:_SHARE_BYTES - 8]
    _from_rank0(comm, block)
    length = int(block[:8].view(np.int64)[0])
    rest = np.zeros(max(0, length - (_SHARE_BYTES - 8)), np.uint8)
    if rest.size:
        if comm.rank == 0:
            rest[:] = data[_SHARE_BYTES - 8:]
        _from_rank0(comm, rest)
    return json.loads((block[8:8 + min(length, _SHARE_BYTES - 8)].tobytes() + rest.tobytes()).decode())


def schedule_of(pattern: Pattern) -> "_C.Schedule":
    s = _C.Schedule()
    s.ring_order = list(pattern.order)
    s.group_of = [] if pattern.groups is None else list(pattern.groups)
    s.algorithms = [(int(b), a) for b, a in pattern.algorithms]
    s.piece_bytes = int(pattern.piece_bytes)
    s.deterministic = bool(pattern.deterministic)
    return s


def apply(comm, pattern: Pattern | None) -> None:
    """Sets `pattern` on `comm` (None: back to untuned auto).  Collective in
    effect: every rank must apply the same pattern between the same calls."""
    if pattern is None:
        _C.clear_schedule(comm)
        return
    pattern.check(comm.size)
    _C.set_schedule(comm, schedule_of(pattern))


def untuned_pattern(hosts) -> Pattern:
    """What auto runs without a schedule, as a pattern the cost model can
    price: the launcher's order, the RINGFLOW_GROUPS or by-host layout."""
    labels = os.environ.get("RINGFLOW_GROUPS")
    if labels and len(labels.split(",")) == len(hosts):
        groups = groups_by_host([x.strip() for x in labels.split(",")])
    elif 1 < len(set(hosts)) < len(hosts):
        groups = groups_by_host(hosts)
    else:
        groups = None
    return Pattern(tuple(range(len(hosts))), groups)


def model_of(entry: dict) -> CostModel:
    """The cost model a cache entry was tuned with."""
    return CostModel(Links.from_json(entry["links"]), Overheads(**entry["overheads"]),
                     shm=entry["shm"])


def _confirm(comm, candidates, nbytes: int, iters: int, margin: float):
    """Runs each candidate and untuned auto; sets and returns the winner
    (None: untuned), every candidate's seconds, and untuned's."""
    measured = []
    for p in candidates:
        apply(comm, Pattern.from_json(p))
        measured.append(timed_allreduce(comm, nbytes, iters))
    apply(comm, None)
    untuned_s = timed_allreduce(comm, nbytes, iters)
    best = min(range(len(measured)), key=measured.__getitem__, default=None)
    chosen = None
    if best is not None and measured[best] < untuned_s * (1 - margin):
        # Both once more, so that one noisy moment cannot decide it.
        untuned_again = timed_allreduce(comm, nbytes, iters)
        apply(comm, Pattern.from_json(candidates[best]))
        if timed_allreduce(comm, nbytes, iters) < untuned_again * (1 - margin):
            chosen = candidates[best]
    apply(comm, None if chosen is None else Pattern.from_json(chosen))
    return chosen, measured, untuned_s


def _confirm_doubling(comm, pattern: Pattern, below: int, iters: int = 10):
    """Recursive doubling wins on latency, which pairwise ping-pongs on a
    loaded host measure poorly, and can lose badly where the model cannot
    see it (whole messages at once into shaped links: drops, resends).  Each
    bucket below `below` the pattern runs it at is timed against the pattern
    without it there, from the largest down; its rule ends below the first
    bucket where it loses.  Returns the pattern (set on comm) and the timings."""
    timings = {}
    for i in reversed(range(len(BUCKETS))):
        b = BUCKETS[i]
        if b >= below or pattern.algorithm_for(b) != "recursive_doubling":
            continue
        other = pattern.ending_below(rule_boundary(i) if i else 0)
        apply(comm, pattern)
        t_doubling = timed_allreduce(comm, b, iters)
        apply(comm, other)
        t_other = timed_allreduce(comm, b, iters)
        timings[str(b)] = {"recursive_doubling_s": t_doubling, other.algorithm_for(b) + "_s": t_other}
        if t_doubling <= t_other:
            break
        pattern = other
    apply(comm, pattern)
    return pattern, timings


def tune(owner, starts: int = 8, seed: int = 0, confirm: int = 3, confirm_bytes: int = 16 << 20,
         iters: int = 2, time_bound_s: float = 20.0, measure_bytes: int = 2 << 20,
         margin: float = 0.03) -> dict:
    """Collective over the Communicator `owner`: measure, search (rank 0),
    confirm the top `confirm` patterns by running them; returns the cache
    entry and leaves the chosen schedule set on every rank.  A candidate
    replaces untuned auto only when it is faster by `margin`, twice."""
    comm, hosts = owner.comm, list(owner.hosts)
    if comm.size < 2:
        raise ValueError("tune: a single rank has no links to tune")
    if confirm_bytes not in BUCKETS:
        raise ValueError(f"tune: confirm_bytes {confirm_bytes} is not one of the cost model's "
                         f"sizes {BUCKETS}")
    t0 = time.perf_counter()
    apply(comm, None)
    shm = _C.allreduce_algorithm(comm, 1 << 20) == "shm"
    links, summary = measure(comm, hosts, nbytes=measure_bytes, time_bound_s=time_bound_s,
                             timeout=owner.timeout)
    overheads = calibrate_arena(comm, Overheads()) if shm else Overheads()
    if os.environ.get("RINGFLOW_AGGREGATOR"):
        overheads = calibrate_aggregator(comm, overheads, apply)
    overheads, summary["latency_calibration_s"] = calibrate_latency(comm, links, overheads, apply)
    model = CostModel(links, overheads, shm=shm)
    plan = None
    if comm.rank == 0:
        t_search = time.perf_counter()
        converged = multi_start(links.hosts, model.complete, starts=starts, seed=seed)
        summary["search_s"] = time.perf_counter() - t_search
        summary["converged"] = len(converged)
        top = [c.pattern for c in converged[:confirm]]
        untuned = model.complete(untuned_pattern(hosts))[1]
        plan = {"candidates": [p.to_json() for p in top],
                "predicted_s": [model.predict(p, confirm_bytes) for p in top],
                "untuned_predicted_s": model.predict(untuned, confirm_bytes)}
    plan = share(comm, plan)
    chosen, measured, untuned_s = _confirm(comm, plan["candidates"], confirm_bytes, iters, margin)
    if chosen is not None and shm and all(a == "shm" for _, a in chosen["algorithms"]):
        # Only the arena: what untuned auto runs on one host already (order,
        # groups and pieces do not enter it), so no schedule, and no noise
        # of the confirmation left behind as a "tuned" choice.
        chosen = None
        apply(comm, None)
    if chosen is not None:
        confirmed, summary["doubling_confirmed"] = _confirm_doubling(
            comm, Pattern.from_json(chosen), confirm_bytes)
        chosen = confirmed.to_json()
    return {"world": comm.size, "hosts": hosts, "shm": shm, "pattern": chosen,
            "links": links.to_json(), "overheads": asdict(overheads), "measurement": summary,
            "confirm_bytes": confirm_bytes,
            "candidates": [{"pattern": p, "predicted_s": pr, "measured_s": m}
                           for p, pr, m in zip(plan["candidates"], plan["predicted_s"], measured)],
            "untuned": {"predicted_s": plan["untuned_predicted_s"], "measured_s": untuned_s},
            "predicted_s": {str(b): model.predict(Pattern.from_json(chosen), b)
                            for b in BUCKETS} if chosen else None,
            "tune_s": time.perf_counter() - t0, "tuned_at": time.time()}


def tune_or_load(owner, where: str | None = None, retune: bool = False, timings: dict | None = None,
                 **kwargs) -> tuple[dict, bool]:
    """The cached schedule for this topology, set on every rank, or a fresh
    tune stored by rank 0.  Returns (entry, whether it came from the cache);
    from the cache, ranks other than 0 get only the entry's pattern.
    `timings`, when given, gets this rank's milliseconds per stage of the
    look-up (fingerprint_ms, load_ms, share_ms, apply_ms)."""
    comm = owner.comm
    clock = [time.perf_counter()]

    def stage(name):
        now = time.perf_counter()
        if timings is not None:
            timings[name] = (now - clock[0]) * 1e3
        clock[0] = now

    key = cache.fingerprint(owner.hosts, _C.env_bool("RINGFLOW_SHM", True))
    stage("fingerprint_ms")
    entry = None if retune or comm.rank != 0 else cache.load(key, where)
    stage("load_ms")
    # Only the decision travels: the whole entry (links and all) stays with rank 0.
    decision = share(comm, None if entry is None else {"pattern": entry.get("pattern")})
    stage("share_ms")
    if decision is not None:
        pattern = decision["pattern"]
        apply(comm, None if pattern is None else Pattern.from_json(pattern))
        stage("apply_ms")
        return entry if entry is not None else decision, True
    entry = tune(owner, **kwargs)
    if comm.rank == 0:
        cache.store(key, entry, where)
    return entry, False


def at_init(owner) -> None:
    """RINGFLOW_TUNE=1: the schedule for this topology (cached or tuned)
    on a fresh communicator, when RINGFLOW_ALGO leaves the choice to auto.
    RINGFLOW_DETERMINISTIC=1 then fixes one reduction order per element."""
    algo = os.environ.get("RINGFLOW_ALGO", "auto").strip().lower()
    if _C.env_bool("RINGFLOW_TUNE", False) and owner.size > 1:
        if algo != "auto":
            log.warning("RINGFLOW_TUNE ignored: RINGFLOW_ALGO=%s chooses the algorithm", algo)
        else:
            t0 = time.perf_counter()
            entry, hit = tune_or_load(owner)
            log.info("tuned schedule (%s, %.1f ms): %s", "cache hit" if hit else "tuned now",
                     (time.perf_counter() - t0) * 1e3, entry.get("pattern"))
    if _C.env_bool("RINGFLOW_DETERMINISTIC", False):
        set_deterministic(owner.comm, True)


def set_deterministic(comm, on: bool) -> None:
    """Deterministic mode on `comm` (every rank, between calls): each element
    reduced in rank order whatever the message size or bucket; off: untuned."""
    apply(comm, Pattern(tuple(range(comm.size)), deterministic=True) if on else None)
