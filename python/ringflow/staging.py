"""Tensors as the C++ core sees them: (address, element count, dtype code)
over contiguous CPU memory.  A tensor that is not a contiguous CPU tensor
(a strided view, a CUDA tensor) is staged through a contiguous CPU copy and
copied back when the work finishes; an output whose elements share memory
is refused before any peer is involved."""

from __future__ import annotations

import torch

from ._dtypes import torch_dtype_code


def in_place(t) -> bool:
    """A dense, contiguous CPU tensor: the core can work on its memory directly."""
    return isinstance(t, torch.Tensor) and t.is_cpu and t.layout is torch.strided and t.is_contiguous()


class Staged:
    """A contiguous CPU view of a tensor, copied back after the op if needed."""

    __slots__ = ("tensor", "buf", "write_back")

    def __init__(self, tensor: torch.Tensor, write_back: bool):
        if write_back:
            check_output(tensor)
        else:
            check_dense(tensor)
        self.tensor = tensor
        direct = in_place(tensor)
        # `.to(memory_format=contiguous_format)` hands back a strided CPU
        # view unchanged, so the copy is made explicitly: the core only ever
        # sees count elements laid out one after another.
        self.buf = tensor if direct else contiguous_copy(tensor)
        self.write_back = write_back and not direct

    @property
    def ptr(self) -> int:
        return self.buf.data_ptr()

    @property
    def count(self) -> int:
        return self.buf.numel()

    @property
    def code(self) -> int:
        return torch_dtype_code(self.buf.dtype)

    def finish(self) -> None:
        if self.write_back:
            self.tensor.copy_(self.buf)


def check_dense(tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout is not torch.strided:
        raise ValueError(f"ringflow supports dense (strided) tensors only, got layout {tensor.layout}")


def check_writable(tensor: torch.Tensor) -> None:
    """An output whose elements share memory (an expand()ed view) cannot hold
    one result per element: refuse it before any peer is involved."""
    if tensor.numel() > 1 and torch._debug_has_internal_overlap(tensor) == 1:
        raise ValueError(f"ringflow cannot write into a tensor whose elements overlap in memory "
                         f"(shape {tuple(tensor.shape)}, strides {tensor.stride()}, e.g. from expand()); "
                         f"pass a tensor with its own memory, such as t.clone()")


def check_output(tensor) -> None:
    """A tensor the core may write results into."""
    check_dense(tensor)
    check_writable(tensor)


def contiguous_copy(tensor: torch.Tensor) -> torch.Tensor:
    buf = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
    buf.copy_(tensor.detach())
    return buf


def flatten(tensors) -> torch.Tensor:
    """One contiguous CPU tensor holding `tensors` one after another."""
    return torch.cat([t.detach().reshape(-1).to("cpu") for t in tensors])


def unflatten(flat: torch.Tensor, outs) -> None:
    """Copies consecutive pieces of `flat` into the tensors of `outs`."""
    offset = 0
    for o in outs:
        o = o.detach()
        o.copy_(flat[offset:offset + o.numel()].view(o.shape))
        offset += o.numel()
