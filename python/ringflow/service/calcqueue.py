"""The calculation queue: a step's calculations, handed to workers under leases.

Rows live in the master's database, so a restarted master finds what was
queued.  A lease names its worker and expires after the job's `lease_s`:
a calculation whose worker died or stalled goes back to the queue, and a
gradient that arrives under a lease no longer current is refused, so no
calculation is counted twice.
"""

from __future__ import annotations

import json
import time
import uuid

from .state import State


class StaleLease(ValueError):
    pass


class CalcQueue:
    def __init__(self, state: State):
        self.state = state

    def put_step(self, job_id: int, step: int, calcs) -> None:
        """Queues a step's calculations [(epoch, sample ids, weight)] unless already queued."""
        with self.state.tx() as db:
            for part, (epoch, samples, weight) in enumerate(calcs):
                db.execute("INSERT OR IGNORE INTO calcs (job_id, step, part, epoch, samples, weight, "
                           "state) VALUES (?, ?, ?, ?, ?, ?, 'queued')",
                           (job_id, step, part, epoch, json.dumps([int(i) for i in samples]), weight))

    def lease(self, job_id: int, worker: int, lease_s: float) -> dict | None:
        with self.state.tx() as db:
            row = db.execute("SELECT * FROM calcs WHERE job_id = ? AND state = 'queued' "
                             "ORDER BY step, part LIMIT 1", (job_id,)).fetchone()
            if row is None:
                return None
            token = uuid.uuid4().hex
            db.execute("UPDATE calcs SET state = 'leased', worker = ?, lease = ?, lease_expires = ? "
                       "WHERE job_id = ? AND step = ? AND part = ?",
                       (worker, token, time.time() + lease_s, job_id, row["step"], row["part"]))
        out = dict(row)
        out.update(worker=worker, lease=token, samples=json.loads(row["samples"]))
        return out

    def complete(self, job_id: int, step: int, part: int, worker: int, lease: str) -> dict:
        with self.state.tx() as db:
            row = db.execute("SELECT * FROM calcs WHERE job_id = ? AND step = ? AND part = ?",
                             (job_id, step, part)).fetchone()
            if row is None or row["state"] != "leased" or row["lease"] != lease \
                    or row["worker"] != worker:
                raise StaleLease(f"job {job_id} step {step} part {part}: the lease of worker "
                                 f"{worker} is no longer current (expired and handed on, or done)")
            db.execute("UPDATE calcs SET state = 'done' WHERE job_id = ? AND step = ? AND part = ?",
                       (job_id, step, part))
        out = dict(row)
        out["samples"] = json.loads(row["samples"])
        return out

    def expire(self, now: float | None = None) -> int:
        """Returns every calculation whose lease has run out to the queue; how many."""
        with self.state.tx() as db:
            return db.execute("UPDATE calcs SET state = 'queued', worker = NULL, lease = NULL "
                              "WHERE state = 'leased' AND lease_expires < ?",
                              (now or time.time(),)).rowcount

    def release_worker(self, worker: int) -> int:
        with self.state.tx() as db:
            return db.execute("UPDATE calcs SET state = 'queued', worker = NULL, lease = NULL "
                              "WHERE state = 'leased' AND worker = ?", (worker,)).rowcount

    def forget_after(self, job_id: int, step: int) -> None:
        """Drops the calculations of steps after `step` (not applied before a restart)."""
        with self.state.tx() as db:
            db.execute("DELETE FROM calcs WHERE job_id = ? AND step > ?", (job_id, step))

    def drop_job(self, job_id: int) -> None:
        with self.state.tx() as db:
            db.execute("DELETE FROM calcs WHERE job_id = ?", (job_id,))
