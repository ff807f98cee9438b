"""Training several models at once, one model's gradients synchronising while
the next model computes (mechanism 5).

A `Pipeline` goes round its models.  After model i's backward its gradients
are packed into buckets (about 25 MiB, as DDP coalesces them) and each
bucket is all-reduced with async_op=True; model i+1's forward and backward
run while those calls are in flight; then model i's synchronisation is
awaited, its gradients averaged and its optimizer stepped: as soon as a
check between two models' computations finds it complete, and at the
latest just before model i's next forward (the only place the pipeline
blocks).  The last model's synchronisation overlaps the first models'
computation in the next round.

Nothing here depends on ringflow: any torch.distributed group works (gloo
for comparison).  Gradients are summed and divided by the world size, as
DDP averages them, so a pipelined run gives the same bits as the models
trained one after another (`overlap=False`) with the same data order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from . import timeline

DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024  # DDP's bucket_cap_mb default


@dataclass
class Member:
    """One model of the round, with its own optimizer and loss.

    `loss(model, batch)` runs the forward pass and returns a scalar loss."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[torch.nn.Module, Any], torch.Tensor]


class _Bucket:
    """A flat buffer over consecutive parameters' gradients (one dtype)."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        total = sum(p.numel() for p in params)
        self.flat = torch.empty(total, dtype=params[0].dtype)
        self.views, offset = [], 0
        for p in params:
            self.views.append(self.flat[offset:offset + p.numel()].view(p.shape))
            offset += p.numel()

    def pack(self) -> None:
        for p, v in zip(self.params, self.views):
            # A parameter the loss did not reach contributes zeros, so every
            # rank still sends the same buckets (no find_unused_parameters).
            v.copy_(p.grad) if p.grad is not None else v.zero_()

    def unpack(self, world: int) -> None:
        self.flat.div_(world)
        for p, v in zip(self.params, self.views):
            if p.grad is None:
                p.grad = v.clone()
            else:
                p.grad.copy_(v)


def make_buckets(model: torch.nn.Module, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[_Bucket]:
    """DDP's layout: parameters in reverse registration order (the order
    backward produces their gradients), cut when a bucket would pass
    `bucket_bytes` or the dtype changes."""
    buckets, current, size = [], [], 0
    for p in reversed([p for p in model.parameters() if p.requires_grad]):
        nbytes = p.numel() * p.element_size()
        if current and (size + nbytes > bucket_bytes or p.dtype != current[0].dtype):
            buckets.append(_Bucket(current))
            current, size = [], 0
        current.append(p)
        size += nbytes
    if current:
        buckets.append(_Bucket(current))
    return buckets


@dataclass
class _Sync:
    """One model's gradients on their way: a Work per bucket."""

    works: list
    submitted: float

    def done(self) -> bool:
        return all(w.is_completed() for w in self.works)


@dataclass
class Times:
    """Seconds spent, summed over the rounds run so far (per rank).

    compute: forward, backward, packing, unpacking and optimizer steps;
    comm: from a model's first bucket submitted to its last one complete, as
    observed when awaited; waiting: the part of that the trainer sat blocked;
    wall: the rounds end to end."""

    compute: float = 0.0
    comm: float = 0.0
    waiting: float = 0.0
    wall: float = 0.0
    rounds: int = 0
    # Computations run, and how many of them started while another model's
    # sync was still in flight (the timeline names which, per span).
    computations: int = 0
    overlapped: int = 0


class Pipeline:
    """Trains `members` round-robin over `group` (None: the default group).

    overlap=False is the sequential schedule: each model's synchronisation
    is awaited right after its backward, before the next model computes.
    Every wait gives up after `timeout` (default: 5 minutes)."""

    def __init__(self, members: Sequence[Member], group=None, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 overlap: bool = True, timeout: timedelta = timedelta(minutes=5)):
        if not members:
            raise ValueError("a pipeline needs at least one model")
        self.members = list(members)
        self.group = group
        self.world = dist.get_world_size(group)
        self.overlap = overlap
        self.timeout = timeout
        self.buckets = [make_buckets(m.model, bucket_bytes) for m in self.members]
        self.pending: list[_Sync | None] = [None] * len(self.members)
        self.times = Times()

    def round(self, batches: Sequence[Any]) -> list[float]:
        """One pass over the models, batches[i] for model i; returns the losses."""
        if len(batches) != len(self.members):
            raise ValueError(f"{len(self.members)} models need {len(self.members)} batches, got {len(batches)}")
        start = time.perf_counter()
        losses = []
        for i, (m, batch) in enumerate(zip(self.members, batches)):
            # Model i's last sync has had the other models' computation to
            # finish in; if it has not, this is where the pipeline stalls.
            self._finish(i)
            # Asked after the compute span has begun, so a sync reported in
            # flight really was running during the span.
            t0 = time.perf_counter()
            in_flight = [self.members[j].name for j, s in enumerate(self.pending) if s is not None and not s.done()]
            self.times.computations += 1
            self.times.overlapped += bool(in_flight)
            losses.append(self._compute(i, m, batch, t0, in_flight))
            self.pending[i] = self._submit(i)
            if not self.overlap:
                self._finish(i)
            else:
                # Step the models whose syncs are already done, without
                # blocking: waiting here for a sync that is a little late
                # would stall the next model's computation, while the sync
                # may take until that model's own next forward.
                self._step_completed()
        self.times.wall += time.perf_counter() - start
        self.times.rounds += 1
        return losses

    def finish(self) -> None:
        """Awaits every sync in flight and steps its model (end of training)."""
        start = time.perf_counter()
        for i in range(len(self.members)):
            self._finish(i)
        self.times.wall += time.perf_counter() - start

    # -- the steps -------------------------------------------------------------
    def _step_completed(self) -> None:
        # Oldest first: calls on one group complete in submission order.
        for j in sorted((j for j, s in enumerate(self.pending) if s is not None),
                        key=lambda j: self.pending[j].submitted):
            if not self.pending[j].done():
                return
            self._finish(j)

    def _compute(self, i: int, m: Member, batch, t0: float, in_flight: list[str]) -> float:
        m.optimizer.zero_grad()
        loss = m.loss(m.model, batch)
        loss.backward()
        for b in self.buckets[i]:
            b.pack()
        t1 = time.perf_counter()
        self.times.compute += t1 - t0
        if timeline.ACTIVE is not None:
            timeline.ACTIVE.add(f"{m.name} forward+backward", timeline.COMPUTE, t0 * 1e6, t1 * 1e6,
                                {"model": m.name, "in_flight": in_flight})
        return float(loss.detach())

    def _submit(self, i: int) -> _Sync:
        submitted = time.perf_counter()
        works = [dist.all_reduce(b.flat, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
                 for b in self.buckets[i]]
        return _Sync(works, submitted)

    def _finish(self, i: int) -> None:
        sync = self.pending[i]
        if sync is None:
            return
        self.pending[i] = None
        m = self.members[i]
        t0 = time.perf_counter()
        for w in sync.works:
            w.wait(self.timeout)
        t1 = time.perf_counter()
        self.times.waiting += t1 - t0
        self.times.comm += t1 - sync.submitted
        if timeline.ACTIVE is not None:
            timeline.ACTIVE.add(f"{m.name} sync", timeline.SYNC, sync.submitted * 1e6, t1 * 1e6,
                                {"buckets": len(sync.works), "blocked_ms": (t1 - t0) * 1e3})
        with timeline.span(f"{m.name} step"):
            for b in self.buckets[i]:
                b.unpack(self.world)
            m.optimizer.step()
        self.times.compute += time.perf_counter() - t1


def overlap_efficiency(sequential_s: float, pipelined_s: float, comm_s: float, compute_s: float) -> float:
    """(T_sequential - T_pipelined) / min(T_comm, T_compute): 1 when the
    shorter of communication and computation is hidden entirely, 0 when
    nothing is.  comm_s and compute_s come from the sequential schedule,
    where the two never overlap and so are measured undisturbed."""
    hideable = min(comm_s, compute_s)
    return (sequential_s - pipelined_s) / hideable if hideable > 0 else 0.0
