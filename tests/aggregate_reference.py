"""An independent numpy model of aggregated allreduce: what every worker
must get back, bit for bit (SwitchML fixed point, one exponent per chunk
agreed as the maximum over workers, exact integer sums)."""

from __future__ import annotations

import numpy as np

INT32_MAX = 2**31 - 1


def exponent(chunk: np.ndarray) -> int:
    """Smallest e with 2**e >= max|x| (-126 for an all-zero chunk)."""
    m = float(np.max(np.abs(chunk.astype(np.float64)))) if chunk.size else 0.0
    if m == 0.0:
        return -126
    frac, e = np.frexp(m)
    return int(e - 1) if frac == 0.5 else int(e)


def quantize(x: np.ndarray, e: int, workers: int) -> np.ndarray:
    scale = np.ldexp(INT32_MAX / workers, -e)
    limit = INT32_MAX // workers
    return np.clip(np.rint(x.astype(np.float64) * scale), -limit, limit).astype(np.int64)


def dequantize(q: np.ndarray, e: int, workers: int) -> np.ndarray:
    """float32 of integer (summed) values at exponent e: q times 1 / scale,
    1 / scale rounded to double once."""
    inverse = np.ldexp(1.0 / (INT32_MAX / workers), e)
    return (q.astype(np.float64) * inverse).astype(np.float32)


def aggregated_sum(inputs: list[np.ndarray], packet_elems: int) -> np.ndarray:
    """float32 result of summing `inputs` (one float32 array per worker)."""
    workers = len(inputs)
    n = inputs[0].size
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, packet_elems):
        chunks = [x[start:start + packet_elems] for x in inputs]
        if not all(np.isfinite(c).all() for c in chunks):
            out[start:start + packet_elems] = np.nan
            continue
        e = max(exponent(c) for c in chunks)
        total = sum(quantize(c, e, workers) for c in chunks)
        assert np.abs(total).max(initial=0) <= INT32_MAX  # headroom: never overflows
        out[start:start + packet_elems] = dequantize(total, e, workers)
    return out


def error_bound(inputs: list[np.ndarray], packet_elems: int) -> np.ndarray:
    """Per element, how far the result may be from the exact (float64) sum:
    each worker's rounding (and saturation) is below one quantum, plus the
    float32 rounding of the result."""
    workers = len(inputs)
    n = inputs[0].size
    exact = np.sum([x.astype(np.float64) for x in inputs], axis=0)
    bound = np.empty(n)
    for start in range(0, n, packet_elems):
        e = max(exponent(x[start:start + packet_elems]) for x in inputs)
        bound[start:start + packet_elems] = workers * workers * 2.0**e / INT32_MAX
    return bound + np.abs(exact) * 2.0**-23


def worker_input(rank: int, n: int, seed: int = 0) -> np.ndarray:
    """Deterministic test data: magnitudes over many decades, an all-zero
    stretch, exact powers of two, negative values."""
    rng = np.random.default_rng(seed * 1000 + rank)
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 6, n)
    x[: min(n, 37)] = 0.0
    if n > 100:
        x[50:60] = 2.0 ** rng.integers(-20, 20, 10)
    return x.astype(np.float32)
