"""The training service's three figures, each beside a baseline measured in the same run.

  latency   submit-to-first-step with 4 idle workers (a ps job of the small MLP;
            first step = the master applied the first optimizer step), target <= 2 s;
            baseline: one process building the same job and taking one step.
  collector the ordered collector summing 4 workers x 16 MiB float32 gradients
            arriving in a random order, against an unordered sum in arrival
            order (p50 of --iters), target <= 10% slower.
  ingest    `data add` of an NPY source into the repository (--ingest-mib), against
            np.load + np.save of the same array, target >= 200 MB/s.
  streamed  the same file streamed to a master process over the protocol (the path
            `data add` takes to a master on another host: chunks, sha256, ingest),
            beside the local ingest above.

    python bench/service.py [--iters 20] [--ingest-mib 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from ringflow.benchmark.measure import percentile
from ringflow.benchmark.report import environment, load_average, print_header
from ringflow.service.collector import OrderedCollector, unordered_sum
from ringflow.service.datasets import Repository
from ringflow.service.protocol import call
from ringflow.service.state import State

CLI = [sys.executable, "-m", "ringflow.cli"]


def latency(tmp: str, workers: int = 4, timeout: float = 300) -> dict:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    x = (rng.normal(0, 3, (3, 16))[y] + rng.normal(0, 1, (2000, 16))).astype(np.float32)
    np.savez(os.path.join(tmp, "blobs.npz"), x=x, y=y)
    master = subprocess.Popen(CLI + ["master", "--state", os.path.join(tmp, "state")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs = [master]
    try:
        port = int(re.search(r":(\d+),", master.stdout.readline()).group(1))
        addr = ("127.0.0.1", port)
        procs += [subprocess.Popen(CLI + ["worker", "--master", f"127.0.0.1:{port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for _ in range(workers)]
        call(addr, "data_add", name="blobs", source=os.path.join(tmp, "blobs.npz"))
        deadline = time.monotonic() + timeout
        while len(call(addr, "jobs")[0]["jobs"]) == 0 and time.monotonic() < deadline:
            spec = {"name": "lat", "dataset": "blobs", "entry": "ringflow.jobs.mlp:build",
                    "workers": workers, "mode": "ps", "steps": 2, "batch_size": 64}
            # workers idle = registered and polling: a warm-up job proves it
            wid = call(addr, "submit", spec=spec)[0]["job"]
            while call(addr, "job", job=wid)[0]["job"]["state"] != "done":
                if time.monotonic() > deadline:
                    raise RuntimeError("the warm-up job did not finish")
                time.sleep(0.1)
        time.sleep(1.0)
        job = call(addr, "submit", spec={**spec, "name": "timed"})[0]["job"]
        while (j := call(addr, "job", job=job)[0]["job"])["first_step_s"] is None:
            if time.monotonic() > deadline:
                raise RuntimeError("no first step within the timeout")
            time.sleep(0.02)
        service_s = j["first_step_s"]
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)
    from ringflow.jobs.mlp import build

    def one_step():
        job = build(data={"x": x, "y": y}, batch_size=64)
        opt = job.make_optimizer(job.model.parameters())
        job.loss_fn(job.model(job.train[0][:64]), job.train[1][:64]).backward()
        opt.step()

    one_step()   # warm, as the service's workers are: imports and torch's first-use setup done
    t0 = time.perf_counter()
    one_step()
    return {"first_step_s": service_s, "baseline_s": time.perf_counter() - t0, "target_s": 2.0}


def collector(iters: int, workers: int = 4, mib: int = 16) -> dict:
    n = mib * (1 << 20) // 4
    grads = [torch.randn(n, generator=torch.Generator().manual_seed(k)) for k in range(workers)]
    def run_ordered(order):
        c = OrderedCollector(workers, n, torch.float32)
        for k in order:
            c.add(k, grads[k])

    def run_unordered(order):
        unordered_sum(grads[k] for k in order)

    times = {run_ordered: [], run_unordered: []}
    for i in range(iters):
        order = random.sample(range(workers), workers)
        # alternate which goes first, so neither always finds the caches warmed by the other
        for fn in (run_ordered, run_unordered) if i % 2 else (run_unordered, run_ordered):
            t0 = time.perf_counter()
            fn(order)
            times[fn].append(time.perf_counter() - t0)
    ordered, unordered = times[run_ordered], times[run_unordered]
    o, u = percentile(ordered, 50), percentile(unordered, 50)
    return {"ordered_ms": o * 1e3, "unordered_ms": u * 1e3, "ratio": o / u, "target_ratio": 1.10,
            "workers": workers, "mib_each": mib}


def ingest(tmp: str, mib: int) -> dict:
    a = np.random.default_rng(0).random((mib * (1 << 20) // 4 // 256, 256), dtype=np.float32)
    src = os.path.join(tmp, "src.npy")
    np.save(src, a)
    del a
    t0 = time.perf_counter()
    np.save(os.path.join(tmp, "copy.npy"), np.load(src))
    base_s = time.perf_counter() - t0
    repo = Repository(State(os.path.join(tmp, "ingest-state")))
    t0 = time.perf_counter()
    m = repo.add("bench", src)
    add_s = time.perf_counter() - t0
    nbytes = os.path.getsize(src)
    return {"mb": nbytes / 1e6, "ingest_mb_s": nbytes / 1e6 / add_s,
            "baseline_mb_s": nbytes / 1e6 / base_s, "ratio": base_s / add_s,
            "shards": len(m["shards"]), "target_mb_s": 200.0, "src": src}


def streamed(tmp: str, src: str, timeout: float = 120) -> dict:
    from ringflow.service.uploads import send

    master = subprocess.Popen(CLI + ["master", "--state", os.path.join(tmp, "stream-state")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        addr = ("127.0.0.1", int(re.search(r":(\d+),", master.stdout.readline()).group(1)))
        t0 = time.perf_counter()
        uid, sha256 = send(lambda op, payload, **f: call(addr, op, payload, timeout=timeout, **f),
                           src)
        up_s = time.perf_counter() - t0
        call(addr, "data_add", name="bench", source=src, upload=uid, sha256=sha256,
             timeout=timeout)
        total_s = time.perf_counter() - t0
    finally:
        master.kill()
        master.wait(timeout=30)
    mb = os.path.getsize(src) / 1e6
    return {"mb": mb, "streamed_mb_s": mb / total_s, "upload_mb_s": mb / up_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--ingest-mib", type=int, default=256)
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print_header("ringflow training service", environment() + [("load", load_average())])
    with tempfile.TemporaryDirectory() as tmp:
        lat = latency(tmp)
        print(f"submit-to-first-step  {lat['first_step_s']:.3f} s (target <= 2 s)   baseline: one warm "
              f"process builds the job and steps in {lat['baseline_s']:.3f} s "
              f"(x{lat['first_step_s'] / lat['baseline_s']:.1f})")
        col = collector(args.iters)
        print(f"ordered collector     {col['ordered_ms']:.2f} ms vs unordered sum {col['unordered_ms']:.2f} ms "
              f"(4 x 16 MiB): x{col['ratio']:.3f} (target <= x1.10)")
        ing = ingest(tmp, args.ingest_mib)
        print(f"NPY ingest            {ing['ingest_mb_s']:.0f} MB/s of {ing['mb']:.0f} MB into "
              f"{ing['shards']} shards (target >= 200)   baseline np.load+np.save "
              f"{ing['baseline_mb_s']:.0f} MB/s (ingest takes x{1 / ing['ratio']:.2f} its time)")
        st = streamed(tmp, ing.pop("src"))
        print(f"NPY streamed ingest   {st['streamed_mb_s']:.0f} MB/s (upload alone "
              f"{st['upload_mb_s']:.0f} MB/s)   baseline: the local ingest above, "
              f"{ing['ingest_mb_s']:.0f} MB/s (x{ing['ingest_mb_s'] / st['streamed_mb_s']:.2f} "
              "its time)")
    print(f"# load average after: {load_average()}")
    if args.json:
        print(json.dumps({"latency": lat, "collector": col, "ingest": ing, "streamed": st,
                          "load": load_average()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
