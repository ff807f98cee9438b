"""Hierarchical ring aggregation against the flat ring across hosts.

Two network-namespace hosts with two ranks each, every host link shaped
with tbf (default 1 Gbit/s).  The same allreduces run with RINGFLOW_ALGO=ring
and =hierarchical (layout by host), for each rank placement asked for:
  block   ranks 0,1 on host 0 and 2,3 on host 1 (torchrun's): two of the flat
          ring's four hops cross hosts, so each host link carries 1.5x the
          tensor against the hierarchical ring's 1x -- 1.5x is the most
          hierarchy can win here.
  cyclic  ranks 0,2 on host 0 and 1,3 on host 1 (mpirun --map-by node,
          SLURM's cyclic distribution): every flat-ring hop crosses hosts,
          3x the tensor per host link.
Then one run with a rank made late on purpose shows the ring-relay watchdog
naming the slow hop.  Needs root (network namespaces, tc).

    sudo python bench/hierarchical.py [--rate 1gbit] [--sizes 1M,16M,64M] [--iters 5]
                                      [--placement block,cyclic] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))  # netns.py: test infrastructure, not in the wheel
import netns  # noqa: E402
from ringflow.benchmark.measure import allreduce_p50, parse_size  # noqa: E402


def timed_allreduces(rank, size, sizes, iters, late_ms):
    """One rank: p50 (max over ranks) of each size; with late_ms, rank 3 is
    late for one extra call and the watchdog's view is returned."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    import ringflow

    dist.init_process_group("ringflow", rank=rank, world_size=size, timeout=timedelta(seconds=120))
    out = {}
    for nbytes in sizes:
        x = torch.ones(nbytes // 4)
        dist.all_reduce(x)  # warm-up
        p50 = allreduce_p50(lambda: x, iters)  # in place: x grows by a factor of size per call
        if float(x[0]) != size ** (iters + 1):
            raise AssertionError(f"wrong allreduce result {float(x[0])}")
        out[str(nbytes)] = p50
    if late_ms:
        ringflow.reset_stats()
        x = torch.ones(1 << 16)
        if rank == 3:
            time.sleep(late_ms / 1000)
        dist.all_reduce(x)
        s = ringflow.stats()
        out["watchdog"] = {"warnings": s["warnings"], "last_warning": s["last_warning"]}
    dist.destroy_process_group()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", default="1gbit", help="tbf rate of every host link (default 1gbit)")
    p.add_argument("--sizes", default="1M,16M,64M")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--late-ms", type=int, default=500, help="how late rank 3 is in the watchdog run")
    p.add_argument("--placement", default="block,cyclic",
                   help="comma-separated, from: block, cyclic (default both)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    why = netns.available()
    if why:
        print(f"bench/hierarchical.py: {why}", file=sys.stderr)
        return 2
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    placements = {"block": [0, 0, 1, 1], "cyclic": [0, 1, 0, 1]}
    chosen = args.placement.split(",")
    unknown = [c for c in chosen if c not in placements]
    if unknown:
        p.error(f"--placement: unknown {unknown}; choose from {sorted(placements)}")
    results = {}
    with netns.Hosts(2) as hosts:
        hosts.shape(args.rate)
        for name in chosen:
            placement = placements[name]
            env = {"RINGFLOW_GROUPS": ",".join(f"h{h}" for h in placement)}
            for algo in ("ring", "hierarchical"):
                print(f"[{name} {algo}] running {args.sizes} x {args.iters} ...", file=sys.stderr)
                results[name, algo] = hosts.run(placement, "hierarchical:timed_allreduces",
                                                args=(sizes, args.iters, 0),
                                                env={**env, "RINGFLOW_ALGO": algo}, path=[HERE])[0]
        print("[watchdog] rank 3 late by", args.late_ms, "ms ...", file=sys.stderr)
        late = hosts.run(placements["block"], "hierarchical:timed_allreduces",
                         args=([], 1, args.late_ms),
                         env={"RINGFLOW_GROUPS": "h0,h0,h1,h1",
                              "RINGFLOW_WARN_MS": str(args.late_ms // 2)}, path=[HERE])
    print(f"# hierarchical vs flat ring: 2 namespace hosts x 2 ranks, every host link shaped "
          f"tbf {args.rate}; float32 sum; p50 of {args.iters} (max over ranks)")
    print(f"#{'placement':>9} {'size (B)':>12} {'ring (us)':>12} {'hier (us)':>12} {'speedup':>8}")
    rows = []
    for name in chosen:
        for nbytes in sizes:
            ring = results[name, "ring"][str(nbytes)]
            hier = results[name, "hierarchical"][str(nbytes)]
            print(f"{name:>10} {nbytes:>12} {ring * 1e6:>12.0f} {hier * 1e6:>12.0f} {ring / hier:>8.2f}")
            for algo, t in (("ring", ring), ("hierarchical", hier)):
                rows.append({"algo": algo, "bytes": nbytes, "p50_us": t * 1e6,
                             "speedup": ring / hier, "placement": name})
    print("# watchdog (block placement, RINGFLOW_WARN_MS = late/2, rank 3 late):")
    for rank, r in enumerate(late):
        print(f"#   rank {rank}: {r['watchdog']['warnings']} warning(s) {r['watchdog']['last_warning']}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
