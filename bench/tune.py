"""The schedule tuner (mechanism 9) against untuned auto, in the same run.

Asymmetric: 3 network-namespace hosts, 8 ranks placed cyclically (0,3,6 on
host 0; 1,4,7 on host 1; 2,5 on host 2), every host pair shaped per
direction with htb: hosts 0-1 at --fast (1 Gbit/s), the other pairs at
--slow (200 Mbit/s).  Untuned auto runs the hierarchical rings by host;
then a cold tune (link measurement, multi-start search, top 3 confirmed by
running them) and the same allreduces under the tuned schedule, each beside
the cost model's prediction; then a cache hit as RINGFLOW_TUNE=1 does it.
Symmetric: 8 ranks on this host (no namespaces), untuned against tuned.
Needs root (network namespaces, tc).

    sudo python bench/tune.py [--sizes 1M,16M,64M] [--iters 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))  # netns.py: test infrastructure, not in the wheel
import netns  # noqa: E402
from ringflow.benchmark.measure import parse_sizes  # noqa: E402
from ringflow.benchmark.report import environment, load_average, print_header  # noqa: E402

PLACEMENT = [0, 1, 2, 0, 1, 2, 0, 1]


def back_to_back(comm, nbytes: int, iters: int) -> float:
    """Seconds per allreduce, `iters` back to back after a barrier, the
    slowest rank's figure; checks the sum."""
    import numpy as np

    from ringflow._dtypes import DTYPE_CODE, REDUCE_OP_CODE

    f32, f64 = DTYPE_CODE["float32"], DTYPE_CODE["float64"]
    x = np.ones(nbytes // 4, np.float32)
    comm.allreduce(x.ctypes.data, x.size, f32, REDUCE_OP_CODE["sum"], True).wait()
    x[:] = 1
    comm.barrier(True).wait()
    t0 = time.perf_counter()
    for _ in range(iters):
        comm.allreduce(x.ctypes.data, x.size, f32, REDUCE_OP_CODE["sum"], True).wait()
    t = np.array([(time.perf_counter() - t0) / iters])
    if x[0] != comm.size ** iters:
        raise AssertionError(f"wrong allreduce result {x[0]} (want {comm.size ** iters})")
    comm.allreduce(t.ctypes.data, 1, f64, REDUCE_OP_CODE["max"], True).wait()
    return float(t[0])


def tuned_against_untuned(rank, size, sizes, iters, cache):
    """One rank: untuned auto, a cold tune, tuned, the model's predictions,
    then a cache hit (as RINGFLOW_TUNE=1 at init does)."""
    from datetime import timedelta

    import torch.distributed as dist

    from ringflow import _C
    from ringflow.rendezvous import Communicator
    from ringflow.tune.pattern import BUCKETS, Pattern
    from ringflow.tune.tuner import apply, model_of, tune_or_load, untuned_pattern

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=rank == 0, timeout=timedelta(seconds=300))
    owner = Communicator(store, rank, size, 300.0)
    comm = owner.comm
    out = {"untuned_algorithm": {str(b): _C.allreduce_algorithm(comm, b) for b in sizes}}
    # What auto runs, as a pattern the model can price: its algorithm per bucket.
    untuned = untuned_pattern(owner.hosts)
    rules = tuple((b, _C.allreduce_algorithm(comm, b)) for b in BUCKETS)
    untuned = Pattern(untuned.order, untuned.groups, 256 << 10, ((0, rules[0][1]),) + rules[1:])
    for b in sizes:  # untimed: the first traffic after init pays the links' warm-up
        back_to_back(comm, b, 1)
    entry, hit = tune_or_load(owner, cache, retune=True)
    out["tune_s"] = entry["tune_s"]
    out["entry"] = entry
    out["tuned_algorithm"] = {str(b): _C.allreduce_algorithm(comm, b) for b in sizes}
    chosen = entry["pattern"]
    # Untuned and tuned take turns, three rounds, each size timed for at least
    # 4 MiB of traffic (40 calls at most, so that the sum stays exact): the medians, so that a noisy moment cannot pick a side.
    rounds = {"untuned_s": {}, "tuned_s": {}}
    for _ in range(3):
        for key, pattern in (("untuned_s", None), ("tuned_s", chosen)):
            apply(comm, None if pattern is None else Pattern.from_json(pattern))
            for b in sizes:
                rounds[key].setdefault(str(b), []).append(
                    back_to_back(comm, b, min(40, iters * max(1, (4 << 20) // b))))
    for key, runs in rounds.items():
        out[key] = {b: sorted(t)[len(t) // 2] for b, t in runs.items()}
    model = model_of(entry)
    out["predicted_s"] = {str(b): model.predict(Pattern.from_json(chosen) if chosen else untuned, b)
                          for b in sizes if b in BUCKETS}
    out["untuned_predicted_s"] = {str(b): model.predict(untuned, b) for b in sizes if b in BUCKETS}
    _C.clear_schedule(comm)
    # Every rank arrives together, as after init's rendezvous: the figure is
    # the hit itself, not the skew the model's predictions above leave.
    comm.barrier(True).wait()
    out["cache_hit_stages_ms"] = {}
    t0 = time.perf_counter()
    _, hit = tune_or_load(owner, cache, timings=out["cache_hit_stages_ms"])
    out["cache_hit_ms"] = (time.perf_counter() - t0) * 1e3
    out["cache_hit"] = hit
    owner.close()
    return out


def _slowest_hit(per_rank: list[dict]) -> dict:
    """Rank 0's figures (every rank holds the same timings), with the
    slowest rank's cache hit."""
    r = dict(per_rank[0])
    slowest = max(per_rank, key=lambda x: x["cache_hit_ms"])
    r["cache_hit_ms"] = slowest["cache_hit_ms"]
    r["cache_hit_stages_ms"] = slowest["cache_hit_stages_ms"]
    if not all(x["cache_hit"] for x in per_rank):
        raise AssertionError("a rank missed the cache it had just written")
    return r


def shape_pairs(hosts: netns.Hosts, fast: str, slow: str, fast_pair=(0, 1)) -> None:
    """Per-direction, per-destination rates on each host's eth0 (htb)."""
    for i, ns in enumerate(hosts.names):
        def tc(*args):
            subprocess.run(["ip", "netns", "exec", ns, "tc", *args], check=True, capture_output=True)
        tc("qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb", "default", "99")
        tc("class", "add", "dev", "eth0", "parent", "1:", "classid", "1:99", "htb", "rate", "10gbit")
        for j, addr in enumerate(hosts.addrs):
            if j == i:
                continue
            rate = fast if {i, j} == set(fast_pair) else slow
            tc("class", "add", "dev", "eth0", "parent", "1:", "classid", f"1:{10 + j}", "htb",
               "rate", rate, "ceil", rate, "burst", "256kb")
            tc("filter", "add", "dev", "eth0", "protocol", "ip", "parent", "1:", "prio", "1", "u32",
               "match", "ip", "dst", f"{addr}/32", "flowid", f"1:{10 + j}")


def run_asymmetric(args, sizes, env, cache_file) -> dict:
    with netns.Hosts(3) as hosts:
        shape_pairs(hosts, args.fast, args.slow)
        print(f"[asymmetric] 8 ranks cyclic on 3 hosts, sizes {args.sizes} x {args.iters} ...",
              file=sys.stderr)
        return _slowest_hit(hosts.run(PLACEMENT, "tune:tuned_against_untuned",
                                      args=(sizes, args.iters, cache_file), env=env, path=[HERE],
                                      timeout=900))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1M,16M,64M")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--fast", default="1gbit")
    p.add_argument("--slow", default="200mbit")
    p.add_argument("--parts", default="asymmetric,symmetric",
                   help="which runs: asymmetric, symmetric or both (default both)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    why = netns.available()
    if why:
        print(f"bench/tune.py: {why}", file=sys.stderr)
        return 2
    sizes = parse_sizes(args.sizes)
    env = {}
    parts = args.parts.split(",")
    unknown = [x for x in parts if x not in ("asymmetric", "symmetric")]
    if unknown:
        p.error(f"--parts: unknown {unknown}; choose from asymmetric, symmetric")
    asym = sym = None
    with tempfile.TemporaryDirectory() as tmp:
        if "asymmetric" in parts:
            asym = run_asymmetric(args, sizes, env, os.path.join(tmp, "asym.json"))
        if "symmetric" in parts:
            print("[symmetric] 8 ranks on this host ...", file=sys.stderr)
            sym = _slowest_hit(netns.run_ranks([[] for _ in range(8)], [{} for _ in range(8)],
                                               "127.0.0.1", "tune:tuned_against_untuned",
                                               args=(sizes, args.iters, os.path.join(tmp, "sym.json")),
                                               env=env, path=[HERE], timeout=900))
    print_header("schedule tuner vs untuned auto (float32 sum, back-to-back, slowest rank)",
                 environment() + [("load average", load_average()),
                                  ("asymmetric", f"3 netns hosts, 8 ranks cyclic; hosts 0-1 {args.fast}, "
                                                 f"others {args.slow} (htb per direction)"),
                                  ("symmetric", "8 ranks on this host")])
    report = {}
    for name, r in (("asymmetric", asym), ("symmetric", sym)):
        if r is None:
            continue
        e = r["entry"]
        print(f"# {name}: cold tune {r['tune_s']:.1f} s (links {e['measurement']['seconds']:.1f} s, "
              f"{e['measurement']['rounds_run']}/{e['measurement']['rounds']} rounds; "
              f"search {e['measurement'].get('search_s', 0):.1f} s); cache hit {r['cache_hit_ms']:.1f} ms")
        stages = ", ".join(f"{k[:-3]} {v:.1f}" for k, v in r["cache_hit_stages_ms"].items())
        print(f"#   cache hit stages (ms, slowest rank): {stages}")
        over = e.get("overheads", {})
        print(f"#   fitted: call {over.get('call_s', 0) * 1e6:.0f} us, latency x{over.get('latency_scale', 1):.2f}")
        print(f"#   chosen: {e['pattern']}")
        print(f"#{'size (B)':>11} {'untuned':>13} {'(us)':>8} {'model':>8} {'tuned':>13} {'(us)':>8} "
              f"{'model':>8} {'speedup':>8}   (model: the cost model's prediction / measured)")
        nan = float("nan")
        for b in sizes:
            u, t = r["untuned_s"][str(b)], r["tuned_s"][str(b)]
            pu, pt = r["untuned_predicted_s"].get(str(b), nan), r["predicted_s"].get(str(b), nan)
            print(f"{b:>12} {r['untuned_algorithm'][str(b)]:>13} {u * 1e6:>8.0f} {pu / u:>8.2f} "
                  f"{r['tuned_algorithm'][str(b)]:>13} {t * 1e6:>8.0f} {pt / t:>8.2f} {u / t:>8.2f}")
        report[name] = r
    if args.json:
        def us(d):
            return {k: v * 1e6 for k, v in d.items()}

        a, line = report.get("asymmetric"), {}
        if a is not None:
            line = {"untuned_us": us(a["untuned_s"]), "tuned_us": us(a["tuned_s"]),
                    "predicted_us": us(a["predicted_s"]),
                    "untuned_predicted_us": us(a["untuned_predicted_s"]), "tune_s": a["tune_s"],
                    "cache_hit_ms": a["cache_hit_ms"], "cache_hit_stages_ms": a["cache_hit_stages_ms"],
                    "pattern": a["entry"]["pattern"]}
        if sym is not None:
            line["symmetric"] = {"untuned_us": us(sym["untuned_s"]), "tuned_us": us(sym["tuned_s"]),
                                 "predicted_us": us(sym["predicted_s"]), "tune_s": sym["tune_s"],
                                 "cache_hit_ms": sym["cache_hit_ms"],
                                 "cache_hit_stages_ms": sym["cache_hit_stages_ms"],
                                 "pattern": sym["entry"]["pattern"]}
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
