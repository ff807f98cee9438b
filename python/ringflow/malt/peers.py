"""Who this rank can push to: its Inbox, an Outbox into every same-host
peer's Inbox, found through the process group's store, and which of them
are still alive.

The store is used only here, while every rank builds its Optimizer (rank 0
may host it and stop first later).  After that nothing waits on any peer:
a peer whose Inbox closed (for good) or whose heartbeat has stood still
more than `depart_after` seconds (until it moves again: a rank starved of
CPU is not dead) is departed, and the send graph is drawn over the rest.
"""

from __future__ import annotations

import itertools
import logging
import os
from datetime import timedelta

from .. import _C
from ..rendezvous import host_identity

log = logging.getLogger("ringflow.malt")

_instances = itertools.count()  # every rank builds its Optimizers in the same order


class Peers:
    def __init__(self, store, rank: int, size: int, count: int, *, slots: int,
                 policy: "_C.MaltFullPolicy", depart_after: float, timeout: float):
        if depart_after <= 0:
            raise ValueError(f"depart_after must be positive, got {depart_after}")
        self.rank, self.size, self.depart_after = rank, size, float(depart_after)
        prefix = f"ringflow/malt/{next(_instances)}"
        host = host_identity()
        store.set(f"{prefix}/host/{rank}", host)
        hosts = [_text(store.get(f"{prefix}/host/{r}")) for r in range(size)]
        remote = [r for r in range(size) if hosts[r] != host]
        if remote:
            raise NotImplementedError(
                f"ringflow.malt reaches peers through shared memory only; ranks {remote} run on "
                "another host (one TCP stream per remote peer is not built yet)")
        self.local = list(range(size))  # every rank: all on this host
        self.inbox = _C.MaltInbox(len(self.local), count, slots, policy)
        store.set(f"{prefix}/inbox/{rank}", f"{os.getpid()} {self.inbox.fd} {self.inbox.bytes}")
        self.outboxes: dict[int, _C.MaltOutbox] = {}
        me = self.local.index(rank)
        for r in self.local:
            if r != rank:
                pid, fd, nbytes = map(int, _text(store.get(f"{prefix}/inbox/{r}")).split())
                self.outboxes[r] = _C.MaltOutbox(pid, fd, nbytes, me, count)
        # Every Inbox is mapped by every sender before anyone may leave and
        # take the store (rank 0's) with it.
        store.set(f"{prefix}/mapped/{rank}", "1")
        store.wait([f"{prefix}/mapped/{r}" for r in range(size)], timedelta(seconds=timeout))
        self.departed: set[int] = set()

    def live(self) -> list[int]:
        """The ranks alive now, this one included; logs each departure."""
        for r, out in self.outboxes.items():
            alive = out.alive(self.depart_after)
            if not alive and r not in self.departed:
                self.departed.add(r)
                log.info("rank %d: peer %d departed; dropped from the send graph", self.rank, r)
            elif alive and r in self.departed:
                self.departed.discard(r)
                log.info("rank %d: peer %d is back", self.rank, r)
        return [r for r in self.local if r not in self.departed]

    def sender_of(self, index: int) -> int:
        return self.local[index]

    def close(self) -> None:
        self.inbox.close()


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
