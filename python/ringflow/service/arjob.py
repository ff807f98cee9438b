"""An `allreduce` job on the master: the rendezvous store its workers meet at, and their reports.

The workers form a torch.distributed group over the ringflow backend
through a TCPStore this master hosts (one per job, on a port of its own),
and train with ringflow.versions.training, the writer rank committing the
versions.  The job is done when every rank has reported done.  Allreduce
jobs do not survive a master restart (their store lives in the master):
a restarted master fails them, naming where their commits are.
"""

from __future__ import annotations

from datetime import timedelta


class AllreduceJob:
    def __init__(self, row: dict, bind: str, store_path: str, timeout_s: float = 300.0):
        from torch.distributed import TCPStore

        self.id, self.spec = row["id"], row["spec"]
        self.world = self.spec["workers"]
        self.store_path = self.spec["store"] or store_path
        self.tcp_store = TCPStore(bind, 0, self.world + 1, True, timedelta(seconds=timeout_s),
                                  wait_for_workers=False)
        self.done: dict[int, dict] = {}

    def assignment(self, rank: int) -> dict:
        return {"kind": "allreduce", "job": self.id, "spec": self.spec, "rank": rank,
                "world": self.world, "store_port": self.tcp_store.port,
                "store_path": self.store_path}

    def report_done(self, rank: int, result: dict) -> bool:
        """True once every rank is done."""
        self.done[rank] = result
        return len(self.done) == self.world

    def close(self) -> None:
        self.tcp_store = None
