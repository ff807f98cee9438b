"""Array-level entry points to ringflow's kernels.

Each function takes numpy arrays or torch tensors (CPU; CUDA tensors where
this build has CUDA kernels) and checks shapes and dtypes here, so the C++
side only ever sees validated raw addresses.  torch is optional: it is
imported only when a tensor is passed in.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import _C
from ._dtypes import DTYPE_NAMES, numpy_dtype_code, reduce_op_code, torch_dtype_code

_K = _C.kernels

__all__ = [
    "reduce",
    "simd_level",
    "set_simd_level",
    "quantize_fixed",
    "dequantize_fixed",
    "fixed_exponents",
    "quantize_lowbit",
    "dequantize_lowbit",
    "lut_weighted_sum",
    "lut_prepare",
    "lut_gemv",
    "LutMatrix",
]


def simd_level() -> str:
    """The instruction set the CPU kernels use: 'avx512', 'avx2' or 'scalar'."""
    return _K.simd_level()


def set_simd_level(level: str) -> str:
    """Lower (or restore) the SIMD level; returns the level now in force."""
    return _K.set_simd_level(level)


# --- views of arrays and tensors -------------------------------------------------


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


class _View:
    """Address, element count, dtype code and device of a contiguous array."""

    __slots__ = ("obj", "ptr", "n", "code", "cuda", "shape")

    def __init__(self, x, what: str):
        if _is_torch(x):
            if not x.is_contiguous():
                raise ValueError(f"{what} must be a contiguous tensor")
            self.code = torch_dtype_code(x.dtype)
            self.ptr = x.data_ptr()
            self.n = x.numel()
            self.cuda = x.device.type == "cuda"
            if x.device.type not in ("cpu", "cuda"):
                raise ValueError(f"{what} is on device {x.device}; ringflow kernels take cpu or cuda")
        elif isinstance(x, np.ndarray):
            if not x.flags.c_contiguous:
                raise ValueError(f"{what} must be a C-contiguous array")
            self.code = numpy_dtype_code(x.dtype)
            self.ptr = x.ctypes.data
            self.n = x.size
            self.cuda = False
        else:
            raise ValueError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")
        self.obj = x
        self.shape = tuple(x.shape)

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.code]


def _empty_like(x):
    if _is_torch(x):
        import torch

        return torch.empty_like(x, memory_format=torch.contiguous_format)
    return np.empty_like(x, order="C")


def _require_cuda_build(what: str) -> None:
    if not _C.build_info()["cuda"]:
        raise ValueError(f"{what} is a CUDA tensor but this ringflow build has no CUDA kernels")


# --- reduce -----------------------------------------------------------------------


def reduce(inputs: Sequence, op="sum", out=None):
    """out[i] = op(inputs[0][i], ..., inputs[k-1][i]), folded left to right.

    All inputs must share dtype, element count and device.  `out` may be
    inputs[0] (in place).  Avg reduces as sum (divide afterwards), as the
    collectives do.  Returns `out`.
    """
    if not isinstance(inputs, (list, tuple)) or len(inputs) == 0:
        raise ValueError("reduce needs a non-empty list of arrays")
    views = [_View(x, f"inputs[{i}]") for i, x in enumerate(inputs)]
    first = views[0]
    for i, v in enumerate(views[1:], 1):
        if v.code != first.code:
            raise ValueError(f"inputs[{i}] has dtype {v.dtype_name}, inputs[0] has {first.dtype_name}")
        if v.n != first.n:
            raise ValueError(f"inputs[{i}] has {v.n} elements, inputs[0] has {first.n}")
        if v.cuda != first.cuda:
            raise ValueError(f"inputs[{i}] is on a different device than inputs[0]")
    if out is None:
        out = _empty_like(inputs[0])
    o = _View(out, "out")
    if o.code != first.code or o.n != first.n or o.cuda != first.cuda:
        raise ValueError(f"out must match the inputs: dtype {first.dtype_name}, {first.n} elements, same device")
    opc = reduce_op_code(op)
    if first.cuda:
        _require_cuda_build("reduce input")
        _K.cuda_reduce_n(o.ptr, [v.ptr for v in views], first.n, first.code, opc)
    elif len(views) == 2:
        _K.reduce(o.ptr, views[0].ptr, views[1].ptr, first.n, first.code, opc)
    else:
        _K.reduce_n(o.ptr, [v.ptr for v in views], first.n, first.code, opc)
    return out
