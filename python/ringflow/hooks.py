"""DDP communication hooks.

``model.register_comm_hook(None, ringflow.hooks.lowbit(bits=2))`` averages a
model's gradients over a ringflow group of its own whose cross-host level is
low-bit compressed with error feedback (csrc/algo/compressed.cc), leaving
every other call of the job exact.  The compression applies where the group
has a layout of several hosts (one group per host, or RINGFLOW_GROUPS); on
one host the average is exact.
"""

# No `from __future__ import annotations`: DDP checks the hook's return
# annotation against the real torch.futures.Future[torch.Tensor].
import torch
import torch.distributed as dist

from .backend import Options

_MODES = {8: "int8", 4: "4bit", 2: "2bit", 1: "1bit"}


def lowbit(bits: int = 2, group=None, warmup_steps: int = 0):
    """A DDP communication hook averaging gradients in `bits`-bit codes (8, 4,
    2 or 1) across hosts, over the ranks of `group` (None: every rank).
    Register it with ``model.register_comm_hook(None, hook)``.

    warmup_steps: the first steps average exactly (DeepSpeed's 1-bit Adam
    warm-up, PowerSGD's start_powerSGD_iter): an adaptive optimiser's moment
    estimates start from true gradients rather than from the large error of
    the first low-bit calls, before error feedback has anything to carry.

    Collective: builds the hook's own ringflow groups, so every rank of
    `group` calls it, in the same order.  Each DDP bucket is the same buffer
    call after call, so the core finds its quantisation residual again by
    the buffer's address and size."""
    if bits not in _MODES:
        raise ValueError(f"lowbit hook bits must be one of {sorted(_MODES)}, got {bits!r}")
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"lowbit hook warmup_steps must be an int >= 0, got {warmup_steps!r}")
    ranks = None if group is None else dist.get_process_group_ranks(group)
    compressed = dist.new_group(ranks=ranks, backend="ringflow", pg_options=Options(compress=_MODES[bits]))
    exact = (dist.new_group(ranks=ranks, backend="ringflow", pg_options=Options(compress="none"))
             if warmup_steps else None)
    steps = [0]  # finished steps: DDP marks a step's last bucket

    def lowbit_hook(state, bucket) -> torch.futures.Future[torch.Tensor]:
        pg = exact if steps[0] < warmup_steps else compressed
        if bucket.is_last():
            steps[0] += 1
        work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.AVG, group=pg, async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0])

    return lowbit_hook
