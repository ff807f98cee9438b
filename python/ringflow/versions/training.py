"""Data-parallel training with versions: commits every N steps, rollback on divergence.

Every rank runs `train`.  The writer rank (0 by default) commits
snapshots through a BackgroundCommitter; the others only keep their place.
When the guard reports divergence, all ranks take the same branch at the
same step: the writer waits for its pending commits, records the rollback
in the store and checks out HEAD (the last good commit); it broadcasts the
state, and every rank loads it, skips batches and goes on.  The data order
is a pure function of (seed, batch index), so a run that rolled back and a
run that skipped the same batches from the start compute the same model.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..jobs.base import Job
from .errors import DivergenceError
from .guard import DivergenceGuard, GuardConfig
from .objects import _DTYPES, dtype_name
from .store import Store
from .tree import flatten, unflatten
from .writer import BackgroundCommitter


@dataclass
class TrainConfig:
    steps: int = 300                 # optimizer steps to take
    commit_every: int = 25           # a commit after every this many steps (and one at step 0)
    store: str = "ringflow-versions"
    writer_rank: int = 0
    snapshot: str = "overlap"        # how the writer snapshots a commit (BackgroundCommitter)
    data_seed: int = 0
    guard: GuardConfig = field(default_factory=GuardConfig)
    inject: dict = field(default_factory=dict)   # batch index -> (rank, "nan" | "spike")
    skip: tuple = ()                             # batch indices skipped from the start


@dataclass
class TrainResult:
    rank: int
    steps: int
    batches: int
    losses: list            # (step, mean loss over ranks) of the steps the final model went through
    abandoned: list         # (step, loss) of good steps undone by a rollback
    rollbacks: list         # one dict per rollback, the same on every rank
    skipped: list
    final_loss: float       # mean training loss of the last step
    test: dict              # held-out accuracy and loss
    wall_s: float
    model_sha256: str       # over the final parameters' bytes, to compare runs bit for bit
    head: str | None = None # the store's HEAD at the end (writer rank only)


def batch_indices(n: int, global_batch: int, seed: int, batch: int) -> torch.Tensor:
    """Sample indices of global batch number `batch`: a reshuffle per epoch, seeded by (seed, epoch)."""
    per_epoch = n // global_batch
    if per_epoch == 0:
        raise ValueError(f"global batch {global_batch} is larger than the dataset ({n})")
    epoch, i = divmod(batch, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[i * global_batch:(i + 1) * global_batch]


def model_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _grad_norm(params) -> float:
    sq = [p.grad.detach().double().pow(2).sum() for p in params if p.grad is not None]
    return torch.stack(sq).sum().sqrt().item() if sq else 0.0


class _Run:
    def __init__(self, job: Job, cfg: TrainConfig, on_step: Callable | None):
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        # on_step(step, mean loss, rollbacks so far, evaluate) after every good step
        self.dist, self.job, self.cfg, self.on_step = dist, job, cfg, on_step
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if job.batch_size % self.world:
            raise ValueError(f"the global batch {job.batch_size} does not split over {self.world} ranks")
        self.local = job.batch_size // self.world
        self.model = DDP(job.model)
        self.opt = job.make_optimizer(self.model.parameters())
        self.guard = DivergenceGuard(cfg.guard, self.world)
        self.writer = self.rank == cfg.writer_rank
        self.store = Store(cfg.store) if self.writer else None
        self.committer = None
        if self.writer:
            self.committer = BackgroundCommitter(self.store, snapshot=cfg.snapshot)
            self.committer.attach(self.opt)  # an overlapped copy finishes before the next update
        self.step = self.batch = 0
        self.skipped = set(int(b) for b in cfg.skip)
        self.losses, self.abandoned, self.rollbacks = [], [], []
        self.rng_at_commit = torch.get_rng_state()
        self.lr_factor = 1.0    # product of the lr_scale of every rollback so far

    def commit(self, message: str, loss: float | None) -> None:
        # Every rank keeps its own RNG state for rollbacks; the commit records all
        # of them (element r is rank r's), so a run resumed from it restores each.
        self.rng_at_commit = torch.get_rng_state()
        per_rank = [torch.empty_like(self.rng_at_commit) for _ in range(self.world)]
        self.dist.all_gather(per_rank, self.rng_at_commit)
        if not self.writer:
            return
        per_epoch = len(self.job.train[1]) // self.job.batch_size
        self.committer.submit(
            {"model": self.model.module, "optim": self.opt.state_dict()}, step=self.step,
            metrics={} if loss is None else {"loss": loss}, message=message,
            rng={"torch": per_rank},
            cursor={"epoch": self.batch // per_epoch, "position": self.batch,
                    "seed": self.cfg.data_seed, "skipped": sorted(self.skipped)},
            config={"job": self.job.config, "world_size": self.world,
                    "guard": self.guard.describe(), "commit_every": self.cfg.commit_every},
            extra={"guard": self.guard.state(), "rollbacks": len(self.rollbacks),
                   "lr_factor": self.lr_factor})

    def one_batch(self) -> tuple[float, float]:
        x_all, y_all = self.job.train
        idx = batch_indices(len(y_all), self.job.batch_size, self.cfg.data_seed, self.batch)
        idx = idx[self.rank * self.local:(self.rank + 1) * self.local]
        loss = self.job.loss_fn(self.model(x_all[idx]), y_all[idx])
        rank_kind = self.cfg.inject.get(self.batch)
        if rank_kind and rank_kind[0] == self.rank:  # fault injection for demos and tests
            loss = loss * (float("nan") if rank_kind[1] == "nan" else 1000.0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss.item(), _grad_norm(self.model.parameters())

    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        self.commit("start", None)
        while self.step < self.cfg.steps:
            if self.batch in self.skipped:
                self.batch += 1
                continue
            loss, gnorm = self.one_batch()
            verdict = self.guard.check(loss, gnorm)
            if verdict.diverged:
                self.roll_back(verdict.reason)
                continue
            self.opt.step()
            self.guard.accept(verdict.mean_loss)
            self.step += 1
            self.batch += 1
            self.losses.append((self.step, verdict.mean_loss))
            if self.on_step:
                self.on_step(self.step, verdict.mean_loss, len(self.rollbacks),
                             lambda: self.job.evaluate(self.model.module))
            if self.step % self.cfg.commit_every == 0 or self.step == self.cfg.steps:
                self.commit(f"step {self.step}", verdict.mean_loss)
        head = None
        if self.writer:
            self.committer.close()
            head = self.store.refs.head()
        return TrainResult(self.rank, self.step, self.batch, self.losses, self.abandoned,
                           self.rollbacks, sorted(self.skipped),
                           self.losses[-1][1] if self.losses else float("nan"),
                           self.job.evaluate(self.model.module), time.perf_counter() - t0,
                           model_digest(self.model.module), head)

    def roll_back(self, reason: str) -> None:
        bad_step, bad_batch = self.step, self.batch
        if len(self.rollbacks) >= self.cfg.guard.max_rollbacks:
            if self.writer:
                self.committer.close()
            raise DivergenceError(
                f"rank {self.rank}: training diverged at step {bad_step} (batch {bad_batch}): "
                f"{reason}; giving up after {len(self.rollbacks)} rollback(s) "
                f"(max_rollbacks={self.cfg.guard.max_rollbacks}); the commits are in {self.cfg.store}")
        cid, commit_step, cursor, extra, state = self._fetch_last_good(reason, bad_step)
        self.model.module.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optim"])
        torch.set_rng_state(self.rng_at_commit)
        self.guard.load(extra.get("guard", {}))
        # The commit's learning rates carry the scaling of the rollbacks before it;
        # bring them to lr_scale ** (rollbacks so far, this one included).
        self.lr_factor *= self.cfg.guard.lr_scale
        for g in self.opt.param_groups:
            g["lr"] *= self.lr_factor / extra.get("lr_factor", 1.0)
        start = int(cursor["position"])
        if self.cfg.guard.skip == "since":
            self.skipped.update(range(start, bad_batch + 1))
        else:
            self.skipped.add(bad_batch)
        self.step, self.batch = commit_step, start
        self.abandoned += [x for x in self.losses if x[0] > commit_step]
        self.losses = [x for x in self.losses if x[0] <= commit_step]
        event = {"commit": cid, "to_step": commit_step, "at_step": bad_step,
                 "batch": bad_batch, "reason": reason}
        self.rollbacks.append(event)

    def _fetch_last_good(self, reason: str, bad_step: int):
        """Writer: HEAD after its pending commits (the last good one), broadcast to all ranks."""
        src = self.cfg.writer_rank
        if self.writer:
            self.committer.flush()
            c = self.store.read_commit("HEAD")
            cid = self.store.resolve("HEAD")
            self.store.rollback(cid, reason=f"divergence at step {bad_step}: {reason}", step=bad_step)
            tree, tensors = flatten(self.store.checkout(cid))
            meta = [cid, c.step, c.cursor, c.extra, tree,
                    [(n, dtype_name(t.dtype), list(t.shape)) for n, t in sorted(tensors.items())]]
        else:
            meta = [None] * 6
        self.dist.broadcast_object_list(meta, src=src)
        cid, step, cursor, extra, tree, specs = meta
        if not self.writer:
            tensors = {n: torch.empty(shape, dtype=_DTYPES[dt]) for n, dt, shape in specs}
        for n, _, _ in specs:
            self.dist.broadcast(tensors[n], src=src)
        return cid, step, cursor, extra, unflatten(tree, tensors.__getitem__)


def train(job: Job, cfg: TrainConfig, on_step: Callable | None = None) -> TrainResult:
    """Trains `job` on this rank (torch.distributed must be initialised); see the module doc."""
    return _Run(job, cfg, on_step).run()
