"""Gradient packet aggregation against the ring allreduce, same run.

Each configuration runs the same float32 sum allreduces twice: once with
RINGFLOW_ALGO=aggregate through an aggregator process, once with the ring.
  unshaped  workers and aggregator on this host over loopback; the ring
            runs over loopback TCP (RINGFLOW_SHM=0), so both cross the
            network stack rather than shared memory.
  shaped    (root only) one network-namespace host per worker, every worker
            link shaped with tbf (default 1 Gbit/s, jumbo MTU); the
            aggregator sits on the bridge in the root namespace, like a
            switch: its own link is not shaped.  It listens beyond loopback,
            so the job uses a token (keyed MACs).
Reported per worker: p50 time (max over ranks), aggregated elements per
second (tensor elements / p50), bytes sent and received per call (the
ring's are 2(n-1)/n of the tensor each way, by construction), and the CPU
time per call of the aggregator and of a worker process (every thread),
which says whether the host's CPUs, not the links, set the pace.
--udp runs the aggregate calls once per way of moving datagrams through
the kernel (RINGFLOW_AGG_UDP, set for the workers and the aggregator:
offload = batches plus GSO/GRO, batch = recvmmsg/sendmmsg only, single =
one datagram per system call), side by side; dg/send and dg/recv are the
datagrams each worker moved per system call.  --packet-elems sets
RINGFLOW_AGG_PACKET_ELEMS (e.g. 352: 1472-byte datagrams, an Ethernet MTU).
The floor (unshaped runs; --floor no skips it) moves the very same datagrams
(sizes, count, window, socket buffers, udp path) between n worker threads
and one relay thread of this process over loopback with no computation at
all (ringflow._testing.udp_floor): the host's cost of the kernel copies
alone.  Its table gives its p50, its CPU per call, the elements/s its CPU
would allow with every CPU busy (`cpu bound`: elements / (CPU per call /
CPUs)), the same bound for the aggregate call, and `agg/floor`, the
aggregate p50's fraction of the floor's rate.

    python bench/aggregate.py [--workers 2,4] [--sizes 1M,16M,64M] [--iters 10]
                              [--udp offload,batch,single] [--packet-elems K]
                              [--shaped auto|yes|no] [--rate 1gbit] [--floor yes|no]
                              [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))  # netns.py: test infrastructure, not in the wheel
import netns  # noqa: E402
from ringflow.benchmark.measure import CpuMeter, allreduce_p50, parse_size  # noqa: E402
from ringflow.benchmark.report import environment, load_average, print_header  # noqa: E402


def timed_allreduces(rank, size, sizes, iters):
    """One rank: per size, the p50 (max over ranks) and this rank's
    aggregate traffic per call."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    import ringflow

    # One intra-op thread per rank, as torchrun sets for several ranks per
    # host: otherwise torch's OpenMP workers spin after the clone() and
    # equal() around each call, on the CPUs the communication needs.
    torch.set_num_threads(1)
    dist.init_process_group("ringflow", rank=rank, world_size=size, timeout=timedelta(seconds=300))
    # CPU per call: this rank's process (all threads), and rank 0 also
    # watches the aggregator's (same host, same pid namespace).
    cpu_pids = {"worker": "self"}
    if rank == 0 and os.environ.get("BENCH_AGGREGATOR_PID"):
        cpu_pids["aggregator"] = int(os.environ["BENCH_AGGREGATOR_PID"])
    out = {}
    for nbytes in sizes:
        x = torch.randn(nbytes // 4, generator=torch.Generator().manual_seed(rank))
        first = []  # the first timed result: every later one must equal it

        def same_as_first(y):
            if not first:
                first.append(y)
            elif not torch.equal(y, first[0]):
                raise AssertionError("two runs of the same allreduce differ")

        dist.all_reduce(x.clone())  # warm-up (and the aggregate job's setup)
        before = ringflow.stats()["aggregate"]
        meter = CpuMeter(cpu_pids)
        p50 = allreduce_p50(x.clone, iters, check=same_as_first, meter=meter)
        after = ringflow.stats()["aggregate"]
        delta = {k: after[k] - before[k] for k in after}
        out[str(nbytes)] = {"p50": p50, "cpu": meter.medians(),
                            "per_send_call": delta["packets_sent"] / max(1, delta["send_calls"]),
                            "per_recv_call": delta["packets_received"] / max(1, delta["recv_calls"]),
                            "sent": (after["bytes_sent"] - before["bytes_sent"]) / iters,
                            "received": (after["bytes_received"] - before["bytes_received"]) / iters,
                            "retransmits": (after["retransmits"] - before["retransmits"]) / iters}
    dist.destroy_process_group()
    return out


class AggregatorProcess:
    """`ringflow aggregator` as a child process (in the root namespace)."""

    def __init__(self, workers, host, env):
        cmd = [sys.executable, "-m", "ringflow.cli", "aggregator", "--port", "0", "--workers",
               str(workers), "--host", host]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(sys.path)})
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"the aggregator did not start: {line!r}")
        self.address = line.split("listening on ")[1].split()[0]

    def close(self) -> dict:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


def run_pair(workers, sizes, iters, launch, agg_host, agg_env, ring_env, paths):
    """({udp path: aggregate results}, ring results, [aggregator counters]) of rank 0."""
    aggregate, counters = {}, []
    for path in paths:
        path_env = {**agg_env, "RINGFLOW_AGG_UDP": path}
        agg = AggregatorProcess(workers, agg_host, path_env)
        try:
            env = {**path_env, "RINGFLOW_ALGO": "aggregate", "RINGFLOW_AGGREGATOR": agg.address,
                   "BENCH_AGGREGATOR_PID": str(agg.proc.pid)}
            aggregate[path] = launch(workers, env, sizes, iters)
        finally:
            counters.append(agg.close())
    ring = launch(workers, {**ring_env, "RINGFLOW_ALGO": "ring"}, sizes, iters)
    return aggregate, ring, counters


def rows_for(workers, sizes, aggregates, ring, shaped):
    rows = []
    for nbytes, (path, aggregate) in ((n, pa) for n in sizes for pa in aggregates.items()):
        a, r = aggregate[str(nbytes)], ring[str(nbytes)]
        rows.append({"workers": workers, "bytes": nbytes, "udp": path,
                     "datagrams_per_send_call": a["per_send_call"],
                     "datagrams_per_recv_call": a["per_recv_call"],
                     "elements_per_s": nbytes / 4 / a["p50"],
                     "bytes_sent_per_worker": a["sent"], "bytes_received_per_worker": a["received"],
                     "aggregate_p50_us": a["p50"] * 1e6, "ring_p50_us": r["p50"] * 1e6,
                     "shaped": shaped, "retransmits_per_call": a["retransmits"],
                     "aggregator_cpu_us": a["cpu"]["aggregator"] * 1e6,
                     "worker_cpu_us": a["cpu"]["worker"] * 1e6,
                     "ring_worker_cpu_us": r["cpu"]["worker"] * 1e6})
    return rows


def floor_rows(workers, sizes, paths, iters, packet_elems):
    """The kernel-copy floor of each (size, udp path), measured here (the
    workers and the aggregator have exited)."""
    from ringflow import _C, _testing

    rows = []
    for nbytes in sizes:
        for path in paths:
            os.environ["RINGFLOW_AGG_UDP"] = path
            try:
                slots = int(os.environ.get("RINGFLOW_AGG_SLOTS", _C.DEFAULT_SLOTS))
                f = _testing.udp_floor(workers, nbytes // 4, packet_elems or _C.DEFAULT_PACKET_ELEMS,
                                       slots, iters)
            finally:
                del os.environ["RINGFLOW_AGG_UDP"]
            rows.append({"workers": workers, "bytes": nbytes, "udp": path,
                         "floor_p50_us": statistics.median(f["seconds"]) * 1e6,
                         "floor_relay_cpu_us": f["relay_cpu"] * 1e6,
                         "floor_worker_cpu_us": f["worker_cpu"] * 1e6})
    return rows


def add_floors(rows, floors):
    """Each unshaped aggregate row gets its floor's figures, and the
    aggregate p50's fraction of the floor's rate."""
    for r in rows:
        for f in floors:
            if not r["shaped"] and all(r[k] == f[k] for k in ("workers", "bytes", "udp")):
                r.update({k: v for k, v in f.items() if k.startswith("floor_")})
                r["of_floor"] = f["floor_p50_us"] / r["aggregate_p50_us"]


def print_floors(rows):
    cpus = os.cpu_count() or 1
    print("# floor: the same datagrams, no computation (_testing.udp_floor: a relay thread and "
          "n worker threads here, over loopback); cpu in ms per call; cpu bound: elem/s with "
          f"all {cpus} CPUs busy")
    print(f"#{'workers':>7} {'size (B)':>10} {'udp':>7} {'floor (us)':>10} {'elem/s':>9} "
          f"{'relay cpu':>9} {'wkr cpu':>7} {'cpu bound':>9} {'agg (us)':>9} {'agg elem/s':>10} "
          f"{'agg cpu':>7} {'agg bound':>9} {'agg/floor':>9}")
    for r in rows:
        if "floor_p50_us" not in r:
            continue
        n, elems = r["workers"], r["bytes"] / 4
        floor_cpu = r["floor_relay_cpu_us"] + n * r["floor_worker_cpu_us"]
        agg_cpu = r["aggregator_cpu_us"] + n * r["worker_cpu_us"]
        print(f"{n:>8} {r['bytes']:>10} {r['udp']:>7} {r['floor_p50_us']:>10.0f} "
              f"{elems / r['floor_p50_us'] * 1e6:>9.2e} {r['floor_relay_cpu_us'] / 1e3:>9.1f} "
              f"{r['floor_worker_cpu_us'] / 1e3:>7.1f} {elems / (floor_cpu / cpus) * 1e6:>9.2e} "
              f"{r['aggregate_p50_us']:>9.0f} {r['elements_per_s']:>10.2e} {agg_cpu / 1e3:>7.1f} "
              f"{elems / (agg_cpu / cpus) * 1e6:>9.2e} {r['of_floor']:>9.2f}")


def print_rows(rows):
    """The table; the CPU columns are per call in ms (medians): the
    aggregator's, one worker's (rank 0's process), the ring's worker, and
    `busy`: (aggregator + n workers) / (CPUs x aggregate p50), how much of
    the host's CPU the aggregate call used while it ran."""
    cpus = os.cpu_count() or 1
    print(f"#{'shaped':>8} {'workers':>7} {'size (B)':>10} {'udp':>7} {'agg (us)':>10} "
          f"{'ring (us)':>10} {'agg/ring':>8} {'elem/s':>9} {'sent/S':>7} {'recv/S':>7} {'ring/S':>7} "
          f"{'resent':>6} {'aggr cpu':>8} {'wkr cpu':>7} {'ring cpu':>8} {'busy':>5} "
          f"{'dg/send':>7} {'dg/recv':>7}")
    for r in rows:
        n = r["workers"]
        busy = (r["aggregator_cpu_us"] + n * r["worker_cpu_us"]) / (cpus * r["aggregate_p50_us"])
        print(f"{str(r['shaped']):>9} {n:>7} {r['bytes']:>10} {r['udp']:>7} {r['aggregate_p50_us']:>10.0f} "
              f"{r['ring_p50_us']:>10.0f} {r['aggregate_p50_us'] / r['ring_p50_us']:>8.2f} "
              f"{r['elements_per_s']:>9.2e} {r['bytes_sent_per_worker'] / r['bytes']:>7.3f} "
              f"{r['bytes_received_per_worker'] / r['bytes']:>7.3f} {2 * (n - 1) / n:>7.3f} "
              f"{r['retransmits_per_call']:>6.1f} {r['aggregator_cpu_us'] / 1e3:>8.1f} "
              f"{r['worker_cpu_us'] / 1e3:>7.1f} {r['ring_worker_cpu_us'] / 1e3:>8.1f} {busy:>5.2f} "
              f"{r['datagrams_per_send_call']:>7.1f} {r['datagrams_per_recv_call']:>7.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="2,4")
    p.add_argument("--sizes", default="1M,16M,64M")
    p.add_argument("--iters", type=int, default=10,
                   help="timed calls per size (default 10: on 2 vCPUs a single call varies by a quarter)")
    p.add_argument("--shaped", choices=["auto", "yes", "no"], default="auto",
                   help="also run on shaped namespace hosts (auto: when root)")
    p.add_argument("--rate", default="1gbit", help="tbf rate of every worker link (default 1gbit)")
    p.add_argument("--udp", default="offload",
                   help="RINGFLOW_AGG_UDP values to run side by side (default offload)")
    p.add_argument("--packet-elems", type=int, help="RINGFLOW_AGG_PACKET_ELEMS (default: the core's)")
    p.add_argument("--floor", choices=["yes", "no"], default="yes",
                   help="also measure the kernel-copy floor of the unshaped runs (default yes)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    paths = args.udp.split(",")
    if args.packet_elems:
        os.environ["RINGFLOW_AGG_PACKET_ELEMS"] = str(args.packet_elems)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    counts = [int(w) for w in args.workers.split(",")]
    why = netns.available() if args.shaped != "no" else "not asked for"
    if args.shaped == "yes" and why:
        print(f"bench/aggregate.py: {why}", file=sys.stderr)
        return 2
    print_header("ringflow aggregate allreduce vs ring (float32 sum)",
                 environment() + [("load", load_average())])

    def local(workers, env, sizes_, iters):
        return netns.run_ranks([[]] * workers, [{}] * workers, "127.0.0.1",
                               "aggregate:timed_allreduces", (sizes_, iters), env, 600, [HERE])[0]

    rows, counters = [], []
    for n in counts:
        print(f"[unshaped] {n} workers ...", file=sys.stderr)
        a, r, c = run_pair(n, sizes, args.iters, local, "127.0.0.1", {}, {"RINGFLOW_SHM": "0"}, paths)
        unshaped = rows_for(n, sizes, a, r, False)
        if args.floor == "yes":
            print(f"[floor] {n} workers ...", file=sys.stderr)
            add_floors(unshaped, floor_rows(n, sizes, paths, args.iters, args.packet_elems))
        rows += unshaped
        counters += [("unshaped", n, path, one) for path, one in zip(paths, c)]
    if not why:
        for n in counts:
            print(f"[shaped {args.rate}] {n} worker hosts ...", file=sys.stderr)
            with netns.Hosts(n, mtu=65535) as hosts:
                hosts.shape(args.rate)

                def shaped(workers, env, sizes_, iters, hosts=hosts):
                    return hosts.run(list(range(workers)), "aggregate:timed_allreduces",
                                     args=(sizes_, iters), env=env, timeout=600, path=[HERE])[0]

                token = {"RINGFLOW_AGG_TOKEN": secrets.token_hex(16)}
                a, r, c = run_pair(n, sizes, args.iters, shaped, hosts.gateway, token, {}, paths)
                rows += rows_for(n, sizes, a, r, True)
                counters += [(f"shaped {args.rate}", n, path, one) for path, one in zip(paths, c)]
    print_rows(rows)
    print_floors(rows)
    for what, n, path, c in counters:
        print(f"# aggregator ({what}, {n} workers, udp {path}: gso={c['gso']} gro={c['gro']}): "
              f"results={c['results']} duplicates={c['duplicates']} "
              f"shadow_answers={c['shadow_answers']} stale={c['stale']} malformed={c['malformed']} "
              f"bad_mac={c['bad_mac']} datagrams/send call="
              f"{c['packets_sent'] / max(1, c['send_calls']):.1f} datagrams/receive call="
              f"{c['packets_received'] / max(1, c['recv_calls']):.1f}")
    print(f"# load at the end: {load_average()}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
