"""Low-bit compressed allreduce across hosts against the exact one.

Two network-namespace hosts with two ranks each (block placement), every
host link shaped with tbf (default 1 Gbit/s), layout one group per host:
  allreduce  the hierarchical allreduce of a float32 tensor (default 64 MiB),
             exact (RINGFLOW_COMPRESS=none) and 2-bit with error feedback,
             back to back in the same world; cross-host bytes from
             ringflow.stats(); the 2-bit result's error on random data.
  training   the GRU reference job and an MLP on the digits, DDP over the
             4 ranks: exact, ringflow.hooks.lowbit(bits=2), and torch's
             PowerSGD hook; held-out accuracy and time per step.
  kernels    the LUT weighted sum of 8 ranks' 2-bit codes against decoding
             each rank's codes (dequantize_lowbit) and adding the floats.
Needs root (network namespaces, tc).

    sudo python bench/compress.py [--rate 1gbit] [--size 64M] [--iters 5]
                                  [--epochs 12] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))  # netns.py: test infrastructure, not in the wheel
import netns  # noqa: E402
from ringflow.benchmark.measure import parse_size  # noqa: E402
from ringflow.benchmark.report import environment, load_average, print_header  # noqa: E402

# entry point and its config: the MLP on the digits with a 256-wide hidden
# layer (19k parameters), so that its gradients are worth compressing
JOBS = {"gru": ("ringflow.jobs.gru:build", {}),
        "mlp": ("ringflow.jobs.mlp:build", {"hidden": 256, "lr": 0.002, "batch_size": 64})}


# The lowbit hook's exact warm-up steps (DeepSpeed 1-bit Adam's freeze_step), a third of
# the GRU's 12 epochs x 22 steps; PowerSGD's start_powerSGD_iter is below
WARMUP_STEPS = 88


def allreduce_times(rank, size, nbytes, iters):
    """Per mode: seconds per call back to back (slowest rank), cross-host
    bytes this rank sent per call, and the relative error on random data."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    import ringflow
    from ringflow.backend import set_compress

    dist.init_process_group("ringflow", rank=rank, world_size=size, timeout=timedelta(seconds=300))
    n = nbytes // 4
    rows = [torch.from_numpy(np.random.default_rng(r).standard_normal(n, dtype=np.float32)) for r in range(size)]
    exact = torch.stack(rows).sum(0)
    out = {}
    for mode in ("none", "2bit"):
        set_compress(None, mode)
        x = rows[rank].clone()
        dist.all_reduce(x)  # warm-up; also the accuracy sample
        err = float((x - exact).norm() / exact.norm())
        x = torch.ones(n)
        ringflow.reset_stats()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        took = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        s = ringflow.stats()
        if float(x[0]) != size ** iters:
            raise AssertionError(f"{mode}: wrong allreduce result {float(x[0])}, want {size ** iters}")
        dist.all_reduce(took, op=dist.ReduceOp.MAX)
        out[mode] = {"s": float(took) / iters, "bytes": s["cross_host_bytes_sent"] / iters,
                     "compressed": s["compressed_calls"], "rel_error": err,
                     "phase_ms": {k: v / iters for k, v in s["compress_phase_ms"].items()}}
    dist.destroy_process_group()
    return out


def train(rank, size, job_spec, variant, epochs, warmup_steps=0):
    """DDP training of a reference job; returns held-out accuracy and the
    median seconds per step (slowest rank)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
    from torch.nn.parallel import DistributedDataParallel as DDP

    import ringflow
    from ringflow.jobs import load_entry_point

    dist.init_process_group("ringflow", rank=rank, world_size=size, timeout=timedelta(seconds=300))
    torch.set_num_threads(1)
    entry, config = job_spec
    job = load_entry_point(entry)(**config)
    model = DDP(job.model)
    if variant == "lowbit":
        model.register_comm_hook(None, ringflow.hooks.lowbit(bits=2, warmup_steps=warmup_steps))
    elif variant == "powersgd":
        state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=2, start_powerSGD_iter=2)
        model.register_comm_hook(state, psgd.powerSGD_hook)
    opt = job.make_optimizer(model.parameters())
    x, y = job.train
    steps = []
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for b in range(0, len(y) - job.batch_size + 1, job.batch_size):
            idx = perm[b:b + job.batch_size][rank::size]
            t0 = time.perf_counter()
            opt.zero_grad()
            job.loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            steps.append(time.perf_counter() - t0)
    step = torch.tensor([statistics.median(steps)], dtype=torch.float64)
    dist.all_reduce(step, op=dist.ReduceOp.MAX)
    acc = job.evaluate(model.module)["accuracy"]
    dist.destroy_process_group()
    return {"accuracy": acc, "step_s": float(step)}


def lut_vs_decode(workers: int, m: int, bits: int, repeat: int) -> dict:
    """The same codes summed by LUT and by decode-then-add, single thread,
    into buffers allocated once (so neither pays for fresh pages)."""
    from kernels import decode_then_add  # bench/kernels.py

    from ringflow import _C
    from ringflow import kernels as ops

    K, block = _C.kernels, 256
    rng = np.random.default_rng(0)
    q = [ops.quantize_lowbit(rng.standard_normal(m).astype(np.float32), bits, block) for _ in range(workers)]
    codes, scales = np.stack([a[0] for a in q]), np.stack([a[1] for a in q])
    ones = np.ones(workers, np.float32)
    y, acc, row = np.empty(m, np.float32), np.empty(m, np.float32), np.empty(m, np.float32)

    def lut():
        K.lut_weighted_sum(y.ctypes.data, codes.ctypes.data, scales.ctypes.data, ones.ctypes.data,
                           workers, m, bits, block)
        return y

    def decode():
        return decode_then_add(codes, scales, m, bits, block, acc, row)

    def timed(fn):
        fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    ref = decode()
    np.testing.assert_allclose(lut(), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    t_lut, t_dec = timed(lut), timed(decode)
    return {"workers": workers, "m": m, "bits": bits, "lut_s": t_lut, "decode_add_s": t_dec,
            "speedup": t_dec / t_lut}


def progress(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what} ...", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", default="1gbit", help="tbf rate of every host link (default 1gbit)")
    p.add_argument("--size", default="64M", help="allreduce size (default 64M)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--quick", action="store_true", help="small sizes, 2 epochs (a smoke run)")
    p.add_argument("--parts", default="allreduce,training,kernels",
                   help="comma-separated, from: allreduce, training, kernels (default all)")
    p.add_argument("--jobs", default="gru,mlp", help=f"training jobs, from: {','.join(JOBS)}")
    p.add_argument("--variants", default="exact,lowbit,powersgd", help="training variants")
    p.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS,
                   help=f"exact steps before the 2-bit hook compresses (default {WARMUP_STEPS})")
    p.add_argument("--train-here", action="store_true",
                   help="train on this host, hosts faked with RINGFLOW_GROUPS (no namespaces): "
                        "accuracy only, step times are loopback ones")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.iters, args.epochs = "4M", 2, 2
    why = netns.available()
    if why:
        print(f"bench/compress.py: {why}", file=sys.stderr)
        return 2
    nbytes = parse_size(args.size)
    parts, jobs = set(args.parts.split(",")), args.jobs.split(",")
    bad = (parts - {"allreduce", "training", "kernels"}) | (set(jobs) - set(JOBS))
    if bad:
        p.error(f"unknown part or job: {sorted(bad)}")
    if args.train_here and "allreduce" in parts:
        p.error("--train-here is for --parts training,kernels: the allreduce needs the shaped hosts")
    print_header("compressed allreduce across hosts", environment() + [("load", load_average())])
    env = {}
    train_runs, ar, kern = {}, None, None
    with netns.Hosts(2) if not args.train_here else contextlib.nullcontext() as hosts:
        if hosts:
            hosts.shape(args.rate)
        if "allreduce" in parts:
            progress(f"[allreduce] {args.size} x {args.iters}")
            ranks = hosts.run([0, 0, 1, 1], "compress:allreduce_times", args=(nbytes, args.iters), env=env,
                              path=[HERE])
            ar = ranks[0]
            # Where a 2-bit call's time goes, per rank (every rank is busy
            # at once: four ranks share the host's CPUs).
            ar["phases_ms"] = {k: statistics.mean(r["2bit"]["phase_ms"][k] for r in ranks)
                               for k in ranks[0]["2bit"]["phase_ms"]}
        for job in jobs if "training" in parts else ():
            for variant in args.variants.split(","):
                progress(f"[training] {job} {variant}")
                targs = (JOBS[job], variant, args.epochs, args.warmup_steps)
                if args.train_here:
                    train_runs[job, variant] = netns.run_ranks(
                        [[]] * 4, [{"RINGFLOW_GROUPS": "h0,h0,h1,h1"}] * 4, "127.0.0.1", "compress:train",
                        targs, env, timeout=900, path=[HERE])[0]
                else:
                    train_runs[job, variant] = hosts.run([0, 0, 1, 1], "compress:train", args=targs, env=env,
                                                         path=[HERE], timeout=900)[0]
    if "kernels" in parts:
        kern = lut_vs_decode(8, (1 << 18) if args.quick else (1 << 22), 2, 3 if args.quick else 9)
    out = {"bytes": nbytes, "rate": args.rate, "load": load_average()}
    if ar:
        exact, low = ar["none"], ar["2bit"]
        print(f"# allreduce: 2 namespace hosts x 2 ranks, host links tbf {args.rate}, float32 sum, "
              f"{nbytes} B, mean of {args.iters} back to back (slowest rank); load {load_average()}")
        print(f"#{'mode':>9} {'time (ms)':>10} {'x-host B/call':>14} {'rel error':>10}")
        for name, r in (("exact", exact), ("2bit", low)):
            print(f"{name:>10} {r['s'] * 1e3:>10.1f} {r['bytes']:>14.0f} {r['rel_error']:>10.2e}")
        speedup, ratio = exact["s"] / low["s"], low["bytes"] / exact["bytes"]
        print(f"# 2-bit speedup {speedup:.2f}x, bytes ratio {ratio:.4f} (1/{1 / ratio:.1f})")
        print("# 2-bit call by phase (ms per call, mean over ranks; stats()['compress_phase_ms']):")
        print("#   " + "  ".join(f"{k} {v:.1f}" for k, v in ar["phases_ms"].items()))
        out.update(exact_s=exact["s"], lowbit_s=low["s"], speedup=speedup, bytes_ratio=ratio,
                   lowbit_rel_error=low["rel_error"], lowbit_phase_ms=ar["phases_ms"])
    if train_runs:
        print(f"# training: DDP over 4 ranks, {args.epochs} epochs, held-out accuracy, median step")
        print(f"#{'job':>5} {'variant':>9} {'accuracy':>9} {'step (ms)':>10}")
        for (job, variant), r in train_runs.items():
            print(f"{job:>6} {variant:>9} {r['accuracy']:>9.4f} {r['step_s'] * 1e3:>10.2f}")
        out["accuracies"] = {job: {v: r["accuracy"] for (j, v), r in train_runs.items() if j == job}
                             for job in jobs}
        out["step_s"] = {job: {v: r["step_s"] for (j, v), r in train_runs.items() if j == job}
                         for job in jobs}
    if kern:
        print(f"# LUT weighted sum vs decode-then-add, N={kern['workers']}, {kern['bits']} bits, "
              f"m={kern['m']}: {kern['lut_s'] * 1e3:.2f} ms vs {kern['decode_add_s'] * 1e3:.2f} ms, "
              f"{kern['speedup']:.2f}x")
        out["lut"] = kern
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
