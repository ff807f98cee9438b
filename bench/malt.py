"""MALT against synchronous training with a straggler, and MALT's merge speed.

    python bench/malt.py [--epochs 12] [--step-ms 20] [--slow 3] [--json]
    python bench/malt.py --hosts 2 --rate 100mbit --modes sync,malt [--json]

The GRU reference job (ringflow.jobs.gru) on 4 ranks, each on its own shard
of the training set, every step padded to --step-ms by a sleep (the model's
compute stand-in, so CPU sharing does not decide the result) and rank 3's to
--slow times that (the straggler: an injected sleep, not CPU contention).
Three ways to train, each in its own world of processes, same epochs:

  sync       DistributedDataParallel over the ringflow backend (Adam)
  malt       ringflow.malt.Optimizer(Adam) over the ringflow backend
  postlocal  torch's PostLocalSGDOptimizer(Adam) with a PeriodicModelAverager
             (--period steps) over the ringflow backend

--seeds sets the orders every rank draws its batches in, one run of every
mode per seed: DDP's result is deterministic for one seed, and its final
accuracy moves by more than a point from one order to the next, so compare
modes over several (the JSON's top-level figures are the first seed's; with
several it adds *_acc_by_seed, *_s_by_seed and *_acc_over_seeds).

Rank 0 measures held-out accuracy every --eval-every steps (time spent
evaluating is not counted); time to accuracy is the first time it reaches
the job's reference accuracy (0.93).  Final accuracy: every replica's after
its last epoch (for sync and postlocal they are equal or nearly; for malt
after Optimizer.close(), which makes each model its tail average over its
last --tail-average steps and whose closing merge takes in the updates of the
replicas that finish within its `settle` bound, --settle: 60 s by default,
so that every replica's final model includes every replica's epochs, as
DDP's does), and their mean.

Two hosts (--hosts 2 --rate 100mbit): the same job on 2 network-namespace
hosts x 2 ranks (tests/netns.py) with every host link shaped by tc tbf, no
straggler unless --slow is given.  Time spent communicating, per rank: the
time its steps took (zero_grad, forward, backward, step; not the padding
sleep) minus as many steps of the same model trained alone, timed on that
rank just before (the median of --ref-steps).  Reported: the mean over ranks,
for sync (DDP's allreduce) and malt (pushes, merges) in the same run.

Merge throughput: the C++ merge of 2 and 3 arriving float32 updates of
--merge-mib MiB into a model, one core, beside torch's own mul_/add_ chain
on one thread.  --json ends with one JSON line (sync_s, malt_s, postlocal_s,
*_acc, merge_gbps ...).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time

import ringflow.malt.optimizer
from ringflow.benchmark import harness, report

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))  # netns.py: test infrastructure, not in the wheel
import netns  # noqa: E402

MODES = ("sync", "malt", "postlocal")


def _rank(rank, world, mode, cfg):
    import torch
    import torch.distributed as dist

    import ringflow  # noqa: F401 - registers the backend
    import ringflow.malt
    from ringflow.jobs.gru import build

    torch.set_num_threads(1)
    dist.init_process_group("ringflow", rank=rank, world_size=world)
    job = build(seed=0, batch_size=cfg["batch"])
    model = job.model
    x, y = job.train[0][rank::world], job.train[1][rank::world]
    alone = _alone_step_s(job, x, y, cfg) if cfg.get("ref_steps") else 0.0
    opt = job.make_optimizer(model.parameters())
    net = model
    if mode == "sync":
        net = torch.nn.parallel.DistributedDataParallel(model)
    elif mode == "malt":
        opt = ringflow.malt.Optimizer(opt, model, depart_after=5.0, **cfg["malt"])
    else:
        from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
        from torch.distributed.optim import PostLocalSGDOptimizer

        opt = PostLocalSGDOptimizer(opt, PeriodicModelAverager(period=cfg["period"], warmup_steps=0))
    step_s = cfg["step_ms"] / 1000 * (cfg["slow"] if rank == world - 1 else 1)

    def accuracy():
        with torch.no_grad():
            return (model(job.test[0]).argmax(1) == job.test[1]).float().mean().item()

    g = torch.Generator().manual_seed(rank + world * cfg["seed"])
    curve, evaluating, steps, busy = [], 0.0, 0, 0.0
    dist.barrier()
    t0 = time.monotonic()
    for epoch in range(cfg["epochs"]):
        for idx in torch.randperm(len(y), generator=g).split(cfg["batch"]):
            begun = time.monotonic()
            opt.zero_grad()
            job.loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
            busy += time.monotonic() - begun
            left = step_s - (time.monotonic() - begun)
            if left > 0:
                time.sleep(left)
            if rank == 0 and steps % cfg["eval_every"] == 0:
                e0 = time.monotonic()
                curve.append((e0 - t0 - evaluating, accuracy()))
                evaluating += time.monotonic() - e0
        harness.report_progress(epoch + 1, cfg["epochs"], mode)
    if mode == "malt":
        opt.close()  # its closing merge is part of training: timed, and before the final accuracy
    wall = time.monotonic() - t0 - evaluating
    final = accuracy()
    dist.destroy_process_group()
    return {"curve": curve, "final": final, "wall": wall, "steps": steps,
            "comm": busy - steps * alone}


def _alone_step_s(job, x, y, cfg) -> float:
    """Median time of one step of a copy of the model trained alone (no
    communication): what a rank's steps cost without their peers."""
    import torch

    model = copy.deepcopy(job.model)
    opt = job.make_optimizer(model.parameters())
    times = []
    for i in range(cfg["ref_steps"]):
        idx = torch.arange(i * cfg["batch"], (i + 1) * cfg["batch"]) % len(y)
        begun = time.monotonic()
        opt.zero_grad()
        job.loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
        times.append(time.monotonic() - begun)
    return statistics.median(times[len(times) // 4:])  # after the warm-up


def time_to(curve, target):
    return next((t for t, acc in curve if acc >= target), None)


def merge_throughput(mib: float, senders: int, reps: int) -> dict:
    import torch

    from ringflow import _C

    torch.set_num_threads(1)
    n = int(mib * (1 << 20)) // 4
    inbox = _C.MaltInbox(senders, n, 2, _C.MaltFullPolicy.drop_oldest)
    outs = [_C.MaltOutbox(inbox.pid, inbox.fd, inbox.bytes, s, n) for s in range(senders)]
    xs = [torch.randn(n) for _ in range(senders)]
    dst = torch.randn(n)
    ours, theirs = [], []
    for _ in range(reps):
        for o, x in zip(outs, xs):
            o.push(x.data_ptr(), 1)
        takes = [(a.sender, a.slot, a.seq, 1.0) for a in inbox.arrivals()]
        t = time.perf_counter()
        inbox.merge(dst.data_ptr(), takes, 1.0)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        dst.mul_(1 / (senders + 1))
        for x in xs:
            dst.add_(x, alpha=1 / (senders + 1))
        theirs.append(time.perf_counter() - t)
    moved = senders * n * 4  # update bytes merged per call
    best, base = min(ours), min(theirs)
    return {"senders": senders, "mib": mib, "merge_gbps": moved / best / 1e9,
            "torch_gbps": moved / base / 1e9, "ratio": base / best}


def _summarise_seeds(seeds, by_seed, out) -> None:
    """Per mode: final accuracy per seed and its mean over the seeds."""
    print(f"# over seeds {','.join(map(str, seeds))}: final accuracy (mean of the replicas) per seed, "
          "and the mean over seeds")
    for mode, runs in by_seed.items():
        out[f"{mode}_acc_by_seed"] = [acc for acc, _ in runs]
        out[f"{mode}_s_by_seed"] = [t for _, t in runs]
        out[f"{mode}_acc_over_seeds"] = statistics.mean(out[f"{mode}_acc_by_seed"])
    for mode in by_seed:
        mean, vs = out[f"{mode}_acc_over_seeds"], ""
        if mode != "sync" and "sync" in by_seed:
            vs = f", {100 * (mean - out['sync_acc_over_seeds']):+.1f} pp vs sync"
            out[f"{mode}_speedup_by_seed"] = [s / m if s and m else None for s, m in
                                              zip(out["sync_s_by_seed"], out[f"{mode}_s_by_seed"])]
            vs += "; time to accuracy vs sync: " + " ".join(
                "-" if x is None else f"{x:.2f}x" for x in out[f"{mode}_speedup_by_seed"])
        print(f"# {mode:>10}: {' '.join(f'{x:.3f}' for x in out[f'{mode}_acc_by_seed'])}  mean {mean:.4f}{vs}")


def _run_mode(a, hosts, mode, cfg, out) -> None:
    from ringflow.jobs.gru import TARGET_ACCURACY

    if hosts:
        placement = [r * a.hosts // a.world for r in range(a.world)]
        per_rank = hosts.run(placement, "malt:_rank", args=(mode, cfg), timeout=a.timeout, path=[HERE])
    else:
        per_rank = harness.run_world(_rank, a.world, (mode, cfg), timeout=a.timeout)
    reached = time_to(per_rank[0]["curve"], TARGET_ACCURACY)
    finals = [r["final"] for r in per_rank]
    out[f"{mode}_s"] = reached
    out[f"{mode}_acc"] = sum(finals) / len(finals)
    out[f"{mode}_acc_min"] = min(finals)
    out[f"{mode}_wall_s"] = max(r["wall"] for r in per_rank)
    out[f"{mode}_curve"] = per_rank[0]["curve"]
    comm = ""
    if hosts:
        out[f"{mode}_comm_s"] = statistics.mean(r["comm"] for r in per_rank)
        comm = f" {out[f'{mode}_comm_s']:9.2f}"
    print(f"{mode:>10} {reached if reached is None else round(reached, 2)!s:>12} "
          f"{' '.join(f'{f:.3f}' for f in finals):>22} {out[f'{mode}_wall_s']:9.2f} "
          f"{per_rank[0]['steps']:9d}{comm}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=4)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=16, help="per rank")
    p.add_argument("--step-ms", type=float, default=20)
    p.add_argument("--slow", type=float, default=None,
                   help="the last rank's step time, in steps (default 3; 1 with --hosts)")
    p.add_argument("--hosts", type=int, default=0,
                   help="run on this many namespace hosts (ranks placed in blocks) and measure "
                        "time spent communicating")
    p.add_argument("--rate", default="100mbit", help="tbf rate of every host link with --hosts")
    p.add_argument("--ref-steps", type=int, default=40,
                   help="steps timed alone per rank for the communication figure (--hosts)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--seeds", default="0",
                   help="comma-separated seeds of the order of every rank's batches (rank r draws "
                        "with seed r + world x seed); every mode runs once per seed")
    p.add_argument("--k", type=int, default=None,
                   help="MALT's send fan-out (default: the Optimizer's: N-1 for deltas, else ceil(log2 N))")
    p.add_argument("--period", type=int, default=4, help="PostLocalSGD averaging period")
    p.add_argument("--update", default=None, choices=ringflow.malt.optimizer.UPDATES,
                   help="what MALT exchanges: deltas (added), model snapshots (averaged) or "
                        "gradients (averaged, with snapshots every --every steps); default: "
                        "ringflow.malt.Optimizer's")
    p.add_argument("--delta-weight", type=float, default=None,
                   help="weight of every delta with --update delta (default: the Optimizer's)")
    p.add_argument("--staleness-horizon", type=float, default=None,
                   help="MALT's staleness horizon in steps (default: the Optimizer's)")
    p.add_argument("--every", type=int, default=None,
                   help="MALT's exchange period in steps (default: the Optimizer's)")
    p.add_argument("--tail-average", type=float, default=None,
                   help="steps close() averages MALT's final model over (0: off; default: the Optimizer's)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--merge-mib", type=float, default=64)
    p.add_argument("--settle", type=float, default=60.0,
                   help="Optimizer(settle=): how long close() follows the replicas still training "
                        "(default 60 s: the final models include every replica's epochs, as DDP's do)")
    p.add_argument("--merge-reps", type=int, default=10)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    try:
        seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seeds: comma-separated integers, got {a.seeds!r}")
    if not seeds:
        p.error("--seeds: give at least one seed")
    if any(m not in MODES for m in modes):
        p.error(f"--modes: choose from {MODES}")
    if a.slow is None:
        a.slow = 1.0 if a.hosts else 3.0
    why = netns.available() if a.hosts else ""
    if why:
        print(f"bench/malt.py --hosts: {why}", file=sys.stderr)
        return 2
    from ringflow.jobs.gru import TARGET_ACCURACY

    cfg = dict(epochs=a.epochs, batch=a.batch, step_ms=a.step_ms, slow=a.slow,
               eval_every=a.eval_every, period=a.period, seeds=seeds,
               malt={key: v for key, v in (("k", a.k), ("update", a.update), ("every", a.every),
                                           ("delta_weight", a.delta_weight),
                                           ("staleness_horizon", a.staleness_horizon),
                                           ("settle", a.settle),
                                           ("tail_average", a.tail_average)) if v is not None},
               ref_steps=a.ref_steps if a.hosts else 0)
    report.print_header("MALT vs synchronous training with a straggler (bench/malt.py)",
                    report.environment() + [("world", str(a.world)), ("load", report.load_average()),
                                        ("config", json.dumps(cfg)),
                                        ("hosts", f"{a.hosts} namespace hosts, links tbf {a.rate}"
                                         if a.hosts else "one")])
    out: dict = {"target_acc": TARGET_ACCURACY, "world": a.world, "slow": a.slow, "epochs": a.epochs,
                 "seeds": seeds,
                 "hosts": a.hosts, "rate": a.rate if a.hosts else None}
    print(f"{'mode':>10} {'to ' + str(TARGET_ACCURACY) + ' (s)':>12} {'final acc':>22} "
          f"{'wall (s)':>9} {'steps r0':>9}" + (f" {'comm (s)':>9}" if a.hosts else ""))
    with netns.Hosts(a.hosts) if a.hosts else contextlib.nullcontext() as hosts:
        if hosts:
            hosts.shape(a.rate)
        by_seed = {m: [] for m in modes}
        for i, seed in enumerate(seeds):
            if len(seeds) > 1:
                print(f"# seed {seed}", flush=True)
            dst = out if i == 0 else {}
            for mode in modes:
                _run_mode(a, hosts, mode, {**cfg, "seed": seed}, dst)
                by_seed[mode].append((dst[f"{mode}_acc"], dst[f"{mode}_s"]))
    if len(seeds) > 1:
        _summarise_seeds(seeds, by_seed, out)
    if a.hosts and "malt_comm_s" in out and "sync_comm_s" in out:
        print(f"# time spent communicating: sync {out['sync_comm_s']:.2f} s, malt "
              f"{out['malt_comm_s']:.2f} s per rank", end="")
        if out["malt_comm_s"] > 0:
            out["comm_ratio"] = out["sync_comm_s"] / out["malt_comm_s"]
            print(f" ({out['comm_ratio']:.1f}x less for malt)")
        else:  # steps no slower than the alone reference: no ratio to give
            print(" (malt's within the alone reference's noise: no ratio)")
    for m in modes:
        if m != "sync" and out.get("sync_s") and out.get(f"{m}_s"):
            out[f"{m}_speedup"] = out["sync_s"] / out[f"{m}_s"]
            print(f"# {m}{f' (seed {seeds[0]})' if len(seeds) > 1 else ''}: "
                  f"{out[f'{m}_speedup']:.2f}x sync's time to accuracy; accuracy "
                  f"{100 * (out[f'{m}_acc'] - out['sync_acc']):+.1f} pp vs sync")
    merges = [merge_throughput(a.merge_mib, s, a.merge_reps) for s in (2, 3)]
    for m in merges:
        print(f"# merge of {m['senders']} x {m['mib']:.0f} MiB float32, one core: "
              f"{m['merge_gbps']:.2f} GB/s of updates (torch mul_/add_: {m['torch_gbps']:.2f} GB/s, "
              f"{m['ratio']:.2f}x)")
    out["merge_gbps"] = min(m["merge_gbps"] for m in merges)
    out["merge"] = merges
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
