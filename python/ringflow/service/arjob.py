"""An `allreduce` job on the master: elastic generations of one torch.distributed group.

As in torchrun's elastic restarts, the master (its SQLite state) is the
source of truth and a process group is disposable.  A *generation* is one
group: the workers that joined it (by rank), the commit it restores from,
and a rendezvous prefix (kvstore.py) that is a fresh random secret.  The
workers train until a peer fails (ringflow's PeerError or a timeout reaches
the survivors), the master re-forms the group (a worker stopped
heartbeating, or a survivor reported the generation broken) or the master
restarted (a restarted master opens a new generation of every running
allreduce job).  The members then abandon the group and ask for work; the
next generation forms from all of the job's live workers (free ones join
up to `workers`), or from those that came within JOIN_WINDOW_S of the
first one (a dead worker is live until its heartbeat times out), restores the
job's last *confirmed* commit and recomputes from its cursor.  Unless
the job names a `store` its workers share, versions pass through the
master (`commit_state`, `checkout_state`): workers need no shared
filesystem, and a new generation rolls the master's store back to the
confirmed commit.

Exactly once per epoch.  The batches are a pure function of (seed, step)
(distribution.py); a generation of W workers splits each step's batch into
W parts, part r to rank r.  A step is *confirmed* when rank 0 has committed
a version at or after it and every rank of the generation has reported
the sample ids it consumed up to that commit; confirmation writes those
ids to the sample log and moves the job's restore point (step, commit) in
one transaction.  Steps after the last confirmed commit are recomputed by
the next generation from that commit, so the samples the lost worker (or
any worker) consumed in them are split over the new group.  The sample log
therefore counts confirmed steps only, and over a finished job it holds
every training sample exactly once per epoch.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
import time

import numpy as np
import torch

from ..versions.store import Store
from .kvstore import RendezvousSpaces
from .psjob import JobFailed

log = logging.getLogger("ringflow.service")
JOIN_WINDOW_S = 3.0          # after the first member joins, how long the others have to come
COLLECTIVE_TIMEOUT_S = 60.0  # the group's timeout: a collective with a silent peer gives up


class AllreduceJob:
    def __init__(self, row: dict, state, spaces: RendezvousSpaces, store_path: str):
        self.id, self.spec, self.state, self.spaces = row["id"], row["spec"], state, spaces
        self.store_path = self.spec["store"] or store_path
        self.vstore = None if self.spec["store"] else Store(self.store_path)
        self.restore = (int(row["step"]), row["head"])   # the last confirmed step and commit
        self.lock = threading.RLock()
        self.gen, self.prefix = 0, None
        self.restarts = -1
        self.open("the job started")

    # --- generations --------------------------------------------------------------------------
    def open(self, reason: str) -> None:
        """Ends the current generation (if any) and starts forming the next one."""
        with self.lock:
            if self.prefix:
                self.spaces.close(self.prefix)
            self.restarts += 1
            if self.restarts > self.spec["max_restarts"]:
                raise JobFailed(f"the group was re-formed {self.restarts - 1} times "
                                f"(max_restarts = {self.spec['max_restarts']}); the last time: "
                                f"{reason}")
            self.gen += 1
            step, head = self.restore
            if self.vstore is not None and head and self.vstore.refs.head() != head:
                # commits after the confirmed one were not reported by every rank: undone
                self.vstore.rollback(head, step=step, reason=(
                    f"generation {self.gen} restores step {step}, the last commit every rank "
                    f"confirmed ({reason})"))
            self.prefix = f"job{self.id}/gen{self.gen}/{secrets.token_hex(16)}"
            self.spaces.open(self.prefix)
            self.members: list[int] | None = None
            self.joined: list[int] = []
            self.handed: set[int] = set()
            self.first_join: float | None = None
            self.reports: dict[int, dict[int, list]] = {}   # commit step -> rank -> consumed
            self.heads: dict[int, str] = {}
            self.done: set[int] = set()
            self.reason = reason
            self._recruit()
            log.info("job %s: generation %s forming from step %s: %s", self.id, self.gen,
                     self.restore[0], reason)

    def _recruit(self) -> None:
        """Free workers join a generation that has fewer live workers than the job asks for."""
        mine = self.state.query("SELECT id FROM workers WHERE alive = 1 AND job_id = ?", self.id)
        want = self.spec["workers"] - len(mine)
        if want > 0:
            with self.state.tx() as db:
                for r in db.execute("SELECT id FROM workers WHERE alive = 1 AND job_id IS NULL "
                                    "ORDER BY id LIMIT ?", (want,)).fetchall():
                    db.execute("UPDATE workers SET job_id = ?, rank = NULL WHERE id = ?",
                               (self.id, r["id"]))

    def join(self, worker: int) -> dict:
        """A worker of this job asks for work: its assignment, `wait` while the group forms,
        or `idle` (freed) when the group formed without it."""
        with self.lock:
            if self.members is not None:
                if worker not in self.members:
                    return {"kind": "idle", "free": True}
                if self.members.index(worker) in self.done:
                    return {"kind": "wait"}   # until the other ranks are done too
                if worker in self.handed:   # back without saying why: its group is broken
                    self.open(f"worker {worker} left generation {self.gen}")
                    return self.join(worker)
                self.handed.add(worker)
                return self._assignment(worker)
            if worker not in self.joined:
                self.joined.append(worker)
                self.first_join = self.first_join or time.monotonic()
            expected = {r["id"] for r in self.state.query(
                "SELECT id FROM workers WHERE alive = 1 AND job_id = ?", self.id)}
            if not expected <= set(self.joined) \
                    and time.monotonic() - self.first_join < JOIN_WINDOW_S:
                return {"kind": "wait"}
            self.members = [w for w in self.joined if w in expected]
            log.info("job %s: generation %s formed: workers %s by rank", self.id, self.gen,
                     self.members)
            with self.state.tx() as db:
                for rank, w in enumerate(self.members):
                    db.execute("UPDATE workers SET rank = ? WHERE id = ?", (rank, w))
            return self.join(worker)

    def _assignment(self, worker: int) -> dict:
        step, head = self.restore
        return {"kind": "allreduce", "job": self.id, "spec": self.spec, "gen": self.gen,
                "prefix": self.prefix, "rank": self.members.index(worker),
                "world": len(self.members), "restore_step": step, "restore_head": head,
                "store_path": self.store_path, "timeout_s": COLLECTIVE_TIMEOUT_S,
                "reason": self.reason}

    def lost(self, worker: int) -> None:
        """The worker stopped heartbeating."""
        with self.lock:
            if self.members is None:
                if worker in self.joined:
                    self.joined.remove(worker)
            elif worker in self.members:
                self.open(f"worker {worker} (rank {self.members.index(worker)} of generation "
                          f"{self.gen}) stopped heartbeating")

    def _current(self, worker: int, prefix) -> bool:
        """Whether the worker speaks of the current generation (known by its prefix, which is
        unique across master restarts) and is one of its members."""
        return prefix == self.prefix and self.members is not None and worker in self.members

    def abandoned(self, worker: int, prefix: str, why: str) -> None:
        with self.lock:
            if self._current(worker, prefix):
                self.open(f"rank {self.members.index(worker)} of generation {self.gen}: {why}")

    def check_rendezvous(self, worker: int, gen: int, prefix: str) -> None:
        with self.lock:
            if not self._current(worker, prefix):
                raise LookupError(f"rendezvous refused: worker {worker} (generation {gen}) is not "
                                  f"a member of job {self.id}'s current generation {self.gen} "
                                  "under that prefix")

    # --- commits and the sample log -----------------------------------------------------------
    def commit_state(self, worker: int, h: dict, payload: bytes) -> str | None:
        """Rank 0's state at a commit boundary, committed here; None when the generation is
        over (the rank then hears `abandon` from its commit report)."""
        with self.lock:
            if not self._current(worker, h.get("prefix")):
                return None
            if self.vstore is None or self.members.index(worker) != 0:
                raise ValueError(f"job {self.id}: only rank 0 sends its state, and only when the "
                                 "job has no `store` of its own")
            try:
                state = torch.load(io.BytesIO(payload), weights_only=True)
            except Exception as e:  # noqa: BLE001 - whatever the unpickler says, the bytes are bad
                raise ValueError(f"job {self.id}: rank 0's state is not a torch save "
                                 f"({type(e).__name__}: {e})") from None
            if not isinstance(state, dict) or set(state) != {"model", "optim"}:
                raise ValueError(f"job {self.id}: a commit holds model and optim, got "
                                 f"{sorted(state) if isinstance(state, dict) else type(state)}")
            return self.vstore.commit(state, step=int(h["step"]), message=str(h.get("message", "")),
                                      cursor=h.get("cursor"), metrics=h.get("metrics") or {},
                                      config={"job": self.spec, "world_size": len(self.members),
                                              "generation": self.gen})

    def checkout_state(self, worker: int, h: dict) -> bytes:
        with self.lock:
            if not self._current(worker, h.get("prefix")) or h.get("head") != self.restore[1]:
                raise LookupError(f"job {self.id}: worker {worker} may fetch only its current "
                                  f"generation's restore commit")
            if self.vstore is None:
                raise ValueError(f"job {self.id} keeps its versions in {self.store_path}")
            buf = io.BytesIO()
            torch.save(self.vstore.checkout(self.restore[1]), buf)
            return buf.getvalue()

    def commit_report(self, worker: int, h: dict, payload: bytes) -> bool:
        """A rank's report at a commit boundary; True when the generation is over (abandon)."""
        with self.lock:
            if not self._current(worker, h.get("prefix")):
                return True
            rank, step = self.members.index(worker), int(h["step"])
            ids = np.frombuffer(payload, dtype="<i8")
            consumed, off = [], 0
            for s, epoch, count in h["consumed"]:
                consumed.append((int(s), int(epoch), ids[off:off + int(count)].tolist()))
                off += int(count)
            if off != len(ids):
                raise ValueError(f"commit report of rank {rank}: {len(ids)} sample ids, the "
                                 f"header counts {off}")
            self.reports.setdefault(step, {})[rank] = consumed
            if rank == 0:
                self.heads[step] = str(h["head"])
            self._confirm()
            return False

    def _confirm(self) -> None:
        for step in sorted(self.reports):
            got = self.reports[step]
            if len(got) < len(self.members) or step not in self.heads:
                return
            rows = [(self.id, epoch, sample, s, rank, self.members[rank])
                    for rank, consumed in got.items() for s, epoch, ids in consumed for sample in ids]
            with self.state.tx() as db:
                db.executemany("INSERT INTO sample_log VALUES (?, ?, ?, ?, ?, ?)", rows)
                db.execute("UPDATE jobs SET step = ?, head = ? WHERE id = ?",
                           (step, self.heads[step], self.id))
            self.restore = (step, self.heads[step])
            del self.reports[step]

    def report_done(self, worker: int, prefix: str) -> tuple[bool, int] | None:
        """(every rank is done, the worker's rank); None when the generation is over (abandon)."""
        with self.lock:
            if not self._current(worker, prefix):
                return None
            rank = self.members.index(worker)
            self.done.add(rank)
            return len(self.done) == len(self.members) and self.restore[0] == self.spec["steps"], rank

    def close(self) -> None:
        with self.lock:
            if self.prefix:
                self.spaces.close(self.prefix)
            self.prefix = None
