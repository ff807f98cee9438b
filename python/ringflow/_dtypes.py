"""Codes shared with the C++ core (types.h) for element types and reduce ops."""

from __future__ import annotations

import numpy as np

# Same order as ringflow::DType.
DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16", "int8", "uint8", "int32", "int64", "bool")
DTYPE_CODE = {name: code for code, name in enumerate(DTYPE_NAMES)}

# Same order as ringflow::ReduceOp.
REDUCE_OP_NAMES = ("sum", "product", "min", "max", "avg", "band", "bor", "bxor")
REDUCE_OP_CODE = {name: code for code, name in enumerate(REDUCE_OP_NAMES)}

_NUMPY_CODE = {
    np.dtype(np.float32): 0,
    np.dtype(np.float64): 1,
    np.dtype(np.float16): 2,
    np.dtype(np.int8): 4,
    np.dtype(np.uint8): 5,
    np.dtype(np.int32): 6,
    np.dtype(np.int64): 7,
    np.dtype(np.bool_): 8,
}


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

        _TORCH_CODE.update({
            torch.float32: 0,
            torch.float64: 1,
            torch.float16: 2,
            torch.bfloat16: 3,
            torch.int8: 4,
            torch.uint8: 5,
            torch.int32: 6,
            torch.int64: 7,
            torch.bool: 8,
        })
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
