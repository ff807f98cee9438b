"""Allreduce benchmark: ringflow against gloo, in the same run, nccl-tests style.

    python bench/allreduce.py --world 2 [--sizes 4K,64K,1M,16M,64M] [--algo shm] [--no-barrier] [--json]

Spawns --world real processes on this host.  Each initialises the default
group with ringflow and a gloo group over the same ranks, then, per size and
backend, runs warm-ups and timed allreduces, each after a barrier (always on
the gloo group, so both backends are timed behind the same synchroniser).
Every result is checked: inputs are small integers, so sums are exact.
The parent prints the header and the table (rank 0's view: the slowest rank
per iteration, then the median), and with --json a last line of JSON.
Before each size of 16 MiB or more, the ranks measure their memory
bandwidth together (an in-place update of 64 MiB each), and that size's rows
say what fraction of the busbw this bandwidth allows they reach.

With --no-barrier the timed allreduces run back to back instead: a barrier
only before each of ROUNDS rounds, a round's time per iteration is its total
over its iterations on each rank, and a row's samples are the rounds (max
over ranks).  A barrier's exit skew is then spread over a round instead of
counted in every iteration.

Exit status: 0 ok; 1 a wrong result, or a rank raised, died or hung.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import harness, measure, memory, report

# "ringflow-shared" is ringflow on a tensor from ringflow.shared_empty.
BACKENDS = ("ringflow", "ringflow-shared", "gloo")
DEFAULT_BACKENDS = "ringflow,ringflow-shared,gloo"
# name -> (torch dtype attribute, nccl-tests' name for the `type` column)
DTYPES = {
    "float32": ("float32", "float"),
    "float64": ("float64", "double"),
    "float16": ("float16", "half"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "int32": ("int32", "int32"),
    "int64": ("int64", "int64"),
    "int8": ("int8", "int8"),
    "uint8": ("uint8", "uint8"),
}
OPS = ("sum", "prod", "min", "max")
DEFAULT_SIZES = "4K,64K,1M,16M,64M"
# --no-barrier: rounds per row (the samples of p50/p99), each one barrier
# then back-to-back iterations.
ROUNDS = 5
# Rows this large are also reported against the memory bound, measured
# just before the size by every rank updating MEMORY_BYTES in place at once
# (well above L3): on a shared host the bandwidth drifts within a run.
BOUND_BYTES = 16 << 20
MEMORY_BYTES = 64 << 20
MEMORY_REPS = 5
OVERLAP = 0.9  # of the longest rank's run, for a repetition to count as concurrent


def default_iters(nbytes: int) -> int:
    """Enough samples for a median; fewer where one iteration costs ~0.1 s."""
    if nbytes >= 256 << 20:
        return 5
    if nbytes >= 16 << 20:
        return 10
    return 20


def default_round_iters(nbytes: int) -> int:
    """--no-barrier iterations per round: enough that one barrier's skew
    (tens to hundreds of us) is small beside a round."""
    if nbytes <= 64 << 10:
        return 200
    if nbytes <= 1 << 20:
        return 50
    return default_iters(nbytes)


# ---------------------------------------------------------------- one rank


def _inputs(torch, op: str, count: int, rank: int, world: int, dtype):
    """(this rank's input, the exact expected result) for small-integer data."""
    i = torch.arange(count, dtype=torch.int64)
    if op == "prod":
        # One rank contributes a 2 at each position, the rest 1: the product
        # is exactly 2 in every dtype, however many ranks there are.
        def mine(r):
            return torch.where(i % world == r, 2, 1)

        expected = torch.full((count,), 2, dtype=torch.int64)
    else:
        def mine(r):
            return (i + r) % 3 + 1  # 1..3; a sum over 8 ranks is <= 24

        combine = {"sum": torch.add, "min": torch.minimum, "max": torch.maximum}[op]
        expected = mine(0)
        for r in range(1, world):  # one rank at a time: 8 x 64M int64 would be 4 GiB
            expected = combine(expected, mine(r))
    return mine(rank).to(dtype), expected.to(dtype)


def _update_spans(torch, barrier) -> list[tuple[float, float]]:
    """(start, end) on the host-wide monotonic clock of this rank adding 1
    in place to MEMORY_BYTES of float32, every rank at once after a barrier,
    MEMORY_REPS times (the first touch untimed).  Each line is read and
    written back, with no read-for-ownership of a separate destination: the
    traffic an allreduce that writes where it has just read needs, and the
    fastest way the memory system moves it (a copy, counted read + write,
    measures ~0.6 of it).
    On huge pages where the kernel gives them: ~1.2x the small-page rate
    here, and what the allreduce's own buffers get (RINGFLOW_SHM_HUGEPAGES),
    so the bound is not lowered by TLB misses the allreduce does not pay."""
    try:
        x = memory.hugepage_empty(torch, MEMORY_BYTES // 4, torch.float32)
    except OSError:  # no transparent huge pages: small ones
        x = torch.empty(MEMORY_BYTES // 4)
    x.zero_()
    spans = []
    for _ in range(MEMORY_REPS):
        barrier()
        t0 = time.monotonic()
        x.add_(1.0)
        spans.append((t0, time.monotonic()))
    return spans


def memory_bound_busbw(memory_gbps: float, world: int) -> float:
    """The largest allreduce busbw memory allows: every rank must read its
    input once and write its output once, 2*n*S bytes in all, at
    `memory_gbps` (read + write) for the n ranks together; t >= 2nS / B, so
    busbw = S/t * 2(n-1)/n <= B (n-1) / n^2."""
    return memory_gbps * (world - 1) / world ** 2


def _rank_main(rank: int, world: int, cfg: dict) -> dict:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    import ringflow  # registers the backend

    # One intra-op thread: on a small host, OpenMP threads left spinning by
    # the result check would steal CPU from the next timed allreduce.
    torch.set_num_threads(1)
    timeout = timedelta(seconds=cfg["timeout"])
    dist.init_process_group("ringflow", rank=rank, world_size=world, timeout=timeout)
    gloo = dist.new_group(backend="gloo", timeout=timeout)
    groups = {"ringflow": None, "ringflow-shared": None, "gloo": gloo}
    op = {"sum": dist.ReduceOp.SUM, "prod": dist.ReduceOp.PRODUCT,
          "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[cfg["op"]]
    dtype = getattr(torch, DTYPES[cfg["dtype"]][0])
    itemsize = torch.empty((), dtype=dtype).element_size()

    out, huge_fractions, memory_spans = [], {}, {}
    total = len(cfg["sizes"]) * len(cfg["backends"])
    step = 0
    for nbytes in cfg["sizes"]:
        count = max(1, nbytes // itemsize)
        src, expected = _inputs(torch, cfg["op"], count, rank, world, dtype)
        buf = memory.hugepage_empty(torch, count, dtype) if cfg["hugepages"] else torch.empty_like(src)
        buf.copy_(src)  # faults it in (as huge pages where asked) before any timing
        buffers = {b: buf for b in cfg["backends"]}
        if "ringflow-shared" in buffers:
            buffers["ringflow-shared"] = ringflow.shared_empty(count, dtype=dtype)
        if world > 1 and nbytes >= BOUND_BYTES:
            memory_spans[nbytes] = _update_spans(torch, lambda: dist.barrier(group=gloo))
        if cfg["hugepages"] and rank == 0:
            huge_fractions[measure.format_size(nbytes)] = round(memory.huge_page_fraction(buf), 3)
        for backend in cfg["backends"]:
            step += 1
            harness.report_progress(step, total, f"{measure.format_size(nbytes)} {backend}")
            group, buf = groups[backend], buffers[backend]

            def checked_allreduce():
                """Refill, barrier, one timed allreduce; (seconds, wrong elements)."""
                buf.copy_(src)
                dist.barrier(group=gloo)
                t0 = time.perf_counter()
                dist.all_reduce(buf, op=op, group=group)
                elapsed = time.perf_counter() - t0
                return elapsed, int(torch.count_nonzero(buf != expected))

            times, bad_iters, wrong = [], 0, 0
            for _ in range(cfg["warmup"]):
                _, wrong = checked_allreduce()
                bad_iters += wrong > 0
            if cfg["compute_us"]:
                # Training's call pattern (DDP's buckets between pieces of
                # backward): computation, then the call, no barrier between
                # calls.  A sample is one call, the slowest rank's.
                iters = cfg["iters"] or default_round_iters(nbytes)
                dist.barrier(group=gloo)
                for _ in range(iters):
                    measure.busy(cfg["compute_us"])
                    t0 = time.perf_counter()
                    dist.all_reduce(buf, op=op, group=group)
                    times.append(time.perf_counter() - t0)
                _, wrong = checked_allreduce()  # and check once more, from a fresh input
                bad_iters += wrong > 0
            elif cfg["no_barrier"]:
                per_round = cfg["iters"] or default_round_iters(nbytes)
                for _ in range(ROUNDS):
                    # Each iteration reduces the previous result in place:
                    # the same work for both backends, and no refill timed.
                    # (Values grow; only the checked calls compare them.)
                    dist.barrier(group=gloo)
                    t0 = time.perf_counter()
                    for _ in range(per_round):
                        dist.all_reduce(buf, op=op, group=group)
                    times.append((time.perf_counter() - t0) / per_round)
                _, wrong = checked_allreduce()  # and check once more, from a fresh input
                bad_iters += wrong > 0
                iters = ROUNDS * per_round
            else:
                iters = cfg["iters"] or default_iters(nbytes)
                for _ in range(iters):
                    elapsed, wrong = checked_allreduce()
                    bad_iters += wrong > 0
                    times.append(elapsed)
            out.append({"backend": backend, "bytes": count * itemsize, "count": count,
                        "times": times, "iters": iters, "wrong": wrong, "wrong_iters": bad_iters})
        del src, expected, buf, buffers
    dist.barrier(group=gloo)
    dist.destroy_process_group()
    return {"rows": out, "huge_fractions": huge_fractions, "memory_spans": memory_spans}


# ---------------------------------------------------------------- the parent


def memory_gbps(per_rank: list[dict], world: int, nbytes: int) -> float | None:
    """The ranks' memory bandwidth together (GB/s, read + write), measured
    before size `nbytes`, from the fastest repetition in which the ranks ran
    together: all ranks' bytes over the slowest rank's time, where every
    rank's run overlaps the others' for 90% of the longest (the barrier's
    exit skew can leave a rank running alone, at up to 0.85 of what two
    get together here); where none did (ranks taking turns on an
    oversubscribed host), all ranks' bytes over their joint span.  None
    where it was not measured."""
    if nbytes not in per_rank[0]["memory_spans"]:
        return None
    together, spans = [], []
    for rep in zip(*[r["memory_spans"][nbytes] for r in per_rank]):
        longest = max(end - start for start, end in rep)
        overlap = min(end for _, end in rep) - max(start for start, _ in rep)
        if overlap >= OVERLAP * longest:
            together.append(longest)
        spans.append(max(end for _, end in rep) - min(start for start, _ in rep))
    return world * 2 * MEMORY_BYTES / min(together or spans) / 1e9


def _rows(per_rank: list[dict], cfg: dict, world: int) -> list[dict]:
    """Per (size, backend): the slowest rank per sample (an iteration, or a
    --no-barrier round's mean), then p50 and p99 over samples; large rows
    also as a fraction of the memory bound measured in the same run."""
    rows = []
    for k, first in enumerate(per_rank[0]["rows"]):
        mine = [r["rows"][k] for r in per_rank]
        times = measure.max_over_ranks([m["times"] for m in mine])
        p50 = measure.percentile(times, 50)
        algbw, busbw = measure.bandwidths("allreduce", world, first["bytes"], p50)
        rows.append({
            "backend": first["backend"], "world": world, "bytes": first["bytes"],
            "count": first["count"], "type": DTYPES[cfg["dtype"]][1], "dtype": cfg["dtype"],
            "op": cfg["op"], "p50_us": p50 * 1e6, "p90_us": measure.percentile(times, 90) * 1e6,
            "p99_us": measure.percentile(times, 99) * 1e6,
            "min_us": min(times) * 1e6, "algbw": algbw, "busbw": busbw,
            # nccl-tests sums wrong elements over ranks; so do we.
            "wrong": sum(m["wrong"] for m in mine),
            "wrong_iters": max(m["wrong_iters"] for m in mine),
            "iters": first["iters"], "warmup": cfg["warmup"],
        })
        bandwidth = memory_gbps(per_rank, world, first["bytes"])
        if bandwidth:
            bound = memory_bound_busbw(bandwidth, world)
            rows[-1].update(memory_gbps=bandwidth, bound_busbw=bound, of_bound=busbw / bound)
    gloo_p50 = {r["bytes"]: r["p50_us"] for r in rows if r["backend"] == "gloo"}
    for r in rows:
        if r["backend"] != "gloo" and r["bytes"] in gloo_p50:
            r["ratio_vs_gloo"] = gloo_p50[r["bytes"]] / r["p50_us"]
    return rows


def _verdict(rows: list[dict]) -> str:
    """One line: each backend's range of speed-ups over gloo across the sizes."""
    parts = []
    for backend in dict.fromkeys(r["backend"] for r in rows if "ratio_vs_gloo" in r):
        mine = [r for r in rows if r["backend"] == backend and "ratio_vs_gloo" in r]
        lo = min(mine, key=lambda r: r["ratio_vs_gloo"])
        hi = max(mine, key=lambda r: r["ratio_vs_gloo"])
        parts.append(f"{backend} {lo['ratio_vs_gloo']:.2f}x ({measure.format_size(lo['bytes'])}) to "
                     f"{hi['ratio_vs_gloo']:.2f}x ({measure.format_size(hi['bytes'])}) gloo's speed at p50")
    return "; ".join(parts)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ringflow bench",
        description="Allreduce latency and bandwidth, ringflow vs gloo (nccl-tests columns).")
    p.add_argument("--world", type=int, default=2, help="processes to spawn, 1..8 (default 2)")
    p.add_argument("--sizes", default=DEFAULT_SIZES,
                   help=f"comma-separated sizes in bytes, K/M/G suffixes (default {DEFAULT_SIZES})")
    p.add_argument("--backends", default=DEFAULT_BACKENDS,
                   help="comma-separated, from: ringflow, ringflow-shared (ringflow on a "
                        "ringflow.shared_empty tensor), gloo (default: all three)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--op", default="sum", choices=OPS)
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations per row (default 3)")
    p.add_argument("--iters", type=int, default=0,
                   help="timed iterations per row (default: 20 below 16M, 10 below 256M, else 5); "
                        "with --no-barrier, per round (default: 200 to 64K, 50 to 1M, else as above)")
    p.add_argument("--no-barrier", action="store_true",
                   help=f"time back-to-back allreduces: {ROUNDS} rounds, each a barrier then "
                        "--iters calls; a sample is a round's total / iterations (max over ranks)")
    p.add_argument("--compute-us", type=float, default=0, metavar="US",
                   help="training's call pattern: US microseconds of computation before each "
                        "call and no barrier between calls; samples are single calls (p50, p90)")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds for the whole run; a hung rank kills the world (default 300)")
    p.add_argument("--algo", choices=("auto", "ring", "shm"),
                   help="ringflow's allreduce algorithm (sets RINGFLOW_ALGO for the ranks; "
                        "default: the environment's, else auto)")
    p.add_argument("--hugepages", action="store_true",
                   help="allocate each rank's buffer madvise(MADV_HUGEPAGE)d, so transparent huge "
                        "pages back it (both backends use it; THP mode 'always' or 'madvise')")
    p.add_argument("--json", action="store_true", help="end stdout with one line of JSON rows")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of busbw vs size (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _config(args, p) -> dict:
    if not 1 <= args.world <= 8:
        p.error("--world must be 1..8")
    try:
        sizes = measure.parse_sizes(args.sizes)
    except ValueError as e:
        p.error(str(e))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        p.error(f"--backends: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    if not sizes:
        p.error("--sizes is empty")
    if args.warmup < 0 or args.iters < 0 or args.timeout <= 0 or args.compute_us < 0:
        p.error("--warmup, --iters and --compute-us must be >= 0, --timeout > 0")
    if args.compute_us and args.no_barrier:
        p.error("--compute-us and --no-barrier are two different timing modes: pick one")
    return {"sizes": sizes, "backends": backends, "dtype": args.dtype, "op": args.op,
            "warmup": args.warmup, "iters": args.iters, "timeout": args.timeout,
            "no_barrier": args.no_barrier, "hugepages": args.hugepages, "compute_us": args.compute_us}


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    cfg = _config(args, p)
    if args.algo:
        os.environ["RINGFLOW_ALGO"] = args.algo  # the spawned ranks inherit it

    no_barrier = cfg["no_barrier"]
    where = "each round" if no_barrier else "each iteration"
    header = [("world", f"{args.world} processes on this host, MASTER_ADDR=127.0.0.1"),
              ("backends", ",".join(cfg["backends"]) + f" (the barrier before {where} is gloo's)")]
    header += report.environment()
    per = default_round_iters if no_barrier or cfg["compute_us"] else default_iters
    iters = str(cfg["iters"]) if cfg["iters"] else "adaptive " + ", ".join(
        f"{measure.format_size(s)}:{per(s)}" for s in cfg["sizes"])
    if cfg["compute_us"]:
        run = f"{cfg['compute_us']:.0f} us of computation before each call, no barrier ({iters} calls)"
        timing = "perf_counter around each call; max over ranks per call, then p50/p90/p99"
    elif no_barrier:
        run = f"{ROUNDS} rounds of back-to-back iterations ({iters} per round)"
        timing = (f"no barrier between iterations: perf_counter around each round, / its iterations; "
                  f"max over ranks per round, then p50/p99 over the {ROUNDS} rounds")
    else:
        run = f"timed iterations {iters}"
        timing = ("perf_counter around each blocking all_reduce; max over ranks per "
                  "iteration, then p50/p99 over iterations")
    header += [("run", f"allreduce {cfg['dtype']} {cfg['op']}, warm-up {cfg['warmup']}, {run}"),
               ("time", timing),
               ("busbw", "algbw * 2(n-1)/n; 'x gloo' = gloo p50 / ringflow p50 (>1: ringflow faster)")]

    started, load_before = time.monotonic(), report.load_average()
    progress = report.Progress(enabled=not args.quiet)
    try:
        per_rank = harness.run_world(_rank_main, args.world, (cfg,), timeout=args.timeout, progress=progress)
    except harness.WorldError as e:
        print(f"ringflow bench: {e}", file=sys.stderr)
        if report.binary_fingerprint() != dict(header)["binary"]:
            print("ringflow bench: note: ringflow's _C extension was replaced during the run "
                  "(a rebuild overwriting a loaded .so crashes the processes using it)", file=sys.stderr)
        return 1
    rows = _rows(per_rank, cfg, args.world)
    measured = {r["bytes"]: r["memory_gbps"] for r in rows if "memory_gbps" in r}
    if measured:
        each = ", ".join(f"{b:.1f} GB/s before {measure.format_size(n)} (busbw <= "
                         f"{memory_bound_busbw(b, args.world):.2f})" for n, b in measured.items())
        header.append(("memory", f"all ranks updating {measure.format_size(MEMORY_BYTES)} in place at once: "
                                 f"{each}; 'of bound' = busbw / that bound (bench/README.md)"))
    if report.binary_fingerprint() != dict(header)["binary"]:
        note = "ringflow's _C extension was rebuilt DURING this run: the results mix builds"
        header.append(("WARNING", note))
        print(f"ringflow bench: warning: {note}", file=sys.stderr)
    header.append(("load", f"1/5/15-min load average {load_before} before, {report.load_average()} after "
                           f"(on {os.cpu_count()} CPUs; the run itself adds {args.world})"))
    if cfg["hugepages"]:
        header.append(("hugepages", f"buffers madvise(MADV_HUGEPAGE)d, THP mode {memory.thp_mode()}; "
                                    f"fraction backed by huge pages on rank 0: "
                                    f"{per_rank[0]['huge_fractions']}"))

    report.print_header("ringflow allreduce benchmark", header)
    report.print_table(rows)
    if cfg["compute_us"]:
        print("# p90 (us): " + ", ".join(f"{measure.format_size(r['bytes'])} {r['backend']} {r['p90_us']:.1f}"
                                         for r in rows))
    if "ringflow-shared" in cfg["backends"]:
        print("# ringflow-shared: ringflow on a tensor from ringflow.shared_empty(), which same-host "
              "peers map and reduce in place (no kernel copy)")
    verdict = _verdict(rows)
    if verdict:
        print(f"# verdict: {verdict}")
    wrong = [r for r in rows if r["wrong"] or r["wrong_iters"]]
    print(f"# {len(rows)} rows in {time.monotonic() - started:.1f} s; "
          f"{'WRONG RESULTS in ' + str(len(wrong)) + ' rows' if wrong else 'all results correct'}")
    if args.plot:
        report.plot_busbw(rows, args.plot, f"allreduce {cfg['dtype']}, world {args.world}")
    if args.json:
        print(json.dumps(rows))
    if wrong:
        for r in wrong:
            print(f"ringflow bench: {r['backend']} {r['bytes']} B: {r['wrong']} wrong elements "
                  f"in the last result, {r['wrong_iters']} iterations wrong", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
