"""What the benchmarks measure with: sizes, statistics, bus bandwidth, CPU
time, and one timed allreduce loop.

Conventions (bench/README.md): algbw = S / t, busbw = algbw * factor(n) with
nccl-tests' factors; times are the max over ranks of one iteration, then the
median over iterations, warm-ups excluded.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

# nccl-tests' bus-bandwidth factors: what each rank's link must carry,
# relative to S, for the ring algorithm's lower bound.
BUSBW_FACTOR = {
    "allreduce": lambda n: 2 * (n - 1) / n,
    "allgather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "alltoall": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
}


# ---------------------------------------------------------------- sizes


def parse_size(text: str) -> int:
    """'4K' -> 4096, '16M' -> 16 MiB, '1G', '512' (bytes); binary units."""
    t = text.strip().upper()
    if t.endswith("IB"):
        t = t[:-2]
    unit = t[-1] if t and t[-1] in _SUFFIX else ""
    number = t[: len(t) - len(unit)] if unit else t
    try:
        value = float(number) * _SUFFIX[unit]
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use bytes with an optional K, M or G suffix)") from None
    if value < 1 or value != int(value):
        raise ValueError(f"not a whole positive number of bytes: {text!r}")
    return int(value)


def parse_sizes(text: str) -> list[int]:
    return [parse_size(s) for s in text.split(",") if s.strip()]


def format_size(nbytes: int) -> str:
    """4096 -> '4K', 16 MiB -> '16M'; odd sizes stay in bytes."""
    for unit in ("G", "M", "K"):
        if nbytes >= _SUFFIX[unit] and nbytes % _SUFFIX[unit] == 0:
            return f"{nbytes // _SUFFIX[unit]}{unit}"
    return f"{nbytes}B"


# ---------------------------------------------------------------- statistics


def percentile(values, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def max_over_ranks(per_rank: list[list[float]]) -> list[float]:
    """Iteration i took as long as its slowest rank."""
    return [max(ts) for ts in zip(*per_rank)]



def process_cpu_seconds(pid="self") -> float:
    """CPU time of every thread of process `pid` so far, in seconds, from
    /proc/<pid>/task/*/schedstat (nanoseconds; /proc/<pid>/stat counts in
    10 ms ticks, too coarse for one call).  A thread that exits takes its
    time with it, so measure processes whose threads live on."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # the thread exited between the listing and the read
    return total / 1e9


class CpuMeter:
    """CPU seconds some processes spend inside timed windows: `pids` maps a
    name to a pid ("self" for this process); start() and stop() bracket one
    window; medians() gives each name's median over the windows."""

    def __init__(self, pids: dict):
        self.pids = dict(pids)
        self.samples = {name: [] for name in self.pids}
        self._at = {}

    def start(self) -> None:
        self._at = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        for name, pid in self.pids.items():
            self.samples[name].append(process_cpu_seconds(pid) - self._at[name])

    def medians(self) -> dict:
        return {name: statistics.median(v) if v else math.nan for name, v in self.samples.items()}


def allreduce_p50(tensor_for, iters: int, check=None, meter: CpuMeter | None = None) -> float:
    """One rank's part of timing `iters` allreduces: each iteration takes
    tensor_for() (untimed: the tensor, or a fresh copy of it), a barrier,
    one timed dist.all_reduce of it, then an all_reduce MAX of the elapsed
    time, so every rank holds the slowest rank's time; then check(tensor) if
    given (untimed).  A `meter` brackets each timed all_reduce (its reads
    fall outside the timing).  Returns the median of those maxima, in
    seconds."""
    import torch
    import torch.distributed as dist

    times = []
    for _ in range(iters):
        x = tensor_for()
        dist.barrier()
        if meter:
            meter.start()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        elapsed = time.perf_counter() - t0
        if meter:
            meter.stop()
        dt = torch.tensor([elapsed], dtype=torch.float64)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        times.append(float(dt))
        if check is not None:
            check(x)
    return statistics.median(times)


def busy(us: float) -> None:
    """Computation standing in for a piece of backward (training's call
    pattern: compute, then a collective)."""
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def bandwidths(collective: str, world: int, nbytes: int, seconds: float) -> tuple[float, float]:
    """(algbw, busbw) in GB/s (1e9 bytes/s), as nccl-tests reports them."""
    if seconds <= 0:
        return math.nan, math.nan
    algbw = nbytes / seconds / 1e9
    return algbw, algbw * BUSBW_FACTOR[collective](world)


