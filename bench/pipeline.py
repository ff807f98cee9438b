"""Several models trained at once: the pipelined schedule against the
sequential one, in the same run (mechanism 5).

    python bench/pipeline.py [--models 3] [--params 1M] [--rate 300mbit] [--rounds 5] [--json]

Scenarios: 4 ranks on 2 network-namespace hosts joined by a shaped link
(`tc tbf` at --rate; needs root, else skipped with the reason), then 4 ranks
on one host.  Each rank trains --models MLPs of about --params parameters
(float32), each with its own optimizer.  Before measuring, the batch is
sized so that one model's forward+backward takes about as long as its
gradient allreduce (communication = computation, where overlap pays most).
Then blocks of --rounds rounds alternate between the sequential schedule
(each model's sync awaited before the next model computes) and the
pipelined one, so a change in the host's load hits both; each block starts
after a barrier and its time is the slowest rank's.

Reported per scenario: sequential_s and pipelined_s (sums over blocks),
speedup = sequential_s / pipelined_s, comm_s and compute_s (measured in the
sequential schedule, where they never overlap; mean over ranks) and
overlap_efficiency = (sequential_s - pipelined_s) / min(comm_s, compute_s),
and ceiling_speedup = sequential_s / cpu_bound_s, where cpu_bound_s is the
CPU time every thread of every rank spent in the sequential schedule over
the host's CPUs: no schedule of the same work finishes sooner on this host.
--timeline PATH writes each rank's Chrome trace of the whole run
(PATH.rankN.json).  Needs only torch and the installed ringflow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import timedelta

PLACEMENT_2_HOSTS = [0, 0, 1, 1]


def _mlp(params: int, inputs: int, torch):
    """inputs -> h -> h -> 10 with about `params` parameters."""
    # h*h + h*(inputs + 10) ≈ params
    b = inputs + 10
    h = int((-b + (b * b + 4 * params) ** 0.5) / 2)
    return torch.nn.Sequential(torch.nn.Linear(inputs, h), torch.nn.ReLU(), torch.nn.Linear(h, h),
                               torch.nn.ReLU(), torch.nn.Linear(h, 10))


def _members(cfg, torch):
    from ringflow.pipeline import Member

    torch.manual_seed(0)
    out = []
    for k in range(cfg["models"]):
        model = _mlp(cfg["params"], cfg["inputs"], torch)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        out.append(Member(f"model{k}", model, opt,
                          lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])))
    return out


def _batch(rows, cfg, g, torch):
    return (torch.randn(rows, cfg["inputs"], generator=g), torch.randint(0, 10, (rows,), generator=g))


def _calibrate(members, cfg, rows, dist, torch, g):
    """Batch rows at which forward+backward ≈ the allreduce, on the slowest rank."""
    from ringflow.pipeline import Pipeline

    # A first round connects and touches every buffer: its comm is no guide.
    warm = Pipeline(members, overlap=False)
    warm.round([_batch(rows, cfg, g, torch) for _ in members])
    warm.finish()
    for _ in range(3):
        pipe = Pipeline(members, overlap=False)
        for _ in range(2):
            pipe.round([_batch(rows, cfg, g, torch) for _ in members])
        pipe.finish()
        t = torch.tensor([pipe.times.comm, pipe.times.compute], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        comm, compute = float(t[0]), float(t[1])
        rows = max(1, int(rows * comm / compute))
        t = torch.tensor([rows], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # every rank the same batch
        rows = int(t[0])
    return rows


def rank_main(rank: int, size: int, cfg: dict) -> dict:
    """One rank (run by tests/netns.py); returns its measurements."""
    import torch
    import torch.distributed as dist

    import ringflow  # noqa: F401 - registers the backend
    from ringflow import timeline
    from ringflow.pipeline import Pipeline

    torch.set_num_threads(1)  # 4 ranks share the host's CPUs
    dist.init_process_group(cfg["backend"], rank=rank, world_size=size, timeout=timedelta(seconds=120))
    g = torch.Generator().manual_seed(rank)
    members = _members(cfg, torch)
    rows = cfg["rows"] or _calibrate(members, cfg, 64, dist, torch, g)
    out = {"rows": rows, "sequential": [], "pipelined": [], "comm": [], "compute": [], "waiting": [],
           "compute_pipelined": [], "call_ms": {"sequential": [], "pipelined": []},
           "cpu_sequential": []}
    for block in range(cfg["blocks"]):
        for overlap in (False, True):
            pipe = Pipeline(members, overlap=overlap)
            batches = [[_batch(rows, cfg, g, torch) for _ in members] for _ in range(cfg["rounds"])]
            dist.barrier()
            ringflow.reset_stats()
            t0, c0 = time.perf_counter(), time.process_time()
            for b in batches:
                pipe.round(b)
            pipe.finish()
            wall = time.perf_counter() - t0
            schedule = "pipelined" if overlap else "sequential"
            out[schedule].append(wall)
            # The core's own time per allreduce: longer when pipelined means
            # communication and computation fight over the CPUs.
            ops = ringflow.stats()["ops"].get("allreduce")
            if ops and cfg["backend"] == "ringflow":
                out["call_ms"][schedule].append(ops["total_ms"] / ops["count"])
            if not overlap:
                # Every thread of the rank, ringflow's own included.
                out["cpu_sequential"].append(time.process_time() - c0)
                out["comm"].append(pipe.times.comm)
                out["compute"].append(pipe.times.compute)
            else:
                out["waiting"].append(pipe.times.waiting)
                out["compute_pipelined"].append(pipe.times.compute)
    if timeline.ACTIVE is not None:
        timeline.ACTIVE.set_rank(rank)
        out["timeline"] = timeline.ACTIVE.flush()
    dist.destroy_process_group()
    return out


def summarise(per_rank: list[dict]) -> dict:
    from ringflow.pipeline import overlap_efficiency

    def mean(key):  # a per-rank total, averaged over ranks
        return sum(sum(r[key]) for r in per_rank) / len(per_rank)

    def calls(schedule):  # the core's mean time per allreduce
        v = [x for r in per_rank for x in r["call_ms"][schedule]]
        return sum(v) / len(v) if v else None

    blocks = len(per_rank[0]["sequential"])
    seq = sum(max(r["sequential"][b] for r in per_rank) for b in range(blocks))
    pipe = sum(max(r["pipelined"][b] for r in per_rank) for b in range(blocks))
    comm, compute = mean("comm"), mean("compute")
    # The CPU seconds the ranks spent in the sequential schedule, over the
    # host's CPUs, bound any schedule of the same work from below: where the
    # ranks keep every CPU busy already, overlap has nothing left to use.
    cpus = len(os.sched_getaffinity(0))
    cpu_bound = sum(sum(r["cpu_sequential"][b] for r in per_rank) for b in range(blocks)) / cpus
    return {"cpu_bound_s": cpu_bound, "ceiling_speedup": seq / cpu_bound if cpu_bound else None,
            "sequential_s": seq, "pipelined_s": pipe, "speedup": seq / pipe, "comm_s": comm,
            "compute_s": compute, "overlap_efficiency": overlap_efficiency(seq, pipe, comm, compute),
            "waiting_pipelined_s": mean("waiting"), "compute_pipelined_s": mean("compute_pipelined"),
            "allreduce_ms_sequential": calls("sequential"), "allreduce_ms_pipelined": calls("pipelined"),
            "rows": per_rank[0]["rows"]}


def _scenarios(a, cfg, here: str):
    sys.path.insert(0, os.path.join(here, os.pardir, "tests"))  # netns.py: test infrastructure
    import netns

    env = {"RINGFLOW_TIMELINE": a.timeline} if a.timeline else {}
    why = netns.available()
    if why:
        print(f"# 2 hosts: skipped ({why})", flush=True)
    else:
        with netns.Hosts(2) as hosts:
            hosts.shape(rate=a.rate, burst=a.burst, latency="100ms")
            yield (f"2 hosts, {a.rate} link", hosts.run(PLACEMENT_2_HOSTS, "pipeline:rank_main", [cfg],
                                                         env=env, timeout=a.timeout, path=[here]))
    if not a.skip_one_host:
        yield ("1 host", netns.run_ranks([[]] * 4, [{}] * 4, "127.0.0.1", "pipeline:rank_main", [cfg],
                                         env=env, timeout=a.timeout, path=[here]))


def _pair(a, b) -> str:
    return f"{a:.0f}/{b:.0f}" if a is not None and b is not None else "-"


def _git_sha() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.abspath(__file__)))
    return r.stdout.strip() or "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=3, help="2-4 models")
    p.add_argument("--params", default="1M", help="parameters per model (K/M suffix)")
    p.add_argument("--inputs", type=int, default=256)
    p.add_argument("--rows", type=int, default=0, help="batch rows (0: sized so compute ≈ comm)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per block")
    p.add_argument("--blocks", type=int, default=3, help="blocks of each schedule, alternating")
    # 300mbit: slow enough that the allreduce waits on the link rather than
    # on the CPUs, which 4 ranks on this 2-vCPU host already fill with compute.
    p.add_argument("--rate", default="300mbit", help="the shaped link's rate (tc tbf)")
    p.add_argument("--burst", default="256kb")
    p.add_argument("--backend", default="ringflow", choices=["ringflow", "gloo"])
    p.add_argument("--skip-one-host", action="store_true")
    p.add_argument("--timeline", default="", help="write each rank's Chrome trace here (PATH.rankN.json)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    units = {"K": 1_000, "M": 1_000_000}
    params = int(float(a.params[:-1]) * units[a.params[-1].upper()]) if a.params[-1].upper() in units \
        else int(a.params)
    cfg = dict(models=a.models, params=params, inputs=a.inputs, rows=a.rows, rounds=a.rounds,
               blocks=a.blocks, backend=a.backend)
    import torch

    import ringflow

    print(f"# ringflow {ringflow.__version__} (git {_git_sha()}), torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; backend {a.backend}")
    print(f"# 4 ranks, {a.models} models of ~{params / 1e6:.2f}M float32 parameters "
          f"({params * 4 / 2**20:.1f} MiB of gradients each), {a.blocks} blocks x {a.rounds} rounds per schedule")
    print("# comm s, compute s: measured in the sequential schedule (mean over ranks); pipe compute s: the")
    print("# same computation in the pipelined schedule; call ms: the core's mean time per allreduce, seq/pipe;")
    print("# cpu-bound: the most any schedule of this work can gain here, seq s / (CPU seconds the ranks")
    print("# spent in the sequential schedule / this host's CPUs)")
    print(f"{'scenario':>22} {'rows':>5} {'seq s':>7} {'pipe s':>7} {'speedup':>7} {'comm s':>7} "
          f"{'compute s':>9} {'efficiency':>10} {'pipe compute s':>14} {'call ms':>13} {'cpu-bound':>9}", flush=True)
    here = os.path.dirname(os.path.abspath(__file__))
    rows = []
    for name, per_rank in _scenarios(a, cfg, here):
        s = summarise(per_rank)
        s["scenario"] = name
        rows.append(s)
        print(f"{name:>22} {s['rows']:5d} {s['sequential_s']:7.2f} {s['pipelined_s']:7.2f} "
              f"{s['speedup']:7.2f} {s['comm_s']:7.2f} {s['compute_s']:9.2f} {s['overlap_efficiency']:10.2f} "
              f"{s['compute_pipelined_s']:14.2f} {_pair(s['allreduce_ms_sequential'], s['allreduce_ms_pipelined']):>13} "
              f"{s['ceiling_speedup']:8.2f}x", flush=True)
    if not rows:
        return 1
    print("# targets: overlap_efficiency >= 0.8, speedup >= 1.6: "
          + "; ".join(f"{r['scenario']}: {'met' if r['overlap_efficiency'] >= 0.8 and r['speedup'] >= 1.6 else 'NOT met'}"
                      for r in rows))
    if a.json:
        print(json.dumps({**rows[0], "scenarios": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
