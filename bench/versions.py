"""The version store against torch.save and a plain sequential file write, in the same run.

    python bench/versions.py [--sizes 100M,1G] [--dir DIR] [--json]

Runs against the installed ringflow.  For each state size (20 tensors
for 100M, 100 for 1G, like the layers of a model) it measures:
  fork         how long the training loop is held by BackgroundCommitter.submit with
               snapshot="fork": the fork;
               cow = the copy-on-write faults the loop's next update of every tensor
               pays while the commit process still holds the pages
  stall        the same with snapshot="copy" (a copy of the state; steady state, when
               it reuses the last snapshot's memory, and cold, the first one) beside
               torch.save + fsync and a plain write + fsync, which hold the loop for all
               their time
  bg_write     bytes / (durable - snapshot): the background writer's rate
               (hash, write, fsync, rename, ref), as a fraction of the plain write's
  checkout     Store.checkout from the page cache: memory-map + verify every hash
               ("read": memory-map without verifying, then read every byte once)
  dedup        bytes on disk of a commit where 10% of the tensors changed / a full commit
  loop         a real training loop whose parameters are the state (linear layers,
               SGD): a commit every --every steps, with snapshot="copy" (the loop waits
               for the copy in submit) and snapshot="overlap" (the copy runs beside the
               next forward and backward; the loop waits, in the optimizer's step
               pre-hook, for what is left of it).  stall = the loop's waits per commit;
               slowdown = the mean time of a step after a commit minus the median step
               without one (what the copy's memory traffic costs the computation too).
Every write is fsynced, so all three writers pay for the disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time

import torch

import ringflow
from ringflow.benchmark.measure import parse_size
from ringflow.versions import BackgroundCommitter, Store


def header() -> dict:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    return {"host": platform.node(), "cpus": os.cpu_count(), "git": sha or "?",
            "torch": torch.__version__, "ringflow": ringflow.__version__}


def make_state(nbytes: int, seed: int = 0) -> dict:
    """A multiple of 10 tensors (so that "10% changed" is exact), like a model's layers."""
    n = 100 if nbytes >= 1 << 30 else 20
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i:03d}.weight": torch.randn(nbytes // n // 4, generator=g) for i in range(n)}


def gb_total(state: dict) -> float:
    return sum(t.numel() * t.element_size() for t in state.values()) / 1e9


def disk_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def plain_write(state: dict, path: str) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for t in state.values():
            f.write(memoryview(t.numpy()).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def torch_save(state: dict, path: str) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def drop(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def write_every_page(state: dict) -> float:
    """The loop's next in-place update of every tensor (as an optimizer step)."""
    t0 = time.perf_counter()
    for v in state.values():
        v.mul_(1.0)
    return time.perf_counter() - t0


def fork_snapshot(state: dict, root: str) -> dict:
    """snapshot="fork": the loop waits for the fork, then pays a copy-on-write
    fault on each page it writes while the commit process still holds it
    (cow_tax: that update's time minus the same update's time afterwards)."""
    w = BackgroundCommitter(Store(root), snapshot="fork")
    t0 = time.perf_counter()
    fut = w.submit(state, step=0, message="forked")
    stall = time.perf_counter() - t0
    update_during = write_every_page(state)
    fut.result(timeout=3600)
    durable = time.perf_counter() - t0
    w.close()
    update_after = write_every_page(state)
    drop(root)
    return {"fork_stall_s": stall, "fork_durable_s": durable,
            "cow_tax_s": max(0.0, update_during - update_after)}


def bench_size(nbytes: int, work: str) -> dict:
    state = make_state(nbytes)
    total = sum(t.numel() * 4 for t in state.values())
    row = {"bytes": total, "tensors": len(state)}

    row["plain_s"] = plain_write(state, os.path.join(work, "plain.bin"))
    drop(os.path.join(work, "plain.bin"))
    row["torch_save_s"] = torch_save(state, os.path.join(work, "state.pt"))
    drop(os.path.join(work, "state.pt"))

    # Background commit: the loop waits for the snapshot only.
    root = os.path.join(work, "store")
    store = Store(root)
    w = BackgroundCommitter(store, snapshot="copy")
    t0 = time.perf_counter()
    fut = w.submit(state, step=0, message="full")
    stall_cold = time.perf_counter() - t0
    cid = fut.result(timeout=3600)
    durable = time.perf_counter() - t0
    # Steady state, as in training: the next snapshot reuses the written one's memory.
    # (Its objects exist already, so this commit writes only its commit file.)
    t0 = time.perf_counter()
    fut = w.submit(state, step=1, message="again")
    stall = time.perf_counter() - t0
    fut.result(timeout=3600)
    w.close()
    store.rollback(cid)
    row.update(stall_cold_s=stall_cold, stall_s=stall, durable_s=durable,
               bg_write_s=durable - stall_cold)
    row.update(fork_snapshot(state, os.path.join(work, "forked")))
    full_disk = disk_bytes(os.path.join(root, "objects")) + disk_bytes(os.path.join(root, "commits"))

    # Checkout from the page cache (the files were just written).
    # verified: every hash checked (the default); mmap_read: no hashes, every byte read
    # once (the page-cache ceiling); mmap: no hashes, nothing read (pages map lazily).
    for kind, verify, read in (("verified", True, False), ("mmap_read", False, True),
                               ("mmap", False, False)):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            out = store.checkout(cid, verify=verify)
            if read:
                for v in out.values():
                    v.max()  # reads every byte
            best = min(best, time.perf_counter() - t0)
            del out
        row[f"checkout_{kind}_s"] = best

    # Dedup: 10% of the tensors change.
    changed = dict(state)
    for i, k in enumerate(list(changed)):
        if i % 10 == 0:
            changed[k] = changed[k] * 1.001
    before = disk_bytes(os.path.join(root, "objects")) + disk_bytes(os.path.join(root, "commits"))
    store.commit(changed, step=1, message="10% changed")
    after = disk_bytes(os.path.join(root, "objects")) + disk_bytes(os.path.join(root, "commits"))
    row.update(changed_tensors=sum(1 for i in range(len(state)) if i % 10 == 0),
               full_commit_disk=full_disk, incremental_disk=after - before,
               dedup_ratio=(after - before) / full_disk)
    drop(root)

    # The ceilings on this machine: a memcpy of the state and sha256.
    t0 = time.perf_counter()
    snap = {k: v.clone() for k, v in state.items()}
    row["memcpy_s"] = time.perf_counter() - t0
    del snap
    t0 = time.perf_counter()
    for v in state.values():
        hashlib.sha256(memoryview(v.numpy()).cast("B")).digest()
    row["sha256_gbps"] = gb_total(state) / (time.perf_counter() - t0)
    gb = total / 1e9
    row.update(plain_gbps=gb / row["plain_s"], bg_write_gbps=gb / row["bg_write_s"],
               bg_vs_plain=row["plain_s"] / row["bg_write_s"],
               checkout_gbps=gb / row["checkout_verified_s"],
               checkout_mmap_read_gbps=gb / row["checkout_mmap_read_s"],
               checkout_mmap_gbps=gb / row["checkout_mmap_s"],
               stall_vs_torch_save=row["torch_save_s"] / row["stall_s"],
               memcpy_gbps=gb / row["memcpy_s"])
    return row


def layered_model(nbytes: int) -> torch.nn.Sequential:
    """Square linear layers holding `nbytes` of float32 parameters (20 or 100 layers, as make_state)."""
    n = 100 if nbytes >= 1 << 30 else 20
    d = int((nbytes / n / 4) ** 0.5)
    layers = []
    for _ in range(n):
        layers += [torch.nn.Linear(d, d, bias=False), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers)


def training_loop(nbytes: int, work: str, mode: str, steps: int, every: int, batch: int = 16) -> dict:
    torch.manual_seed(0)
    model = layered_model(nbytes)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    d = model[0].in_features
    root = os.path.join(work, f"loop-{mode}")
    w = BackgroundCommitter(Store(root), snapshot=mode)
    w.attach(opt)
    plain, after, stalls = [], [], []
    committed_at = None
    for step in range(steps):
        t0 = time.perf_counter()
        x = torch.randn(batch, d)
        opt.zero_grad(set_to_none=False)
        model(x).square().mean().backward()
        opt.step()   # overlap: waits here, in the pre-hook, for the last snapshot's copy
        took = time.perf_counter() - t0
        if committed_at is not None:
            stalls.append(committed_at + w.last_wait_s)
            after.append(took)
            committed_at = None
        elif step > 0:
            plain.append(took)
        w.last_wait_s = 0.0
        if step % every == 0 and step < steps - 1:
            w.submit(model, step=step, message=f"step {step}")
            committed_at = w.last_stall_s
    w.close()
    drop(root)
    base = sorted(plain)[len(plain) // 2]
    return {"mode": mode, "step_s": base, "stall_s": sorted(stalls)[len(stalls) // 2],
            "stall_max_s": max(stalls), "slowdown_s": sum(after) / len(after) - base,
            "commits": len(stalls)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100M,1G")
    p.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    p.add_argument("--steps", type=int, default=13, help="loop: training steps per snapshot kind")
    p.add_argument("--every", type=int, default=4, help="loop: steps between commits")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    h = header()
    work = tempfile.mkdtemp(prefix="ringflow-bench-versions-", dir=args.dir)
    rows = []
    try:
        if not args.json:
            print("# ringflow versions bench: " + ", ".join(f"{k} {v}" for k, v in h.items()))
            print(f"# {'size':>6} {'fork ms':>8} {'cow ms':>7} {'stall ms':>9} {'cold ms':>8} {'torch.save ms':>13} {'plain ms':>9} "
                  f"{'save/stall':>10} {'bg GB/s':>8} {'plain GB/s':>10} {'bg/plain':>8} {'co GB/s':>8} "
                  f"{'read GB/s':>9} {'dedup':>6} {'memcpy GB/s':>11} {'sha256 GB/s':>11}")
        for size in (parse_size(s) for s in args.sizes.split(",")):
            r = bench_size(size, work)
            rows.append(r)
            if not args.json:
                print(f"  {r['bytes'] / 2**20:>5.0f}M {r['fork_stall_s'] * 1e3:>8.1f} {r['cow_tax_s'] * 1e3:>7.1f} "
                      f"{r['stall_s'] * 1e3:>9.1f} {r['stall_cold_s'] * 1e3:>8.1f} "
                      f"{r['torch_save_s'] * 1e3:>13.1f} {r['plain_s'] * 1e3:>9.1f} "
                      f"{r['stall_vs_torch_save']:>9.1f}x {r['bg_write_gbps']:>8.3f} {r['plain_gbps']:>10.3f} "
                      f"{r['bg_vs_plain']:>8.2f} {r['checkout_gbps']:>8.3f} {r['checkout_mmap_read_gbps']:>9.2f} "
                      f"{r['dedup_ratio']:>6.3f} {r['memcpy_gbps']:>11.2f} {r['sha256_gbps']:>11.2f}", flush=True)
        if not args.json:
            print(f"# loop: a commit every {args.every} steps of a linear-layer model holding the state")
            print(f"# {'size':>6} {'snapshot':>8} {'step ms':>8} {'stall ms':>9} {'max ms':>7} {'slowdown ms':>11}")
        for r, size in zip(rows, (parse_size(s) for s in args.sizes.split(","))):
            r["loop"] = [training_loop(size, work, mode, args.steps, args.every) for mode in ("copy", "overlap")]
            for m in r["loop"]:
                if not args.json:
                    print(f"  {r['bytes'] / 2**20:>5.0f}M {m['mode']:>8} {m['step_s'] * 1e3:>8.1f} "
                          f"{m['stall_s'] * 1e3:>9.1f} {m['stall_max_s'] * 1e3:>7.1f} "
                          f"{m['slowdown_s'] * 1e3:>11.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"header": h, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
