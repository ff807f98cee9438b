"""The training service: `ringflow master` and `ringflow worker` (SPEC mechanism 7).

A master holds all state in one SQLite database and a dataset repository
under its --state DIR; clients talk to it through a small authenticated
request/response protocol (protocol.py).  Jobs go through a pool
(pool.py), their data through a deterministic distribution (distribution.py)
and, in `ps` mode, through a calculation queue with leases (queue.py) and an
ordered gradient collector (collector.py).  Workers (worker.py) run a job's
entry point, `module:function` -> ringflow.jobs.Job (see ringflow.jobs).
"""
