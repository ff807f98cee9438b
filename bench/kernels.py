"""Throughput of ringflow's CPU kernels beside this machine's copy bandwidth
and beside the obvious numpy / torch way of doing the same work, measured in
the same run; with a CUDA build and a GPU, the GPU kernels too (cuda_* rows).

    PYTHONPATH=python python bench/kernels.py [--quick] [--json]

GB/s counts the bytes a kernel must move at least once (k inputs read + the
output written for a reduce; packed codes + activations + output for the LUT
kernels).  fraction_of_copy = gbps / (numpy copy GB/s, read + write).  ratio =
ringflow's speed / the baseline's.  torch runs single-threaded
(torch.set_num_threads(1)), as ringflow's kernels do unless the caller asks
for more (the reduce's `threads`, --threads here).

GPU rows (cuda_*) are timed with CUDA events around each call (the kernels
wait for their own completion); their fraction_of_copy is against a device-
to-device torch copy_ on the same GPU (HBM read + write), and their baselines
are the same torch code on the GPU.  Without a GPU they are skipped with a
note in the header.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import time

import numpy as np

# The installed package (pip install .): a checkout's python/ has no _C.
from ringflow import _C  # noqa: E402
from ringflow import kernels as ops  # noqa: E402


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up: page faults, caches, lazy init
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def gpu_status() -> tuple[str | None, str | None]:
    """(device name, None) when the GPU rows can run, else (None, why not)."""
    if not _C.build_info()["cuda"]:
        return None, "this ringflow build has no CUDA kernels"
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device"
    return torch.cuda.get_device_name(0), None


def cuda_median_time(fn, repeat: int) -> float:
    """Median seconds of fn() between two CUDA events on the current stream."""
    import torch

    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        ts.append(start.elapsed_time(end) / 1e3)
    return sorted(ts)[len(ts) // 2]


def header(threads: int) -> dict:
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(__file__),
                                      text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:
        sha = "unknown"
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except Exception:
        pass
    try:
        import torch

        tv = torch.__version__
    except ImportError:
        tv = "not installed"
    gpu, why_not = gpu_status()
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "git": sha, "torch": tv,
            "simd": ops.simd_level(), "reduce_threads": threads,
            "cuda_build": bool(_C.build_info()["cuda"]),
            "gpu": gpu if gpu else f"none: GPU rows skipped ({why_not})"}


class Table:
    def __init__(self, copy_gbps: float):
        self.copy = copy_gbps
        self.rows = []

    def add(self, kernel, dtype, bits, n, seconds, nbytes, baseline=None, baseline_seconds=None, copy_gbps=None):
        """copy_gbps: the copy bandwidth this row is a fraction of (default: the host's)."""
        copy_gbps = copy_gbps or self.copy
        gbps = nbytes / seconds / 1e9
        bgbps = nbytes / baseline_seconds / 1e9 if baseline_seconds else None
        row = {"kernel": kernel, "dtype": dtype, "bits": bits, "n": n, "gbps": round(gbps, 3),
               "baseline": baseline, "baseline_gbps": None if bgbps is None else round(bgbps, 3),
               "ratio": None if bgbps is None else round(gbps / bgbps, 3),
               "fraction_of_copy": round(gbps / copy_gbps, 3)}
        self.rows.append(row)
        b = "-" if bgbps is None else f"{bgbps:8.2f}"
        r = "-" if bgbps is None else f"{gbps / bgbps:6.2f}x"
        print(f"{kernel:<25} {dtype:<9} {str(bits or '-'):>4} {n:>10} {seconds * 1e3:9.3f} {gbps:8.2f} "
              f"{row['fraction_of_copy']:6.2f}  {str(baseline or '-'):<30} {b:>8} {r:>8}", flush=True)


def bench_reduce(t: Table, big: int, repeat: int, threads: int):
    rng = np.random.default_rng(0)
    for dtype, k, n in [("float32", 2, big), ("float32", 4, big), ("float32", 8, big // 2),
                        ("float32", 4, 1 << 18), ("float16", 4, big), ("int32", 4, big), ("float64", 4, big // 2)]:
        xs = [rng.standard_normal(n).astype(dtype) for _ in range(k)]
        out = np.empty_like(xs[0])

        def numpy_fold():
            np.add(xs[0], xs[1], out=out)
            for x in xs[2:]:
                np.add(out, x, out=out)

        nbytes = (k + 1) * xs[0].nbytes
        tk = median_time(lambda: ops.reduce(xs, "sum", out=out, threads=threads), repeat)
        tb = median_time(numpy_fold, repeat)
        t.add(f"reduce_sum_k{k}", dtype, None, n, tk, nbytes, "numpy add fold", tb)
        del xs, out


def bench_quantize(t: Table, n: int, repeat: int):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(n).astype(np.float32)
    exps = ops.fixed_exponents(x, 256)
    scale = np.repeat(np.ldexp(np.float64(2**31 - 1) / 8, -exps.astype(np.int64)), 256)[:n]

    def numpy_fixed():
        return np.clip(np.rint(x * scale), -(2**31 - 1) // 8, (2**31 - 1) // 8).astype(np.int32)

    tq = median_time(lambda: ops.quantize_fixed(x, 8, exps, 256), repeat)
    t.add("quantize_fixed", "float32", None, n, tq, 8 * n, "numpy rint*scale", median_time(numpy_fixed, repeat))
    q, _ = ops.quantize_fixed(x, 8, exps, 256)
    t.add("dequantize_fixed", "int32", None, n, median_time(lambda: ops.dequantize_fixed(q, 8, exps, 256), repeat), 8 * n)
    for bits in (1, 2, 4, 8):
        err = np.zeros(n, np.float32)
        tl = median_time(lambda: ops.quantize_lowbit(x, bits, 64, error=err), repeat)
        t.add("quantize_lowbit+ef", "float32", bits, n, tl, 12 * n + n * bits // 8)
        p, s, _ = ops.quantize_lowbit(x, bits, 64)
        t.add("dequantize_lowbit", "float32", bits, n,
              median_time(lambda: ops.dequantize_lowbit(p, s, n, bits, 64), repeat), 4 * n + n * bits // 8)


def torch_dequant(torch, packed, scales, rows, cols, bits, block):
    """Unpack codes with shifts and masks, map to s * (2c - L): the plain way."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    codes = ((packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(rows, -1)[:, :cols]
    vals = codes.to(torch.float32).mul_(2).sub_((1 << bits) - 1)
    return vals.mul_(scales.repeat_interleave(block, dim=1)[:, :cols])


def decode_then_add(packed, scales, m: int, bits: int, block: int, acc, row):
    """What the LUT weighted sum replaces: decode each rank's codes
    (dequantize_lowbit) and add the floats, into buffers allocated once."""
    K = _C.kernels
    K.dequantize_lowbit(acc.ctypes.data, packed[0].ctypes.data, scales[0].ctypes.data, m, bits, block)
    for k in range(1, len(packed)):
        K.dequantize_lowbit(row.ctypes.data, packed[k].ctypes.data, scales[k].ctypes.data, m, bits, block)
        np.add(acc, row, out=acc)
    return acc


def bench_lut(t: Table, rows: int, cols: int, workers: int, m: int, repeat: int):
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    block = 64
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal(cols).astype(np.float32)
    xt = torch.from_numpy(x)
    for bits in (1, 2, 4, 8):
        q = [ops.quantize_lowbit(r, bits, block) for r in W]
        packed, scales = np.stack([a[0] for a in q]), np.stack([a[1] for a in q])
        prepared = ops.lut_prepare(packed, scales, (rows, cols), bits, block)
        pt, st = torch.from_numpy(packed), torch.from_numpy(scales)
        tl = median_time(lambda: ops.lut_gemv(prepared, x), repeat)
        tb = median_time(lambda: torch_dequant(torch, pt, st, rows, cols, bits, block) @ xt, repeat)
        nbytes = packed.nbytes + scales.nbytes + x.nbytes + 4 * rows
        t.add("lut_gemv", "float32", bits, rows * cols, tl, nbytes, "torch dequant+matmul (1 thr)", tb)
        p8 = ops.lut_prepare(packed, scales, (rows, cols), bits, block, tables="int8")
        t8 = median_time(lambda: ops.lut_gemv(p8, x), repeat)
        t.add("lut_gemv_int8tables", "float32", bits, rows * cols, t8, nbytes, "torch dequant+matmul (1 thr)", tb)
        if bits == 2:
            Wd = torch_dequant(torch, pt, st, rows, cols, bits, block)
            t.add("lut_gemv_int8tables", "float32", bits, rows * cols, t8, nbytes, "torch fp32 mv, W pre-dequantised",
                  median_time(lambda: Wd @ xt, repeat))
            t.add("lut_gemv", "float32", bits, rows * cols, tl, nbytes, "torch fp32 mv, W pre-dequantised",
                  median_time(lambda: Wd @ xt, repeat))
    g = rng.standard_normal((workers, m)).astype(np.float32)
    coeffs = rng.uniform(size=workers).astype(np.float32)
    ct = torch.from_numpy(coeffs)
    for bits in (1, 2, 4, 8):
        q = [ops.quantize_lowbit(r, bits, block) for r in g]
        packed, scales = np.stack([a[0] for a in q]), np.stack([a[1] for a in q])
        pt, st = torch.from_numpy(packed), torch.from_numpy(scales)
        tl = median_time(lambda: ops.lut_weighted_sum(packed, coeffs, scales, bits, m=m, block=block), repeat)
        tb = median_time(lambda: ct @ torch_dequant(torch, pt, st, workers, m, bits, block), repeat)
        nbytes = packed.nbytes + scales.nbytes + 4 * m
        t.add(f"lut_weighted_sum_N{workers}", "float32", bits, m, tl, nbytes, "torch dequant+matmul (1 thr)", tb)
        ones, y, acc, row = (np.ones(workers, np.float32), np.empty(m, np.float32), np.empty(m, np.float32),
                             np.empty(m, np.float32))
        K = _C.kernels
        tu = median_time(lambda: K.lut_weighted_sum(y.ctypes.data, packed.ctypes.data, scales.ctypes.data,
                                                    ones.ctypes.data, workers, m, bits, block), repeat)
        td = median_time(lambda: decode_then_add(packed, scales, m, bits, block, acc, row), repeat)
        t.add(f"lut_sum_N{workers}", "float32", bits, m, tu, nbytes, "decode-then-add (1 thr)", td)


def gpu_copy_gbps(torch, nbytes: int, repeat: int) -> float:
    src = torch.ones(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / cuda_median_time(lambda: dst.copy_(src), repeat) / 1e9


def bench_gpu_reduce(t: Table, big: int, repeat: int, copy_gbps: float):
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype, k, n in [("float32", 2, big), ("float32", 4, big), ("float32", 8, big // 2), ("bfloat16", 4, big)]:
        xs = [torch.randn(n, generator=g, device="cuda").to(getattr(torch, dtype)) for _ in range(k)]
        out = torch.empty_like(xs[0])

        def torch_fold():
            torch.add(xs[0], xs[1], out=out)
            for x in xs[2:]:
                out.add_(x)

        nbytes = (k + 1) * xs[0].numel() * xs[0].element_size()
        tk = cuda_median_time(lambda: ops.reduce(xs, "sum", out=out), repeat)
        tb = cuda_median_time(torch_fold, repeat)
        t.add(f"cuda_reduce_sum_k{k}", dtype, None, n, tk, nbytes, "torch add fold (GPU)", tb, copy_gbps)
        del xs, out


def random_codes(rng, rows: int, cols: int, bits: int, block: int):
    """Packed codes and scales of a [rows, cols] low-bit matrix: uniform random
    bytes (every code equally likely), scales in [0.5, 1.5)."""
    packed = rng.integers(0, 256, (rows, _C.kernels.lowbit_packed_bytes(cols, bits)), dtype=np.uint8)
    scales = rng.uniform(0.5, 1.5, (rows, -(-cols // block))).astype(np.float32)
    return packed, scales


def bench_gpu_lut(t: Table, rows: int, cols: int, workers: int, m: int, repeat: int, copy_gbps: float):
    import torch

    rng = np.random.default_rng(3)
    block = 64
    bits = 2
    packed, scales = random_codes(rng, rows, cols, bits, block)
    prepared = ops.lut_prepare(packed, scales, (rows, cols), bits, block)
    x = torch.from_numpy(rng.standard_normal(cols).astype(np.float32)).cuda()
    pt, st = torch.from_numpy(packed).cuda(), torch.from_numpy(scales).cuda()
    tl = cuda_median_time(lambda: ops.lut_gemv(prepared, x), repeat)
    tb = cuda_median_time(lambda: torch_dequant(torch, pt, st, rows, cols, bits, block) @ x, repeat)
    nbytes = packed.nbytes + scales.nbytes + 4 * cols + 4 * rows
    t.add("cuda_lut_gemv", "float32", bits, rows * cols, tl, nbytes, "torch dequant+matmul (GPU)", tb, copy_gbps)
    Wd = torch_dequant(torch, pt, st, rows, cols, bits, block)
    t.add("cuda_lut_gemv", "float32", bits, rows * cols, tl, nbytes, "torch mv, W pre-dequant (GPU)",
          cuda_median_time(lambda: Wd @ x, repeat), copy_gbps)
    del pt, st, Wd, prepared
    coeffs = torch.from_numpy(rng.uniform(size=workers).astype(np.float32)).cuda()
    for bits in (1, 2, 4, 8):
        packed, scales = random_codes(rng, workers, m, bits, block)
        pt, st = torch.from_numpy(packed).cuda(), torch.from_numpy(scales).cuda()
        tl = cuda_median_time(lambda: ops.lut_weighted_sum(pt, coeffs, st, bits, m=m, block=block), repeat)
        tb = cuda_median_time(lambda: coeffs @ torch_dequant(torch, pt, st, workers, m, bits, block), repeat)
        nbytes = packed.nbytes + scales.nbytes + 4 * m
        t.add(f"cuda_lut_weighted_sum_N{workers}", "float32", bits, m, tl, nbytes, "torch dequant+matmul (GPU)", tb,
              copy_gbps)
        del pt, st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not figures to quote)")
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON list on the last line")
    ap.add_argument("--only", choices=["reduce", "quantize", "lut"], help="run one group of kernels")
    ap.add_argument("--threads", type=int, default=1, help="threads the CPU reduce rows split over (default 1)")
    args = ap.parse_args()
    repeat = 3 if args.quick else 9
    big = (1 << 18) if args.quick else (16 << 20)  # 64 MiB per float32 input: twice L3 (32 MiB)

    h = header(args.threads)
    print("# ringflow kernels benchmark")
    for key, val in h.items():
        print(f"# {key}: {val}")
    src = np.ones(32 << 20 if not args.quick else 1 << 18, np.float32)
    dst = np.empty_like(src)
    copy_gbps = 2 * src.nbytes / median_time(lambda: np.copyto(dst, src), repeat) / 1e9
    del src, dst
    print(f"# numpy copy ({'128 MiB' if not args.quick else '1 MiB'}, read + write): {copy_gbps:.2f} GB/s")
    gpu_copy = None
    if gpu_status()[0] and args.only in (None, "reduce", "lut"):
        import torch

        gpu_copy = gpu_copy_gbps(torch, (1 << 20) if args.quick else (256 << 20), repeat)
        print(f"# torch GPU copy_ ({'1 MiB' if args.quick else '256 MiB'}, device to device, read + write): "
              f"{gpu_copy:.2f} GB/s")
    print(f"{'kernel':<25} {'dtype':<9} {'bits':>4} {'n':>10} {'ms':>9} {'GB/s':>8} {'/copy':>6}  "
          f"{'baseline':<30} {'base GB/s':>8} {'ratio':>8}")
    t = Table(copy_gbps)
    if args.only in (None, "reduce"):
        bench_reduce(t, big, repeat, args.threads)
    if gpu_copy and args.only in (None, "reduce"):
        bench_gpu_reduce(t, (1 << 18) if args.quick else (64 << 20), repeat, gpu_copy)
    if args.only in (None, "quantize"):
        bench_quantize(t, (1 << 16) if args.quick else (4 << 20), repeat)
    try:
        if args.only not in (None, "lut"):
            raise LookupError
        import torch  # noqa: F401

        if args.quick:
            bench_lut(t, 256, 512, 4, 1 << 14, repeat)
        else:
            bench_lut(t, 4096, 4096, 8, 1 << 22, repeat)
        if gpu_copy:
            if args.quick:
                bench_gpu_lut(t, 256, 512, 4, 1 << 14, repeat, gpu_copy)
            else:
                bench_gpu_lut(t, 16384, 16384, 8, 1 << 24, repeat, gpu_copy)
    except ImportError:
        print("# torch not installed: LUT baselines skipped")
    except LookupError:
        pass
    if args.json:
        print(json.dumps(t.rows))


if __name__ == "__main__":
    main()
