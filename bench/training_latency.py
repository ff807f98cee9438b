"""Small-message latency as training issues calls: ringflow against gloo.

    python bench/training_latency.py [--world 2] [--bytes 4K] [--compute-us 1000] [--json]

DDP issues its bucket allreduces between pieces of backward, so a call
rarely follows another back to back: each rank computes, then calls.  Per
backend, in the same processes: `--iters` blocking float32 allreduces of
`--bytes`, each after `--compute-us` of busy computation; then barriers
with the same computation between them; then `--loops` loops of
back-to-back allreduces, whose per-loop medians show whether the steady
state is one mode or several.  Backends take turns in blocks of 50 calls,
so a change in the host's load hits all of them.  The third backend,
"floor", does nothing: its figures are torch's own dispatch to a Python
process group on this host, the least any Python backend can cost (ringflow
must not link libtorch, so a C++ backend is not an option).  A call's time
is measured on each rank;
the reported samples are the slowest rank's per call.  Needs only torch and
the installed ringflow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta

from ringflow.benchmark import harness, measure

BLOCK = 50  # calls per turn of one backend
FLOOR = "floor"  # the backend that does nothing: torch's own dispatch, the least any Python backend costs


def _floor_group(store, rank, size, timeout):
    """A process group whose calls return a finished Work at once: timed
    like the others, it is the cost of torch's dispatch to a Python backend
    on this host, below which no Python backend's call can go."""
    import torch.distributed as dist

    class Done(dist.Work):
        def wait(self, timeout=None):
            return True

    class Floor(dist.ProcessGroup):
        def __init__(self):
            super().__init__(rank, size)
            self._done = Done()

        def getBackendName(self):  # noqa: N802 - torch's spelling
            return FLOOR

        def allreduce(self, tensors, opts=None):
            return self._done

        def barrier(self, opts=None):
            return self._done

    return Floor()


def _timed(call, iters: int, compute_us: float) -> list[tuple[float, float]]:
    """(start, end) of each call on CLOCK_MONOTONIC, which every process on
    the host shares, so ranks' timestamps can be compared."""
    out = []
    for _ in range(iters):
        measure.busy(compute_us)
        t0 = time.perf_counter()
        call()
        out.append((t0, time.perf_counter()))
    return out


SEGMENTS = ("torch before", "ringflow allreduce()", "torch between", "Work.wait()", "torch after")


def _profile(dist, x, cfg: dict) -> dict:
    """Where one blocking ringflow allreduce spends its time on this rank:
    timestamps at the entry and exit of the backend's allreduce() (which runs
    a small blocking call inline, core included) and of Work.wait(), around
    torch's own dispatch.  Medians per segment, after computation and back
    to back."""
    from ringflow import backend

    stamps: list[float] = []
    # A blocking call the core finished inline returns the group's shared
    # _Finished Work; any other returns a Work: both waits are stamped.
    real_allreduce, real_wait = backend.ProcessGroup.allreduce, backend.Work.wait
    real_finished_wait = backend._Finished.wait

    def stamped(real):
        def call(self, *a, **k):
            stamps.append(time.perf_counter())
            try:
                return real(self, *a, **k)
            finally:
                stamps.append(time.perf_counter())
        return call

    backend.ProcessGroup.allreduce, backend.Work.wait = stamped(real_allreduce), stamped(real_wait)
    backend._Finished.wait = stamped(real_finished_wait)
    try:
        out = {}
        for mode, compute in (("after computation", cfg["compute_us"]), ("back to back", 0)):
            segments = {name: [] for name in SEGMENTS}
            for _ in range(cfg["iters"]):
                measure.busy(compute)
                stamps.clear()
                t0 = time.perf_counter()
                dist.all_reduce(x)
                t1 = time.perf_counter()
                if len(stamps) != 4:
                    continue  # torch took another path (no wait call): not profiled
                points = [t0, *stamps, t1]
                for name, a, b in zip(SEGMENTS, points, points[1:]):
                    segments[name].append(b - a)
            out[mode] = {name: statistics.median(v) * 1e6 for name, v in segments.items() if v}
        return out
    finally:
        backend.ProcessGroup.allreduce, backend.Work.wait = real_allreduce, real_wait
        backend._Finished.wait = real_finished_wait


def _rank(rank: int, world: int, cfg: dict) -> dict:
    """One rank's samples (run by ringflow.benchmark.harness.run_world, which sets
    MASTER_ADDR/PORT and reports a rank that raises, dies or hangs)."""
    import torch
    import torch.distributed as dist

    import ringflow  # noqa: F401 - registers the backend

    torch.set_num_threads(1)
    dist.Backend.register_backend(FLOOR, _floor_group, devices=["cpu"])
    dist.init_process_group("ringflow", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    groups = {"ringflow": None, "gloo": dist.new_group(backend="gloo"), FLOOR: dist.new_group(backend=FLOOR)}
    x = torch.ones(cfg["bytes"] // 4)
    calls = {name: {"allreduce": lambda g=group: dist.all_reduce(x, group=g),
                    "barrier": lambda g=group: dist.barrier(group=g)} for name, group in groups.items()}
    out = {name: {"allreduce": [], "barrier": [], "loops": []} for name in groups}
    for name in groups:
        _timed(calls[name]["allreduce"], cfg["warmup"], cfg["compute_us"])
    ringflow.reset_stats()
    # Blocks of BLOCK calls, backends taking turns: on a host whose load
    # changes, both backends see the same conditions.
    for _ in range(max(1, cfg["iters"] // BLOCK)):
        for name in groups:
            for what in ("allreduce", "barrier"):
                dist.barrier(group=groups["gloo"])
                out[name][what] += _timed(calls[name][what], BLOCK, cfg["compute_us"])
    # The core's own time per call (from the start of its work to its
    # end, as ringflow.stats() counts it), beside the caller's.
    ops = ringflow.stats()["ops"]
    out["ringflow"]["core_us"] = {what: 1e3 * ops[what]["total_ms"] / ops[what]["count"]
                                  for what in ("allreduce", "barrier") if what in ops}
    for _ in range(cfg["loops"]):
        for name in groups:
            dist.barrier(group=groups["gloo"])
            loop = _timed(calls[name]["allreduce"], cfg["loop_iters"], 0)
            out[name]["loops"].append(statistics.median(e - s for s, e in loop))
    if cfg["profile"]:
        dist.barrier(group=groups["gloo"])
        out["profile"] = _profile(dist, x, cfg)
    dist.destroy_process_group()
    return out


def summarise(per_rank: list[dict]) -> list[dict]:
    rows = []
    for backend in (b for b in per_rank[0] if b != "profile"):
        row = {"backend": backend}
        for what in ("allreduce", "barrier"):
            calls = list(zip(*(r[backend][what] for r in per_rank)))  # per call: each rank's (start, end)
            slowest = [max(e - s for s, e in call) for call in calls]
            row[f"{what}_p50_us"] = statistics.median(slowest) * 1e6
            row[f"{what}_p90_us"] = measure.percentile(slowest, 90) * 1e6
            if backend == FLOOR:  # its ranks never meet: no skew, nothing after the last arrival
                continue
            # Where the slowest rank's time goes: waiting for the last rank
            # to arrive, then the work after everyone is there.
            skew = [max(s for s, _ in call) - min(s for s, _ in call) for call in calls]
            after = [max(e for _, e in call) - max(s for s, _ in call) for call in calls]
            row[f"{what}_skew_p50_us"] = statistics.median(skew) * 1e6
            row[f"{what}_after_last_p50_us"] = statistics.median(after) * 1e6
            row[f"{what}_after_last_p90_us"] = measure.percentile(after, 90) * 1e6
        for what in ("allreduce", "barrier"):
            cores = [r[backend].get("core_us", {}).get(what) for r in per_rank]
            if all(c is not None for c in cores):
                row[f"{what}_core_mean_us"] = max(cores)
        loops = [max(r[backend]["loops"][i] for r in per_rank) * 1e6 for i in range(len(per_rank[0][backend]["loops"]))]
        row["loop_medians_us"] = loops
        row["loop_spread"] = max(loops) / min(loops)
        rows.append(row)
    return rows


def run(cfg: dict) -> tuple[list[dict], list[dict]]:
    per_rank = harness.run_world(_rank, cfg["world"], (cfg,), timeout=cfg["timeout"])
    return summarise(per_rank), [r["profile"] for r in per_rank if "profile" in r]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--bytes", default="4K", help="message size (K/M suffix, binary)")
    p.add_argument("--compute-us", type=float, default=1000, help="busy computation before each call")
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--loops", type=int, default=8, help="back-to-back loops (bimodality check)")
    p.add_argument("--loop-iters", type=int, default=200)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--profile", action="store_true",
                   help="also split ringflow's call into torch's dispatch, the backend and the wait")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    size = measure.parse_size(a.bytes)
    cfg = dict(world=a.world, bytes=size, compute_us=a.compute_us, iters=a.iters, warmup=a.warmup,
               loops=a.loops, loop_iters=a.loop_iters, timeout=a.timeout, profile=a.profile)
    rows, profiles = run(cfg)
    gloo = next(r for r in rows if r["backend"] == "gloo")
    print(f"# {a.world} ranks, {size} B float32 allreduce, {a.compute_us:.0f} us of computation before "
          f"each call; load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    print("# per call, the slowest rank's time (p50, p90); the arrival skew between ranks (p50); and the")
    print("# time from the last rank's arrival to the last rank's return (p50, p90), all in us")
    print("# core: the mean time the C++ core spent in the call (ringflow.stats()), slowest rank")
    print(f"{'backend':>9} {'call':>9} {'p50':>7} {'p90':>7} {'skew':>7} {'after':>7} {'after90':>7} {'core':>7}")
    for r in rows:
        for what in ("allreduce", "barrier"):
            core = r.get(f"{what}_core_mean_us")
            meet = "".join(f" {r[f'{what}_{k}_us']:7.1f}" if f"{what}_{k}_us" in r else f" {'-':>7}"
                           for k in ("skew_p50", "after_last_p50", "after_last_p90"))
            print(f"{r['backend']:>9} {what:>9} {r[f'{what}_p50_us']:7.1f} {r[f'{what}_p90_us']:7.1f}"
                  f"{meet} " + (f"{core:7.1f}" if core else f"{'-':>7}"))
        print(f"{r['backend']:>9} back-to-back allreduce loop medians: "
              + " ".join(f"{v:.1f}" for v in r["loop_medians_us"]))
    ours = next(r for r in rows if r["backend"] == "ringflow")
    print(f"ringflow vs gloo: allreduce p50 {gloo['allreduce_p50_us'] / ours['allreduce_p50_us']:.1f}x, "
          f"p90 {gloo['allreduce_p90_us'] / ours['allreduce_p90_us']:.1f}x, "
          f"barrier p50 {gloo['barrier_p50_us'] / ours['barrier_p50_us']:.1f}x faster; "
          f"ringflow loop medians spread {ours['loop_spread']:.2f}x")
    floor = next(r for r in rows if r["backend"] == FLOOR)
    print(f"# floor: torch's dispatch to a Python process group that does nothing, same processes: "
          f"allreduce p50 {floor['allreduce_p50_us']:.1f} p90 {floor['allreduce_p90_us']:.1f}, "
          f"barrier p50 {floor['barrier_p50_us']:.1f} us; ringflow above it: allreduce p50 "
          f"+{ours['allreduce_p50_us'] - floor['allreduce_p50_us']:.1f}, "
          f"barrier p50 +{ours['barrier_p50_us'] - floor['barrier_p50_us']:.1f} us")
    for rank, prof in enumerate(profiles):
        for mode, segments in prof.items():
            print(f"# profile rank {rank}, {mode} (median us): "
                  + ", ".join(f"{name} {us:.1f}" for name, us in segments.items()))
    if a.json:
        print(json.dumps(rows + [{"profile_by_rank": profiles}] if profiles else rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
