"""Who this rank can push to: its Inbox (one ring per rank of the group),
an Outbox into every same-host peer's Inbox (shared memory), a
StreamOutbox to every peer on another host (one TCP stream each, drained by
a C++ thread, into that peer's StreamListener), all found through the
process group's store, and which of them are still alive.

The store is used only here, while every rank builds its Optimizer (rank 0
may host it and stop first later).  After that nothing waits on any peer.
A peer is departed, and the send graph is drawn over the rest:
  - same host: once its Inbox closed (for good), or while its heartbeat has
    stood still more than `depart_after` seconds (it is back when the beat
    moves again: a rank starved of CPU is not dead);
  - another host: once its stream ended (a killed or exited process: its
    kernel closes the stream, seen within one 50 ms beat period) or it said
    goodbye, or while its beats (every 50 ms) have stopped more than
    `depart_after` seconds (an unreachable host).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
from datetime import timedelta

from .. import _C
from ..addresses import advertised_address
from ..rendezvous import _format as host_port
from ..rendezvous import host_identity

log = logging.getLogger("ringflow.malt")

_instances = itertools.count()  # every rank builds its Optimizers in the same order


class Peers:
    """newest_only: a stream sends only the newest snapshot queued (a
    replay, which merges every round, passes False)."""

    def __init__(self, store, rank: int, size: int, count: int, *, slots: int,
                 policy: "_C.MaltFullPolicy", depart_after: float, timeout: float,
                 newest_only: bool = True):
        if depart_after <= 0:
            raise ValueError(f"depart_after must be positive, got {depart_after}")
        self.rank, self.size, self.depart_after = rank, size, float(depart_after)
        prefix = f"ringflow/malt/{next(_instances)}"
        host = host_identity()
        store.set(f"{prefix}/host/{rank}", host)
        hosts = [_text(store.get(f"{prefix}/host/{r}")) for r in range(size)]
        self.ranks = list(range(size))  # ring r of every Inbox is rank r's
        self.remote = [r for r in self.ranks if hosts[r] != host]
        self.inbox = _C.MaltInbox(size, count, slots, policy)
        self.listener = None
        if rank == 0:
            store.set(f"{prefix}/token", str(secrets.randbits(63)))
        token = int(_text(store.get(f"{prefix}/token")))
        if self.remote:
            self.listener = _C.MaltStreamListener(self.inbox, os.environ.get("RINGFLOW_BIND", "0.0.0.0"),
                                                  token, self.remote)
            store.set(f"{prefix}/addr/{rank}", host_port(advertised_address(store), self.listener.port))
        store.set(f"{prefix}/inbox/{rank}", f"{os.getpid()} {self.inbox.fd} {self.inbox.bytes}")
        self.outboxes: dict = {}
        for r in self.ranks:
            if r == rank:
                continue
            if r in self.remote:
                self.outboxes[r] = _C.MaltStreamOutbox(_text(store.get(f"{prefix}/addr/{r}")), rank,
                                                       count, slots, policy, newest_only, token,
                                                       timeout)
            else:
                pid, fd, nbytes = map(int, _text(store.get(f"{prefix}/inbox/{r}")).split())
                self.outboxes[r] = _C.MaltOutbox(pid, fd, nbytes, rank, count)
        # Every Inbox is mapped (every stream connected) before anyone may
        # leave and take the store (rank 0's) with it.
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
        return [r for r in self.ranks if r not in self.departed]

    def close(self, flush: float = 1.0) -> None:
        """Sends what the streams still queue (at most `flush` s), then
        leaves: same-host peers see the Inbox closed, remote ones a goodbye."""
        for out in self.outboxes.values():
            if isinstance(out, _C.MaltStreamOutbox):
                out.close(flush)
        if self.listener is not None:
            self.listener.close()
        self.inbox.close()


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
