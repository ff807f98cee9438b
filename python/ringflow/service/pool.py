"""The request pool: jobs wait in order (priority, then arrival) until enough workers are free.

Admission is strictly in that order: a big job at the head is not
overtaken by smaller ones behind it, so no job starves.
"""

from __future__ import annotations

import time

from .state import State


def free_workers(state: State) -> list[int]:
    return [r["id"] for r in state.query("SELECT id FROM workers WHERE alive = 1 AND job_id IS NULL "
                                         "ORDER BY id")]


def admit(state: State) -> tuple[dict, list[int]] | None:
    """Takes the head of the queue when enough workers are free: (job, its workers by rank)."""
    queued = state.jobs("queued")
    if not queued:
        return None
    job = queued[0]
    free = free_workers(state)
    if len(free) < job["spec"]["workers"]:
        return None
    chosen = free[:job["spec"]["workers"]]
    with state.tx() as db:
        for rank, w in enumerate(chosen):
            db.execute("UPDATE workers SET job_id = ?, rank = ? WHERE id = ?", (job["id"], rank, w))
        db.execute("UPDATE jobs SET state = 'running', started = ? WHERE id = ?",
                   (time.time(), job["id"]))
    return job, chosen
