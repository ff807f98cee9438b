"""Recursive doubling against the ring for small allreduces, same run.

8 ranks placed cyclically on 3 network-namespace hosts (TCP between them,
shared memory inside), then 8 ranks on this host; float32 sum, every size
from 4 B to 64 KiB under each algorithm set by a schedule (ring,
recursive_doubling) and untuned auto, back to back after a barrier, the
slowest rank's time per call, the median of --rounds rounds.  Needs root
(network namespaces).

    sudo python bench/doubling.py [--sizes 4,64,1K,4K,16K,64K] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))  # netns.py: test infrastructure, not in the wheel
import netns  # noqa: E402
from ringflow.benchmark.measure import format_size, parse_sizes  # noqa: E402
from ringflow.benchmark.report import environment, load_average, print_header  # noqa: E402

PLACEMENT = [0, 1, 2, 0, 1, 2, 0, 1]
ALGORITHMS = ("ring", "recursive_doubling", "auto")


def small_allreduces(rank, size, sizes, iters, rounds):
    """One rank: {algorithm: {bytes: seconds}}, each the median over rounds."""
    from datetime import timedelta

    import torch.distributed as dist
    from tune import back_to_back  # bench/tune.py: the same timing loop

    from ringflow.rendezvous import Communicator
    from ringflow.tune import Pattern, apply

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=rank == 0, timeout=timedelta(seconds=300))
    owner = Communicator(store, rank, size, 300.0)
    out = {}
    for algo in ALGORITHMS:
        apply(owner.comm, None if algo == "auto" else
              Pattern(tuple(range(size)), algorithms=((0, algo),)))
        out[algo] = {str(b): statistics.median(back_to_back(owner.comm, b, iters)
                                               for _ in range(rounds)) for b in sizes}
    apply(owner.comm, None)
    owner.close()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4,64,1K,4K,16K,64K")
    p.add_argument("--iters", type=int, default=30, help="calls per round (at most 40: 8**iters "
                   "must stay exact in float32 for the result check)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.iters <= 40:
        p.error("--iters must be 1..40")
    why = netns.available()
    if why:
        print(f"bench/doubling.py: {why}", file=sys.stderr)
        return 2
    sizes = [max(4, b) for b in parse_sizes(args.sizes)]
    work = (sizes, args.iters, args.rounds)
    print("[3 hosts] 8 ranks cyclic ...", file=sys.stderr)
    with netns.Hosts(3) as hosts:
        multi = hosts.run(PLACEMENT, "doubling:small_allreduces", args=work, path=[HERE], timeout=900)[0]
    print("[1 host] 8 ranks ...", file=sys.stderr)
    one = netns.run_ranks([[] for _ in range(8)], [{} for _ in range(8)], "127.0.0.1",
                          "doubling:small_allreduces", args=work, path=[HERE], timeout=900)[0]
    print_header("recursive doubling vs ring, small float32 sum allreduces (back-to-back, "
                 "slowest rank, median of rounds)",
                 environment() + [("load average", load_average()),
                                  ("3 hosts", "netns, 8 ranks cyclic (0,3,6 / 1,4,7 / 2,5), unshaped"),
                                  ("1 host", "8 ranks; auto = the shared-memory arena"),
                                  ("iters x rounds", f"{args.iters} x {args.rounds}")])
    line = {}
    for name, r in (("multi_host", multi), ("one_host", one)):
        print(f"# {name}")
        print(f"#{'size':>9} {'ring (us)':>11} {'rec.doub (us)':>14} {'ring/rd':>8} {'auto (us)':>10}")
        for b in sizes:
            ring, rd, auto = (r[a][str(b)] * 1e6 for a in ALGORITHMS)
            print(f"{format_size(b):>10} {ring:>11.0f} {rd:>14.0f} {ring / rd:>8.2f} {auto:>10.0f}")
        line[name] = {f"{a}_us": {k: v * 1e6 for k, v in r[a].items()} for a in ALGORITHMS}
    if args.json:
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
