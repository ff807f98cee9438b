"""ringflow.malt.Optimizer: wraps a torch optimizer so each replica trains on
its own and averages asynchronously with k peers (MALT, mechanism 6).

    dist.init_process_group("ringflow")
    opt = ringflow.malt.Optimizer(torch.optim.SGD(model.parameters(), lr), model)
    ... the loop unchanged: opt.zero_grad(); loss.backward(); opt.step()

Every `every` steps the replica pushes its parameters to its targets in
the Halton graph, then merges whatever snapshots have arrived (newest per
sender, weighted by staleness).  (Exchanging gradients instead -- the
rings' Coalesce policy is built for it -- was tried and dropped: with
k-of-N pushes and no parameter averaging the replicas drift apart.)
With update="delta" it pushes its weighted progress since the last
exchange instead and adds every delta that arrived (_exchange_delta).

Nothing ever waits on a peer, except in replay mode (replay_seed given),
which seeds every rank's RNG with replay_seed + rank and merges, at each
averaging step, exactly the snapshots its live in-neighbours pushed at that
step (waiting for them at most `timeout`): runs repeat bit for bit.
"""

from __future__ import annotations

import math
import time
import weakref

import torch
import torch.distributed as dist

from .. import _C
from .graph import send_targets
from .peers import Peers
from .policy import Staleness, choose


class Optimizer(torch.optim.Optimizer):
    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, *,
                 every: int = 1, k: int | None = None,
                 max_staleness: int | None = None, staleness_horizon: float = 50.0,
                 slots: int = 4, depart_after: float = 1.0,
                 replay_seed: int | None = None, timeout: float = 300.0,
                 update: str = "params", delta_weight: float | None = None):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if update not in ("params", "delta"):
            raise ValueError(f"update must be 'params' or 'delta', got {update!r}")
        if update == "delta" and replay_seed is not None:
            raise ValueError("replay_seed repeats update='params' runs only")
        if delta_weight is not None and not delta_weight > 0:
            raise ValueError(f"delta_weight must be positive, got {delta_weight}")
        if not dist.is_initialized():
            raise RuntimeError("ringflow.malt.Optimizer needs dist.init_process_group() first")
        params = [p for p in model.parameters()]
        bad = [tuple(p.shape) for p in params if p.dtype != torch.float32 or p.device.type != "cpu"]
        if not params or bad:
            raise ValueError("ringflow.malt averages float32 CPU parameters; "
                             f"these are not: {bad}" if bad else "the model has no parameters")
        self.optim, self.model, self.every = optimizer, model, every
        self.param_groups = optimizer.param_groups
        self.defaults = optimizer.defaults
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.update = update
        # Nobody forwards a delta: it must reach every replica directly.
        self.k = self.size - 1 if update == "delta" and k is None else k
        self.delta_weight = 1.0 / self.size if delta_weight is None else float(delta_weight)
        # Deltas count in full: one weighted down on the receivers but not on
        # its sender would pull every replica towards its own data.
        self.staleness = Staleness(math.inf if update == "delta" else staleness_horizon, max_staleness)
        self.replay = replay_seed is not None
        self.timeout = float(timeout)
        if self.replay:
            torch.manual_seed(replay_seed + self.rank)
        self._flat = _flatten_in_place(params)
        store = dist.distributed_c10d._get_default_store()
        self.peers = Peers(store, self.rank, self.size, sum(p.numel() for p in params),
                           slots=slots, policy=_C.MaltFullPolicy.drop_oldest if update == "params"
                           else _C.MaltFullPolicy.coalesce, depart_after=depart_after,
                           timeout=self.timeout, newest_only=update == "params" and not self.replay)
        # Delta mode: the model as of the last exchange, and this replica's delta since.
        self._base = self._flat.clone() if update == "delta" else None
        self._delta = torch.empty_like(self._flat) if update == "delta" else None
        self.steps = 0
        self.merges = {"merged": 0, "discarded": 0, "skipped": 0}
        self._closer = weakref.finalize(self, self.peers.close)

    # torch.optim.Optimizer's surface, forwarded to the wrapped optimizer.
    @property
    def state(self):
        return self.optim.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optim.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.optim.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.optim.load_state_dict(state_dict)

    def add_param_group(self, param_group) -> None:
        raise NotImplementedError("ringflow.malt averages the parameters it was built with")

    def step(self, closure=None):
        loss = self.optim.step(closure)
        self.steps += 1
        if self.steps % self.every == 0:
            if self.update == "delta":
                self._exchange_delta(self._flat)
            else:
                self._exchange(self._flat)
        return loss

    def close(self) -> None:
        """Leaves the group: what the cross-host streams still queue is sent
        (for at most a second), then peers drop this rank at once.
        Idempotent."""
        self._closer()

    def stats(self) -> dict:
        return {"steps": self.steps, **self.merges, "departed": sorted(self.peers.departed),
                "pushes": {r: o.counts()["pushes"] for r, o in self.peers.outboxes.items()},
                "merged_from": {r: self.peers.inbox.counts(r)["merged"]
                                for r in self.peers.ranks if r != self.rank}}

    # -- the exchange ----------------------------------------------------------
    def _exchange(self, flat: torch.Tensor) -> None:
        live = self.peers.live()
        # Replay keeps the graph of the whole group: who departed when is
        # timing, and would change who averages with whom.
        graph = self.peers.ranks if self.replay else live
        for r in send_targets(self.rank, graph, self.k):
            if r in live:
                self.peers.outboxes[r].push(flat.data_ptr(), self.steps)
        if self.replay:
            takes = self._replay_takes()
        else:
            takes = choose(self.peers.inbox.arrivals(), self.steps, self.staleness,
                           newest_only=True)
        if takes:
            got = self.peers.inbox.merge(flat.data_ptr(), takes, 1.0)
            for key in self.merges:
                self.merges[key] += got[key]

    def _exchange_delta(self, flat: torch.Tensor) -> None:
        """Every replica applies every replica's progress at the same weight
        w, its own included: model = start + w * (sum of all deltas), up to
        those in flight.  A full ring coalesces deltas, never drops one."""
        torch.sub(flat, self._base, out=self._delta)
        self._delta.mul_(self.delta_weight)
        flat.copy_(self._base).add_(self._delta)
        live = self.peers.live()
        for r in send_targets(self.rank, live, self.k):
            self.peers.outboxes[r].push(self._delta.data_ptr(), self.steps)
        takes = choose(self.peers.inbox.arrivals(), self.steps, self.staleness, newest_only=False)
        if takes:
            got = self.peers.inbox.merge(flat.data_ptr(), takes, 0.0, False)
            for key in self.merges:
                self.merges[key] += got[key]
        self._base.copy_(flat)

    def _replay_takes(self) -> list:
        """This step's snapshot of every in-neighbour, waiting for those still
        alive; a departed one counts if its snapshot arrived before it left."""
        ranks = self.peers.ranks
        senders = {r for r in ranks if r != self.rank and self.rank in send_targets(r, ranks, self.k)}
        deadline = time.monotonic() + self.timeout
        while True:
            live = self.peers.live()
            takes = choose(self.peers.inbox.arrivals(), self.steps, self.staleness,
                           newest_only=True, replay_step=self.steps)
            have = {sender for sender, _, _, w in takes if w > 0}
            missing = {s for s in senders - have if s in live}
            if not missing:
                return [t for t in takes if t[3] == 0 or t[0] in senders]
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {self.rank}: replay step {self.steps} still misses "
                                   f"ranks {sorted(missing)}")
            time.sleep(0.0005)


def _flatten_in_place(params: list[torch.Tensor]) -> torch.Tensor:
    """One contiguous float32 buffer that every parameter becomes a view of,
    so pushes and merges touch the model's memory with no copy."""
    flat = torch.empty(sum(p.numel() for p in params), dtype=torch.float32)
    at = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            flat[at:at + n].copy_(p.reshape(-1))
            p.data = flat[at:at + n].view_as(p)
            at += n
    return flat
