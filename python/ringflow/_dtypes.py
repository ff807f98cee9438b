"""Codes of the C++ core (types.h) for element types and reduce ops, from the binding."""

from __future__ import annotations

import numpy as np

from . import _C

# The core's codes are positions in these tuples (types.h), read from the
# binding, so nothing here copies an enum order.
DTYPE_NAMES = tuple(_C.dtype_names())
DTYPE_CODE = {name: code for code, name in enumerate(DTYPE_NAMES)}

REDUCE_OP_NAMES = tuple(_C.reduce_op_names())
REDUCE_OP_CODE = {name: code for code, name in enumerate(REDUCE_OP_NAMES)}

# numpy has no bfloat16.
_NUMPY_CODE = {np.dtype(name): code for name, code in DTYPE_CODE.items() if name != "bfloat16"}


def numpy_dtype_code(dtype) -> int:
    """The core's code for a numpy dtype; ValueError naming it if unsupported."""
    try:
        return _NUMPY_CODE[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"ringflow does not support numpy dtype {np.dtype(dtype)}") from None


_TORCH_CODE: dict = {}


def torch_dtype_code(dtype) -> int:
    """The core's code for a torch dtype; ValueError naming it if unsupported."""
    try:
        return _TORCH_CODE[dtype]
    except KeyError:
        pass
    if not _TORCH_CODE:  # built on first use: torch is imported only by those who use it
        import torch

        _TORCH_CODE.update({getattr(torch, name): code for name, code in DTYPE_CODE.items()})
        if dtype in _TORCH_CODE:
            return _TORCH_CODE[dtype]
    raise ValueError(f"ringflow does not support tensors of dtype {dtype}")


def reduce_op_code(op) -> int:
    """Accepts a name ('sum'), a code, or a torch.distributed.ReduceOp."""
    if isinstance(op, int):
        if 0 <= op < len(REDUCE_OP_NAMES):
            return op
        raise ValueError(f"unknown reduce op code {op}")
    name = str(op).lower().rsplit(".", 1)[-1]
    if name in REDUCE_OP_CODE:
        return REDUCE_OP_CODE[name]
    raise ValueError(f"ringflow does not support reduce op {op}")
