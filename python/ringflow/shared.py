"""Tensors in memory that same-host peers map directly.

An allreduce over ranks on one host reaches a plain tensor of a peer only
through the kernel (process_vm_readv/writev: pin, copy into a bounce buffer,
reduce, copy back).  A tensor from :func:`shared_empty` lives in a memfd that
the peers map once, so the owner of each block reduces their data in place
and stores the result straight into their memory: one pass over memory, as
NCCL's registered buffers skip its staging copies.  Any tensor works with
every collective; only its speed differs.  Views into a shared tensor are
shared too.

The pages are shared with a child process after ``fork`` instead of copied,
as with any MAP_SHARED memory (torch's ``share_memory_()`` tensors alike).
"""

from __future__ import annotations

import math

from . import _C

__all__ = ["shared_empty"]


def shared_empty(*size, dtype=None):
    """An uninitialised torch tensor of ``size`` (ints, or one sequence) and
    ``dtype`` (default torch.get_default_dtype()), in shared memory; huge
    pages back it where RINGFLOW_SHM_HUGEPAGES allows (the default).  Its
    memory is freed, and unmapped by peers, when the last view of it goes;
    ringflow.stats()["shared_buffers"] counts them."""
    import torch

    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = tuple(size[0])
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in size):
        raise TypeError(f"shared_empty: size must be ints, got {size!r}")
    if any(d < 0 for d in size):
        raise ValueError(f"shared_empty: negative dimension in size {size!r}")
    dtype = dtype or torch.get_default_dtype()
    numel = math.prod(size)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if numel == 0:
        return torch.empty(size, dtype=dtype)  # no data to share
    # frombuffer keeps the buffer alive as long as any view of the tensor.
    buffer = _C.SharedBuffer(numel * itemsize)
    return torch.frombuffer(buffer, dtype=dtype, count=numel).view(size)

