"""ringflow.malt.Optimizer: wraps a torch optimizer so each replica trains on
its own and averages asynchronously with its peers (MALT, mechanism 6).

    dist.init_process_group("ringflow")
    opt = ringflow.malt.Optimizer(torch.optim.SGD(model.parameters(), lr), model)
    ... the loop unchanged: opt.zero_grad(); loss.backward(); opt.step()

What a replica exchanges (update=):
  "delta" (default)  every `every` steps (default 1) it pushes its
      progress since the last exchange, weighted by delta_weight (default
      0.5), to every peer, and adds every delta that has arrived
      (_exchange_delta): every replica = start + delta_weight * (the sum
      of all replicas' progress), up to the deltas in flight, so the
      replicas stay one model.
  "grads"   every step it pushes its gradient to its k targets
      (default: every peer) and, before the wrapped optimizer steps,
      replaces its own gradient with the staleness-weighted mean of its own
      and every gradient that has arrived (about the batch of all replicas,
      as synchronous training steps on, without waiting for any); every
      `every` steps it also averages parameters as "params" does
      (gradients alone let the replicas drift apart).
  "params"  every `every` steps it pushes its parameters to its k targets
      in the Halton graph (default k = ceil(log2 N)), then averages in
      whatever snapshots have arrived (newest per sender, weighted by
      staleness).
close() first makes each replica's model the average of its last
`tail_average` steps (20; tail.py), then merges the replicas' final models
(see close()).
Why delta is the default, and what each mode measured (a 3x straggler,
2 hosts over 100 Mbit/s): bench/RESULTS.md, "MALT, third round".

Nothing ever waits on a peer, except close() (at most `settle` seconds,
for the final models of the peers still live: see close()) and replay mode
(replay_seed given, any update), which seeds every rank's RNG with
replay_seed + rank and merges, at each exchange, exactly the updates its
live in-neighbours pushed at that step (waiting for them at most
`timeout`): runs repeat bit for bit.  In replay a silent peer departs
only after `timeout`, not `depart_after`: a peer stalled by a loaded host
and taken for gone would change what is merged.
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
from .policy import FINAL, Staleness, choose, finals
from .tail import TailAverage

UPDATES = ("delta", "params", "grads")
# close() in delta mode: this long without a delta from any peer, the peers
# still live are closing too (one still training pushes every `every` steps).
_DRAIN_QUIET_S = 0.5


class Optimizer(torch.optim.Optimizer):
    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, *,
                 every: int = 1, k: int | None = None,
                 max_staleness: int | None = None, staleness_horizon: float = 50.0,
                 slots: int = 4, depart_after: float = 1.0,
                 replay_seed: int | None = None, timeout: float = 300.0,
                 update: str = "delta", delta_weight: float | None = None,
                 settle: float = 1.0, tail_average: float = 20):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if not settle >= 0:
            raise ValueError(f"settle must be >= 0 seconds, got {settle}")
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
        # Nobody forwards a delta or a gradient: it must reach every replica directly.
        self.k = self.size - 1 if update != "params" and k is None else k
        self.delta_weight = 0.5 if delta_weight is None else float(delta_weight)
        # Deltas count in full: one weighted down on the receivers but not on
        # its sender would pull every replica towards its own data.
        self.staleness = Staleness(staleness_horizon, max_staleness)
        if update == "delta":
            self.staleness = Staleness(math.inf, max_staleness)
        self.replay = replay_seed is not None
        self.timeout, self.settle, self._settled = float(timeout), float(settle), False
        if self.replay:
            torch.manual_seed(replay_seed + self.rank)
        self._params = params
        self._flat = _flatten_in_place(params)
        self.tail = TailAverage(self._flat, tail_average)  # checks its argument before any peer exists
        # Every replica starts from rank 0's model, as DDP's do: deltas never
        # close a gap between starts, and averaging would spend steps on it.
        dist.broadcast(self._flat, 0)
        store = dist.distributed_c10d._get_default_store()
        n = self._flat.numel()

        def peers(policy, newest_only):
            return Peers(store, self.rank, self.size, n, slots=slots, policy=policy,
                         depart_after=depart_after if not self.replay else max(depart_after, self.timeout),
                         timeout=self.timeout,
                         newest_only=newest_only and not self.replay)

        # Snapshots supersede each other (drop the oldest); deltas and
        # gradients add up (a full ring coalesces them, never drops one).
        self.peers = peers(_C.MaltFullPolicy.drop_oldest if update == "params"
                           else _C.MaltFullPolicy.coalesce, update == "params")
        self._avg_peers = self.peers
        if update == "grads":
            self._avg_peers = peers(_C.MaltFullPolicy.drop_oldest, True)
            self._grad = torch.empty_like(self._flat)
        # Delta mode: the model as of the last exchange, and this replica's delta since.
        self._base = self._flat.clone() if update == "delta" else None
        self._delta = torch.empty_like(self._flat) if update == "delta" else None
        self.steps = 0
        self.merges = {"merged": 0, "discarded": 0, "skipped": 0}
        everyone = [self.peers] + ([self._avg_peers] if self._avg_peers is not self.peers else [])
        self._closer = weakref.finalize(self, _close_all, everyone)

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
        if self.update == "grads":
            if closure is not None:
                raise ValueError("update='grads' merges gradients before the step: compute "
                                 "them with backward() before step(), not in a closure")
            self._exchange_grads()
        loss = self.optim.step(closure)
        self.steps += 1
        if self.steps % self.every == 0:
            if self.update == "delta":
                self._exchange_delta(self._flat)
            else:
                self._exchange(self._avg_peers, self._flat)
        self.tail.track(self._flat)
        return loss

    def close(self) -> None:
        """Leaves the group.  First the closing merge: with "params" and
        "grads" this replica's model becomes its tail average (tail.py),
        then the mean of that and the final models of the peers that close
        within `settle` seconds of it (or closed before it); with "delta",
        its progress since its last exchange is pushed, and the deltas of the peers still
        training are added as they arrive until those peers have left, for
        at most `settle` seconds (a large settle makes every replica end on
        every replica's whole epochs, as DDP's do), each sum a step of the
        tail average, which the model then becomes.  Then what the
        cross-host streams still queue is sent (for at most a second) and
        peers drop this rank at once.  Idempotent."""
        if not self._settled and self._closer.alive:
            self._settled = True
            self._settle()
        self._closer()

    def stats(self) -> dict:
        return {"steps": self.steps, **self.merges, "departed": sorted(self.peers.departed),
                "pushes": {r: o.counts()["pushes"] for r, o in self.peers.outboxes.items()},
                "merged_from": {r: self.peers.inbox.counts(r)["merged"]
                                for r in self.peers.ranks if r != self.rank}}

    # -- the exchanges ---------------------------------------------------------
    def _push(self, peers: Peers, data: torch.Tensor, step: int) -> list[int]:
        """Pushes to this step's targets; returns the live ranks."""
        live = peers.live()
        # Replay keeps the graph of the whole group: who departed when is
        # timing, and would change who averages with whom.
        graph = peers.ranks if self.replay else live
        for r in send_targets(self.rank, graph, self.k):
            if r in live:
                peers.outboxes[r].push(data.data_ptr(), step)
        return live

    def _merge(self, peers: Peers, dst: torch.Tensor, step: int, newest_only: bool,
               self_weight: float, average: bool) -> None:
        if self.replay:
            takes = self._replay_takes(peers, step, newest_only)
        else:
            takes = choose(peers.inbox.arrivals(), step, self.staleness, newest_only=newest_only)
        if takes:
            got = peers.inbox.merge(dst.data_ptr(), takes, self_weight, average)
            for key in self.merges:
                self.merges[key] += got[key]

    def _exchange(self, peers: Peers, flat: torch.Tensor) -> None:
        self._push(peers, flat, self.steps)
        self._merge(peers, flat, self.steps, True, 1.0, True)

    def _exchange_delta(self, flat: torch.Tensor) -> None:
        """Every replica applies every replica's progress at the same weight
        w, its own included: model = start + w * (sum of all deltas), up to
        those in flight."""
        torch.sub(flat, self._base, out=self._delta)
        self._delta.mul_(self.delta_weight)
        flat.copy_(self._base).add_(self._delta)
        self._push(self.peers, self._delta, self.steps)
        self._merge(self.peers, flat, self.steps, False, 0.0, False)
        self._base.copy_(flat)

    def _exchange_grads(self) -> None:
        """The local gradient becomes the weighted mean of itself and every
        gradient that arrived (a coalesced slot counts as its sum)."""
        at = 0
        for p in self._params:
            n = p.numel()
            if p.grad is None:
                self._grad[at:at + n].zero_()
            else:
                self._grad[at:at + n].copy_(p.grad.reshape(-1))
            at += n
        self._push(self.peers, self._grad, self.steps)
        self._merge(self.peers, self._grad, self.steps, False, 1.0, True)
        at = 0
        for p in self._params:
            n = p.numel()
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(self._grad[at:at + n].view_as(p))
            at += n

    def _settle(self) -> None:
        """The closing merge (close())."""
        if self.update != "delta":
            self.tail.apply(self._flat)
            self._merge_finals()
            return
        if self.steps % self.every:  # progress not yet pushed
            self._exchange_delta(self._flat)
            self.tail.track(self._flat)
        if not self.replay:  # a replay merged every delta at its own step
            self._drain_deltas()
        self.tail.apply(self._flat)

    def _drain_deltas(self) -> None:
        """The peers still training keep sending their progress: adds it as
        it comes until they have all left, for at most `settle` (a replica
        that stopped early would otherwise keep only the part of a
        straggler's epochs done before it stopped).  Peers that are closing
        too send nothing: a pause of _DRAIN_QUIET_S with no delta from anyone
        ends the wait early."""
        start = last = time.monotonic()
        while True:
            now = time.monotonic()
            # Decided before the merge: a peer's last push lands before it is seen to leave.
            done = len(self.peers.live()) <= 1 or now - start > self.settle or now - last > _DRAIN_QUIET_S
            if any(not a.step & FINAL for a in self.peers.inbox.arrivals()):
                last = now
                self._merge(self.peers, self._flat, self.steps, False, 0.0, False)
                self.tail.track(self._flat)
            if done:
                return
            time.sleep(0.002)

    def _merge_finals(self) -> None:
        """Final models go to every live peer, not just the graph's targets,
        and are waited for at most `settle` s (in replay: every live peer's,
        for at most `timeout`); this model becomes their mean with its own."""
        peers = self._avg_peers
        for r in peers.live():
            if r != self.rank:
                peers.outboxes[r].push(self._flat.data_ptr(), self.steps | FINAL)
        deadline = time.monotonic() + (self.timeout if self.replay else self.settle)
        while True:
            takes = finals(peers.inbox.arrivals())
            have = {t[0] for t in takes}
            if all(r in have for r in peers.live() if r != self.rank) or time.monotonic() > deadline:
                break
            time.sleep(0.002)
        if takes:
            got = peers.inbox.merge(self._flat.data_ptr(), takes, 1.0, True)
            self.merges["merged"] += got["merged"]

    def _replay_takes(self, peers: Peers, step: int, newest_only: bool) -> list:
        """The updates every in-neighbour pushed at `step`, waiting for those
        still alive; a departed one counts if its update arrived before it left."""
        ranks = peers.ranks
        senders = {r for r in ranks if r != self.rank and self.rank in send_targets(r, ranks, self.k)}
        deadline = time.monotonic() + self.timeout
        while True:
            live = peers.live()
            takes = choose(peers.inbox.arrivals(), step, self.staleness,
                           newest_only=newest_only, replay_step=step)
            have = {sender for sender, _, _, w in takes if w > 0}
            missing = {s for s in senders - have if s in live}
            if not missing:
                return [t for t in takes if t[3] == 0 or t[0] in senders]
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {self.rank}: replay step {step} still misses "
                                   f"ranks {sorted(missing)}")
            time.sleep(0.0005)


def _close_all(peers: list[Peers]) -> None:
    for p in peers:
        p.close()


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
