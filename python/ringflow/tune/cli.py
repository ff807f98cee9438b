"""`ringflow tune`: tune this topology (under torchrun, or spawning local
ranks), `--show` the cached schedules, `--export` them as a CSV table."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import timedelta

from ..addresses import free_port
from . import cache, export


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ringflow tune", description=__doc__)
    p.add_argument("--show", action="store_true", help="print the cached schedules and exit")
    p.add_argument("--export", metavar="CSV", help="write the cached schedules as a CSV table and exit")
    p.add_argument("--cache", help=f"cache file (default ${cache.CACHE_ENV} or ~/.cache/ringflow/tune.json)")
    p.add_argument("--ranks", type=int, default=2,
                   help="local ranks to spawn when not under torchrun (default 2)")
    p.add_argument("--retune", action="store_true", help="tune even when the cache has this topology")
    p.add_argument("--starts", type=int, default=8, help="starting patterns of the search (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--confirm", type=int, default=3, help="top patterns confirmed by running them")
    p.add_argument("--confirm-bytes", type=int, default=16 << 20,
                   help="message size in bytes the confirmation runs, one of the cost model's "
                   "buckets (default 16777216)")
    p.add_argument("--time-bound", type=float, default=20.0, help="seconds of link measurement at most")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a wait fails")
    return p


def describe(key: str, entry: dict) -> str:
    lines = [f"topology {key}: {entry['world']} ranks, hosts {', '.join(entry['hosts'])}"]
    p = entry.get("pattern")
    if p is None:
        lines.append("  schedule: untuned auto (no candidate beat it, or the best runs only the arena, as auto does)")
    else:
        lines.append(f"  ring order {p['order']}, groups {p['groups']}, piece {p['piece_bytes']} B, "
                     f"algorithms {[tuple(r) for r in p['algorithms']]}")
    size = entry.get("confirm_bytes", 0)
    for c in entry.get("candidates", []):
        lines.append(f"  candidate {c['pattern']['order']} groups {c['pattern']['groups']}: "
                     f"predicted {c['predicted_s'] * 1e3:.2f} ms, measured {c['measured_s'] * 1e3:.2f} ms "
                     f"at {size} B (ratio {c['predicted_s'] / c['measured_s']:.2f})")
    u = entry.get("untuned")
    if u:
        lines.append(f"  untuned auto: predicted {u['predicted_s'] * 1e3:.2f} ms, "
                     f"measured {u['measured_s'] * 1e3:.2f} ms")
    over = entry.get("overheads", {})
    if "call_s" in over:
        lines.append(f"  fitted: per call {over['call_s'] * 1e6:.0f} us, latency x{over['latency_scale']:.2f}"
                     + (f", aggregator {over['agg_fixed_s'] * 1e6:.0f} us + "
                        f"{over['agg_per_byte_s'] * 1e9:.3f} ns/B" if over.get("agg_per_byte_s") else ""))
    m = entry.get("measurement", {})
    lines.append(f"  tuned in {entry.get('tune_s', 0):.1f} s (links: {m.get('rounds_run')}/"
                 f"{m.get('rounds')} rounds, {m.get('seconds', 0):.1f} s; search {m.get('search_s', 0):.1f} s)")
    return "\n".join(lines)


def _worker(args) -> int:
    import torch.distributed as dist

    from ..rendezvous import Communicator
    from .tuner import tune_or_load

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=rank == 0, timeout=timedelta(seconds=args.timeout))
    owner = Communicator(store, rank, size, args.timeout, prefix="ringflow-tune")
    try:
        entry, hit = tune_or_load(owner, args.cache, args.retune, starts=args.starts, seed=args.seed,
                                  confirm=args.confirm, confirm_bytes=args.confirm_bytes,
                                  time_bound_s=args.time_bound)
        if rank == 0:
            key = cache.fingerprint(owner.hosts, _shm_setting())
            print(("cached: " if hit else "tuned: ") + describe(key, entry), flush=True)
    finally:
        owner.close()
    return 0


def _shm_setting() -> bool:
    from .. import _C

    return _C.env_bool("RINGFLOW_SHM", True)


def _spawn(args, argv) -> int:
    """Local ranks, each `ringflow tune` under a torchrun-like environment."""
    if args.ranks < 1:
        raise ValueError(f"--ranks must be at least 1, got {args.ranks}")
    port = free_port()
    procs = []
    for rank in range(args.ranks):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(args.ranks), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "ringflow.cli", "tune"] + argv, env=env))
    deadline = time.monotonic() + args.timeout
    codes = []
    for rank, p in enumerate(procs):
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise TimeoutError(f"ringflow tune: rank {rank} still running after {args.timeout}s "
                               "(killed every rank)") from None
    bad = [r for r, c in enumerate(codes) if c]
    if bad:
        print(f"ringflow tune: ranks {bad} failed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.show or args.export:
        entries = cache.load_all(args.cache)
        if args.show:
            if not entries:
                print(f"no tuned schedules in {args.cache or cache.path()}")
            for key, entry in sorted(entries.items()):
                print(describe(key, entry))
        if args.export:
            with open(args.export, "w") as f:
                f.write(export.to_csv(entries))
            print(f"wrote {len(entries)} topologies to {args.export}")
        return 0
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return _worker(args)
    return _spawn(args, argv)
