"""The master's durable state: one SQLite database (WAL mode) in the state directory.

Every change the master makes goes through here in a transaction, so a
master killed at any point and restarted on the same directory finds its
jobs, their cursors, the calculation queue and the sample log as they were
after the last completed transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT NOT NULL, version INTEGER NOT NULL, manifest TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, spec TEXT NOT NULL,
    priority INTEGER NOT NULL, state TEXT NOT NULL, submitted REAL NOT NULL,
    started REAL, first_step REAL, finished REAL, error TEXT,
    metrics TEXT NOT NULL DEFAULT '{}', params_sha256 TEXT, step INTEGER NOT NULL DEFAULT 0,
    head TEXT);
CREATE TABLE IF NOT EXISTS workers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL, pid INTEGER NOT NULL,
    last_seen REAL NOT NULL, alive INTEGER NOT NULL DEFAULT 1, job_id INTEGER, rank INTEGER);
CREATE TABLE IF NOT EXISTS calcs (
    job_id INTEGER NOT NULL, step INTEGER NOT NULL, part INTEGER NOT NULL,
    epoch INTEGER NOT NULL, samples TEXT NOT NULL, weight REAL NOT NULL,
    state TEXT NOT NULL, worker INTEGER, lease TEXT, lease_expires REAL,
    PRIMARY KEY (job_id, step, part));
CREATE TABLE IF NOT EXISTS sample_log (
    job_id INTEGER NOT NULL, epoch INTEGER NOT NULL, sample INTEGER NOT NULL,
    step INTEGER NOT NULL, part INTEGER NOT NULL, worker INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS sample_log_job ON sample_log (job_id, epoch);
"""

JOB_STATES = ("queued", "running", "done", "failed")


class State:
    """The database; one connection shared by the master's threads under a lock."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._db = sqlite3.connect(os.path.join(directory, "master.sqlite3"), timeout=30,
                                   check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self.lock = threading.RLock()

    def query(self, sql: str, *args) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def one(self, sql: str, *args) -> dict | None:
        rows = self.query(sql, *args)
        return rows[0] if rows else None

    def tx(self):
        """`with state.tx() as db:` one transaction, committed on success, rolled back on error."""
        return _Tx(self)

    # --- jobs ---------------------------------------------------------------------------------
    def add_job(self, spec: dict) -> int:
        with self.tx() as db:
            cur = db.execute("INSERT INTO jobs (name, spec, priority, state, submitted) "
                             "VALUES (?, ?, ?, 'queued', ?)",
                             (spec["name"], json.dumps(spec), spec["priority"], time.time()))
            return cur.lastrowid

    def job(self, job_id: int) -> dict | None:
        row = self.one("SELECT * FROM jobs WHERE id = ?", job_id)
        if row:
            row["spec"] = json.loads(row["spec"])
            row["metrics"] = json.loads(row["metrics"])
        return row

    def jobs(self, *states: str) -> list[dict]:
        states = states or JOB_STATES
        marks = ",".join("?" * len(states))
        rows = self.query(f"SELECT id FROM jobs WHERE state IN ({marks}) "
                          "ORDER BY priority DESC, id ASC", *states)
        return [self.job(r["id"]) for r in rows]

    def update_job(self, job_id: int, **fields) -> None:
        if "metrics" in fields:
            fields["metrics"] = json.dumps(fields["metrics"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))


class _Tx:
    def __init__(self, state: State):
        self.state = state

    def __enter__(self) -> sqlite3.Connection:
        self.state.lock.acquire()
        self.state._db.execute("BEGIN IMMEDIATE")
        return self.state._db

    def __exit__(self, exc_type, *_):
        try:
            self.state._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.state.lock.release()
