"""What a benchmark prints: the header (machine, build, load), the
nccl-tests table, a progress bar, and the busbw plot."""

from __future__ import annotations

import math
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

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
    """The loaded C++ core (libringflow.so beside _C): path, mtime, sha256
    prefix.  A dirty checkout's git sha does not say which build ran; this
    does (and shows a rebuild mid-run)."""
    import hashlib

    from .. import _C

    path = Path(_C.__file__).with_name("libringflow.so")
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

