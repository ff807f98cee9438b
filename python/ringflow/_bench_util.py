"""What every ringflow benchmark shares: sizes, statistics, the header, the
nccl-tests table, progress, plots, and a world of real processes with a hard
timeout.

Conventions (bench/README.md): algbw = S / t, busbw = algbw * factor(n) with
nccl-tests' factors; times are the max over ranks of one iteration, then the
median over iterations, warm-ups excluded.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import platform
import queue
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

# nccl-tests' bus-bandwidth factors: what each rank's link must carry,
# relative to S, for the ring algorithm's lower bound.
BUSBW_FACTOR = {
    "allreduce": lambda n: 2 * (n - 1) / n,
    "allgather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "alltoall": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
}


class BenchError(RuntimeError):
    """A world failed: a rank raised, died, or hung.  The message names it."""


# ---------------------------------------------------------------- sizes


def parse_size(text: str) -> int:
    """'4K' -> 4096, '16M' -> 16 MiB, '1G', '512' (bytes); binary units."""
    t = text.strip().upper()
    if t.endswith("IB"):
        t = t[:-2]
    unit = t[-1] if t and t[-1] in _SUFFIX else ""
    number = t[: len(t) - len(unit)] if unit else t
    try:
        value = float(number) * _SUFFIX[unit]
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use bytes with an optional K, M or G suffix)") from None
    if value < 1 or value != int(value):
        raise ValueError(f"not a whole positive number of bytes: {text!r}")
    return int(value)


def parse_sizes(text: str) -> list[int]:
    return [parse_size(s) for s in text.split(",") if s.strip()]


def format_size(nbytes: int) -> str:
    """4096 -> '4K', 16 MiB -> '16M'; odd sizes stay in bytes."""
    for unit in ("G", "M", "K"):
        if nbytes >= _SUFFIX[unit] and nbytes % _SUFFIX[unit] == 0:
            return f"{nbytes // _SUFFIX[unit]}{unit}"
    return f"{nbytes}B"


# ---------------------------------------------------------------- statistics


def percentile(values, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def max_over_ranks(per_rank: list[list[float]]) -> list[float]:
    """Iteration i took as long as its slowest rank."""
    return [max(ts) for ts in zip(*per_rank)]


HUGE_PAGE = 2 << 20


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode: always, madvise or never."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    return text.split("[")[1].split("]")[0] if "[" in text else text.strip()


def hugepage_empty(torch, count: int, dtype):
    """An uninitialised tensor of `count` elements on 2 MiB boundaries,
    madvise(MADV_HUGEPAGE)d before anything touches it, so the kernel backs
    it with transparent huge pages as it faults it in (THP mode 'always' or
    'madvise'), as an application allocating its buffers that way would get.
    Its own anonymous mapping: malloc may serve even large requests from
    pages it touched before (glibc raises its mmap threshold after frees)."""
    import mmap

    nbytes = count * torch.empty((), dtype=dtype).element_size()
    length = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    raw = mmap.mmap(-1, length + HUGE_PAGE, flags=mmap.MAP_PRIVATE)
    base = torch.frombuffer(raw, dtype=torch.uint8)  # keeps the mapping alive
    start = -base.data_ptr() % HUGE_PAGE
    try:
        raw.madvise(mmap.MADV_HUGEPAGE, start, length)
    except OSError as e:
        raise OSError(e.errno, f"madvise(MADV_HUGEPAGE) failed: {e.strerror}") from None
    return base[start:start + nbytes].view(dtype)


def smaps_fields(addr: int) -> dict:
    """The /proc/self/smaps entry of the mapping holding `addr`: its field
    lines as name -> rest of the line ("Size" -> "12288 kB", "VmFlags" ->
    "rd wr ... hg"); empty when no mapping holds it."""
    fields, inside = {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0] if line else ""
        if "-" in head and not head.endswith(":"):
            if inside:
                break
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside:
            fields[head.rstrip(":")] = line[len(head):].strip()
    return fields


def huge_page_fraction(tensor) -> float:
    """How much of the mapping holding `tensor`'s first whole 2 MiB page
    (its start, if it has none) huge pages back: AnonHugePages / Size of
    that VMA, from /proc/self/smaps.  madvise splits a mapping at the
    advised range, so this is the advised part when there is one."""
    start = tensor.data_ptr()
    aligned = -(-start // HUGE_PAGE) * HUGE_PAGE
    end = start + tensor.numel() * tensor.element_size()
    fields = smaps_fields(aligned if aligned + HUGE_PAGE <= end else start)
    if "Size" not in fields or "AnonHugePages" not in fields:
        return math.nan
    size = int(fields["Size"].split()[0])
    return int(fields["AnonHugePages"].split()[0]) / size if size else math.nan


def process_cpu_seconds(pid="self") -> float:
    """CPU time of every thread of process `pid` so far, in seconds, from
    /proc/<pid>/task/*/schedstat (nanoseconds; /proc/<pid>/stat counts in
    10 ms ticks, too coarse for one call).  A thread that exits takes its
    time with it, so measure processes whose threads live on."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # the thread exited between the listing and the read
    return total / 1e9


class CpuMeter:
    """CPU seconds some processes spend inside timed windows: `pids` maps a
    name to a pid ("self" for this process); start() and stop() bracket one
    window; medians() gives each name's median over the windows."""

    def __init__(self, pids: dict):
        self.pids = dict(pids)
        self.samples = {name: [] for name in self.pids}
        self._at = {}

    def start(self) -> None:
        self._at = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        for name, pid in self.pids.items():
            self.samples[name].append(process_cpu_seconds(pid) - self._at[name])

    def medians(self) -> dict:
        return {name: statistics.median(v) if v else math.nan for name, v in self.samples.items()}


def allreduce_p50(tensor_for, iters: int, check=None, meter: CpuMeter | None = None) -> float:
    """One rank's part of timing `iters` allreduces: each iteration takes
    tensor_for() (untimed: the tensor, or a fresh copy of it), a barrier,
    one timed dist.all_reduce of it, then an all_reduce MAX of the elapsed
    time, so every rank holds the slowest rank's time; then check(tensor) if
    given (untimed).  A `meter` brackets each timed all_reduce (its reads
    fall outside the timing).  Returns the median of those maxima, in
    seconds."""
    import torch
    import torch.distributed as dist

    times = []
    for _ in range(iters):
        x = tensor_for()
        dist.barrier()
        if meter:
            meter.start()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        elapsed = time.perf_counter() - t0
        if meter:
            meter.stop()
        dt = torch.tensor([elapsed], dtype=torch.float64)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        times.append(float(dt))
        if check is not None:
            check(x)
    return statistics.median(times)


def busy(us: float) -> None:
    """Computation standing in for a piece of backward (training's call
    pattern: compute, then a collective)."""
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def bandwidths(collective: str, world: int, nbytes: int, seconds: float) -> tuple[float, float]:
    """(algbw, busbw) in GB/s (1e9 bytes/s), as nccl-tests reports them."""
    if seconds <= 0:
        return math.nan, math.nan
    algbw = nbytes / seconds / 1e9
    return algbw, algbw * BUSBW_FACTOR[collective](world)


# ---------------------------------------------------------------- the header


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    """Short sha of the ringflow checkout being benchmarked, '+dirty' if
    modified: the working directory's (an installed package lives outside
    any checkout), else the one this file lives in."""

    def git(where, *args):
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    for where in (Path.cwd(), Path(__file__).resolve().parent):
        try:
            top = Path(git(where, "rev-parse", "--show-toplevel"))
            if not (top / "python" / "ringflow").is_dir():
                continue  # some other project's checkout
            sha = git(where, "rev-parse", "--short=12", "HEAD")
            dirty = git(where, "status", "--porcelain", "--untracked-files=no")
        except (OSError, subprocess.SubprocessError):
            continue
        return sha + ("+dirty" if dirty else "") + ("" if where == Path.cwd() else f" ({where})")
    return "unknown (run from outside a git checkout)"


def binary_fingerprint() -> str:
    """The loaded _C extension: path, mtime, sha256 prefix.  A dirty checkout's
    git sha does not say which build ran; this does (and shows a rebuild mid-run)."""
    import hashlib

    from . import _C

    path = Path(_C.__file__)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        mtime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
    except OSError as e:
        return f"{path} (unreadable: {e})"
    return f"{path.name} sha256:{digest} built {mtime}"


def environment() -> list[tuple[str, str]]:
    """(name, value) pairs every benchmark header carries."""
    import torch

    import ringflow

    info = ringflow.build_info()
    knobs = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("RINGFLOW_", "GLOO_"))}
    return [
        ("host", f"{socket.gethostname()} ({platform.system()} {platform.release()})"),
        ("cpu", f"{cpu_model()}, {os.cpu_count()} logical CPUs"),
        ("git", git_revision()),
        ("torch", torch.__version__),
        ("python", platform.python_version()),
        ("ringflow", f"{ringflow.__version__} (SIMD {info['simd']}, CUDA kernels "
                     f"{'yes' if info['cuda'] else 'no'})"),
        ("binary", binary_fingerprint()),
        ("transports", ",".join(info.get("transports", [])) or "?"),
        ("env", " ".join(f"{k}={v}" for k, v in knobs.items()) or "(no RINGFLOW_*/GLOO_* set)"),
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]


def load_average() -> str:
    """'1.02 0.80 0.55' (1, 5, 15 min): other work on this host skews timings."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def print_header(title: str, items: list[tuple[str, str]], out=sys.stdout) -> None:
    print(f"# {title}", file=out)
    width = max(len(k) for k, _ in items)
    for k, v in items:
        print(f"#   {k:<{width}} : {v}", file=out)
    print("#", file=out)


# ---------------------------------------------------------------- the table

# (heading, unit, width, key, format); nccl-tests' columns plus the baseline ratio.
COLUMNS = [
    ("size", "(B)", 12, "bytes", "{:d}"),
    ("count", "(elements)", 12, "count", "{:d}"),
    ("type", "", 9, "type", "{}"),
    ("redop", "", 6, "op", "{}"),
    ("backend", "", 15, "backend", "{}"),
    ("time", "(us)", 10, "p50_us", "{:.1f}"),
    ("p99", "(us)", 10, "p99_us", "{:.1f}"),
    ("algbw", "(GB/s)", 8, "algbw", "{:.3f}"),
    ("busbw", "(GB/s)", 8, "busbw", "{:.3f}"),
    ("#wrong", "", 7, "wrong", "{:d}"),
    ("x gloo", "", 7, "ratio_vs_gloo", "{:.2f}"),
    ("of bound", "", 8, "of_bound", "{:.0%}"),
]


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return fmt.format(value)


def print_table(rows: list[dict], out=sys.stdout) -> None:
    for i in (0, 1):
        cells = [f"{c[i]:>{c[2]}}" for c in COLUMNS]
        print("#" + " ".join(cells)[1:], file=out)
    for row in rows:
        print(" ".join(f"{_cell(row, key, fmt):>{w}}" for _, _, w, key, fmt in COLUMNS), file=out)


# ---------------------------------------------------------------- progress


class Progress:
    """`[3/10] 16M ringflow` on stderr: one line each, or one \\r line on a tty."""

    def __init__(self, stream=sys.stderr, enabled: bool = True):
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self._open = False

    def update(self, step: int, total: int, label: str) -> None:
        if not self.enabled:
            return
        text = f"[{step}/{total}] {label}"
        if self.tty:
            self.stream.write(f"\r{text:<60}")
            self._open = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


# ---------------------------------------------------------------- plots


def plot_busbw(rows: list[dict], path: str, title: str) -> bool:
    """busbw vs size, one line per backend; False (and a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed; no plot written to {path} "
              "(pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        pts = sorted((r["bytes"], r["busbw"]) for r in rows if r["backend"] == backend)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=backend)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("busbw (GB/s)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)
    return True


# ---------------------------------------------------------------- a world of processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn, rank, world, port, args, messages):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))

    def report(step, total, label):
        messages.put(("progress", rank, (step, total, label)))

    try:
        result = fn(rank, world, report, *args)
    except BaseException:  # noqa: BLE001 - shown by the parent
        messages.put(("error", rank, traceback.format_exc()))
        messages.close()
        messages.join_thread()
        os._exit(1)
    messages.put(("result", rank, result))


def run_world(fn, world: int, args: tuple = (), timeout: float = 300,
              progress: Progress | None = None, exit_grace: float = 30) -> list:
    """Runs fn(rank, world, report, *args) on `world` spawned processes.

    Returns each rank's result.  The whole world has `timeout` seconds; a rank
    that raises, dies or hangs makes the parent kill every rank and raise
    BenchError naming it (and each rank's last reported step).
    """
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(fn, r, world, port, args, messages),
                         name=f"rank{r}", daemon=True) for r in range(world)]
    results: dict[int, object] = {}
    errors: dict[int, str] = {}
    last_step: dict[int, str] = {}
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    failure = None

    def take(kind, rank, payload):
        if kind == "progress":
            last_step[rank] = f"[{payload[0]}/{payload[1]}] {payload[2]}"
            if rank == 0 and progress is not None:
                progress.update(*payload)
        elif kind == "error":
            errors[rank] = payload
        else:
            results[rank] = payload

    def drain(wait: float):
        end = time.monotonic() + wait
        while True:
            try:
                take(*messages.get(timeout=max(0.0, end - time.monotonic())))
            except queue.Empty:
                return

    try:
        for p in procs:
            p.start()
        while len(results) < world:
            try:
                take(*messages.get(timeout=0.2))
            except queue.Empty:
                pass
            if errors:
                drain(1.0)  # let the other ranks' errors arrive too
                failure = "raised an exception"
                break
            dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in results]
            if dead:
                drain(1.0)
                dead = [r for r in dead if r not in results]
                if dead or errors:
                    failure = "died"
                    break
            if time.monotonic() > deadline:
                failure = f"timed out after {timeout:g} s"
                break
        if failure is None:
            # Every rank reported; each must also shut down cleanly.
            for r, p in enumerate(procs):
                p.join(max(0.1, min(exit_grace, deadline - time.monotonic())))
            stuck = [r for r, p in enumerate(procs) if p.is_alive()]
            bad_exit = [r for r, p in enumerate(procs) if p.exitcode not in (0, None)]
            if stuck or bad_exit:
                failure = "did not shut down cleanly"
    finally:
        if progress is not None:
            progress.done()
        for r, p in enumerate(procs):
            if p.is_alive():
                p.kill()
                killed.add(r)
        for p in procs:
            p.join(5)

    if failure is None:
        return [results[r] for r in range(world)]
    lines = [f"{_culprits(failure, world, procs, results, errors, killed)}; all ranks killed."]
    for r, p in enumerate(procs):
        where = last_step.get(r, "none reported")
        if r in errors:
            lines.append(f"--- rank {r} raised (last step: {where}):\n{errors[r].rstrip()}")
        elif r in results:
            state = ("reported results, then hung at shutdown (killed)" if r in killed else
                     "finished" if p.exitcode == 0 else f"reported results, then exit code {p.exitcode}")
            lines.append(f"--- rank {r}: {state}")
        elif r in killed:
            lines.append(f"--- rank {r} was still running, killed (last step: {where})")
        elif p.exitcode is not None and p.exitcode < 0:
            lines.append(f"--- rank {r} died by signal {-p.exitcode} (last step: {where})")
        else:
            lines.append(f"--- rank {r} exited with code {p.exitcode} (last step: {where})")
    err = BenchError("\n".join(lines))
    err.results = results  # what did arrive, e.g. after a hang at shutdown
    raise err


def _culprits(failure, world, procs, results, errors, killed) -> str:
    """The first line of the failure: which ranks failed, and how."""
    def ranks(rs):
        return ("rank " if len(rs) == 1 else "ranks ") + ",".join(map(str, rs))

    if errors:
        return f"{ranks(sorted(errors))} raised an exception (world of {world})"
    if failure == "died":
        dead = [r for r, p in enumerate(procs) if r not in results and r not in killed]
        codes = ",".join(str(procs[r].exitcode) for r in dead)
        return f"{ranks(dead)} died, exit code {codes} (world of {world})"
    if failure == "did not shut down cleanly":
        bad = [r for r, p in enumerate(procs) if r in killed or p.exitcode != 0]
        return f"{ranks(bad)} did not shut down cleanly after reporting results (world of {world})"
    hung = [r for r in range(world) if r not in results]
    return f"{failure}; {ranks(hung)} had not finished (world of {world})"
