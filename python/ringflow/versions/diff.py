"""Per-tensor comparison of two commits: changed?, max |Δ|, relative L2 change, metric deltas."""

from __future__ import annotations

import math

import numpy as np
import torch


def tensor_delta(a: torch.Tensor, b: torch.Tensor, changed: bool) -> dict:
    """max|b-a| and ||b-a||/||a|| in float64; rel_l2 is inf when a is all zeros and b is not.

    `changed` comes from the object ids: equal ids mean equal bytes.
    """
    if a.dtype != b.dtype or a.shape != b.shape:
        return {"changed": True, "max_abs": None, "rel_l2": None,
                "note": f"{a.dtype}{list(a.shape)} -> {b.dtype}{list(b.shape)}"}
    if a.numel() == 0:
        return {"changed": changed, "max_abs": 0.0, "rel_l2": 0.0}
    if a.dtype.is_complex:
        x, y = a.numpy().astype(np.complex128), b.numpy().astype(np.complex128)
    else:
        x, y = a.to(torch.float64).numpy(), b.to(torch.float64).numpy()
    d = np.abs(y - x)
    norm_a = float(np.linalg.norm(x.ravel()))
    norm_d = float(np.linalg.norm((y - x).ravel()))
    rel = norm_d / norm_a if norm_a > 0 else (0.0 if norm_d == 0 else math.inf)
    return {"changed": changed, "max_abs": float(d.max()), "rel_l2": rel}


def metric_deltas(ma: dict, mb: dict) -> dict:
    out = {}
    for k in sorted(set(ma) | set(mb)):
        a, b = ma.get(k), mb.get(k)
        num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        out[k] = {"a": a, "b": b, "delta": (b - a) if num else None}
    return out
