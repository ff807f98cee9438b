"""The cost model's fitted terms, from a live communicator's own calls: the
arena's and the aggregator's cost lines (neither is a ring of measured
links) and the per-call overhead and latency factor of the ring's small
messages (a hop inside a call is not the pair's ping-pong latency)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from .. import _C
from .._dtypes import DTYPE_CODE, REDUCE_OP_CODE
from .cost import CostModel, Overheads
from .pattern import Links, Pattern

_F32, _F64 = DTYPE_CODE["float32"], DTYPE_CODE["float64"]
_SUM, _MAX = REDUCE_OP_CODE["sum"], REDUCE_OP_CODE["max"]

# Between buckets for the lines (a prediction at a bucket is then not a fit);
# at buckets for the latency (the model is priced there).
_LINE_SMALL, _LINE_LARGE = 64 << 10, 8 << 20
_LATENCY_RUNS = (("ring", (4 << 10, 64 << 10)), ("recursive_doubling", (4 << 10,)))


def timed_allreduce(comm, nbytes: int, iters: int) -> float:
    """Seconds per allreduce of nbytes, back to back after a barrier, the
    slowest rank's figure (every rank gets it)."""
    x = np.ones(max(1, nbytes // 4), np.float32)
    comm.allreduce(x.ctypes.data, x.size, _F32, _SUM, True).wait()  # warm-up
    comm.barrier(True).wait()
    t0 = time.perf_counter()
    for _ in range(iters):
        comm.allreduce(x.ctypes.data, x.size, _F32, _SUM, True).wait()
    t = np.array([(time.perf_counter() - t0) / iters])
    comm.allreduce(t.ctypes.data, 1, _F64, _MAX, True).wait()
    return float(t[0])


def _line(comm) -> tuple[float, float]:
    """(fixed seconds, seconds per byte) of what runs now, from two sizes."""
    t_small, t_large = timed_allreduce(comm, _LINE_SMALL, 20), timed_allreduce(comm, _LINE_LARGE, 5)
    per_byte = max(t_large - t_small, 1e-12) / (_LINE_LARGE - _LINE_SMALL)
    return max(t_small - per_byte * _LINE_SMALL, 0.0), per_byte


def calibrate_arena(comm, over: Overheads) -> Overheads:
    """The arena's cost, a + b * bytes, fitted from two untuned allreduces."""
    fixed, per_byte = _line(comm)
    return replace(over, shm_fixed_s=fixed, shm_per_byte_s=per_byte)


def calibrate_aggregator(comm, over: Overheads, apply) -> Overheads:
    """The aggregator's cost line, from two allreduces a schedule sends
    through it (`apply` sets a pattern, None clears it)."""
    apply(comm, Pattern(tuple(range(comm.size)), algorithms=((0, "aggregate"),)))
    try:
        fixed, per_byte = _line(comm)
    finally:
        apply(comm, None)
    return replace(over, agg_fixed_s=fixed, agg_per_byte_s=per_byte)


def fit_latency(links: Links, over: Overheads, measured: dict[tuple[str, int], float]) -> Overheads:
    """call_s and latency_scale such that the launcher's order predicts
    `measured` ((algorithm, bytes) -> seconds): least squares over
    t = call_s + scale * L + B, L the model's latency part and B the rest;
    both terms non-negative.  A ring's latency part is the same at every
    size, so only algorithms with different numbers of steps (the ring's
    2(n-1), recursive doubling's log2 n) tell the two terms apart."""
    base = replace(over, call_s=0.0, latency_scale=1.0)
    no_lat = CostModel(links, replace(base, latency_scale=0.0), shm=False)
    with_lat = CostModel(links, base, shm=False)
    keys = sorted(measured)
    pats = [Pattern(tuple(range(links.size)), algorithms=((0, a),)) for a, _ in keys]
    rest = np.array([no_lat.predict(p, b) for p, (_, b) in zip(pats, keys)])
    lat = np.array([with_lat.predict(p, b) for p, (_, b) in zip(pats, keys)]) - rest
    want = np.array([measured[k] for k in keys]) - rest
    design = np.stack([np.ones_like(lat), lat], 1)
    # Non-negative least squares over two terms: the full fit where both
    # come out non-negative, else the better of either term alone.
    fits = [(max(float(want.mean()), 0.0), 0.0)]
    if lat @ lat > 0:
        fits.append((0.0, max(float(want @ lat / (lat @ lat)), 0.0)))
    (call, scale), *_ = np.linalg.lstsq(design, want, rcond=None)
    if call >= 0 and scale >= 0:
        fits.append((float(call), float(scale)))
    call, scale = min(fits, key=lambda f: float(np.sum((design @ np.array(f) - want) ** 2)))
    return replace(over, call_s=call, latency_scale=scale)


def calibrate_latency(comm, links: Links, over: Overheads, apply) -> tuple[Overheads, dict]:
    """Times the ring and recursive doubling in the launcher's order at the
    latency-bound sizes and fits the per-call and latency terms; returns
    them and the timings ("algorithm@bytes" -> seconds)."""
    measured = {}
    try:
        for algorithm, sizes in _LATENCY_RUNS:
            apply(comm, Pattern(tuple(range(comm.size)), algorithms=((0, algorithm),)))
            for b in sizes:
                measured[algorithm, b] = timed_allreduce(comm, b, 30)
    finally:
        apply(comm, None)
    return fit_latency(links, over, measured), {f"{a}@{b}": t for (a, b), t in measured.items()}
