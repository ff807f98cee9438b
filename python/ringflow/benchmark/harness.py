"""A world of real processes with a hard deadline: the one harness that
`ringflow bench`, the scripts in bench/ and the test suite (tests/worlds.py)
run ranks with.

Each rank runs fn(rank, world, *args) with MASTER_ADDR/PORT, RANK,
WORLD_SIZE and LOCAL_RANK set for a world on this host.  A rank that raises,
dies or hangs makes the parent kill every rank at once and raise WorldError
naming it, with each rank's traceback and last reported step.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback

from ..addresses import free_port

# The child's channel to the parent, set in each rank before fn runs.
_messages = None
_rank = None


class WorldError(RuntimeError):
    """A world failed: a rank raised, died, or hung.  The message names it;
    `.results` holds what the ranks that finished returned."""


def report_progress(step: int, total: int, label: str) -> None:
    """Called inside a rank: its current step, shown when the world fails
    (and on rank 0's progress bar).  Does nothing outside a world."""
    if _messages is not None:
        _messages.put(("progress", _rank, (step, total, label)))


def _child(fn, rank, world, port, env, args, messages):
    global _messages, _rank
    _messages, _rank = messages, rank
    os.environ.update(env)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    try:
        messages.put(("result", rank, fn(rank, world, *args)))
    except BaseException:  # noqa: BLE001 - shown by the parent
        messages.put(("error", rank, traceback.format_exc()))
    finally:
        # A forked child ends in os._exit, skipping atexit: close like a
        # normal interpreter exit would, so peers see a goodbye.
        from ..rendezvous import close_all

        close_all()


class _World:
    def __init__(self, world, may_die, progress):
        self.world, self.may_die, self.progress = world, set(may_die), progress
        self.results: dict[int, object] = {}
        self.errors: dict[int, str] = {}
        self.last_step: dict[int, str] = {}
        self.killed: set[int] = set()

    def take(self, kind, rank, payload):
        if kind == "progress":
            self.last_step[rank] = f"[{payload[0]}/{payload[1]}] {payload[2]}"
            if rank == 0 and self.progress is not None:
                self.progress.update(*payload)
        elif kind == "error":
            self.errors[rank] = payload
        else:
            self.results[rank] = payload

    def drain(self, messages, wait: float):
        end = time.monotonic() + wait
        while True:
            try:
                self.take(*messages.get(timeout=max(0.0, end - time.monotonic())))
            except queue.Empty:
                return

    def pending(self, procs) -> bool:
        return any(r not in self.results and not (r in self.may_die and not p.is_alive())
                   for r, p in enumerate(procs))

    def dead(self, procs) -> list[int]:
        return [r for r, p in enumerate(procs)
                if not p.is_alive() and r not in self.results and r not in self.may_die]


def run_world(fn, world: int, args: tuple = (), *, timeout: float = 300, env: dict | None = None,
              may_die: tuple = (), progress=None, exit_grace: float = 30, context=None) -> list:
    """Runs fn(rank, world, *args) on `world` processes; returns each rank's
    result (None for a rank in `may_die` that exited without one, e.g. one a
    test kills).  The whole world has `timeout` seconds, each rank `exit_grace`
    more to exit cleanly after its result.  `context` is a multiprocessing
    context (default: spawn); `env` is added to every rank's environment;
    `progress` (report.Progress) shows rank 0's report_progress calls."""
    ctx = context or mp.get_context("spawn")
    messages = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(fn, r, world, port, env or {}, args, messages),
                         name=f"rank{r}", daemon=True) for r in range(world)]
    w = _World(world, may_die, progress)
    deadline = time.monotonic() + timeout
    failure = None
    try:
        for p in procs:
            p.start()
        while w.pending(procs):
            try:
                w.take(*messages.get(timeout=0.2))
            except queue.Empty:
                pass
            if w.errors:
                w.drain(messages, 1.0)  # let the other ranks' errors arrive too
                failure = "raised an exception"
                break
            if w.dead(procs):
                w.drain(messages, 1.0)  # what a rank put just before exiting
                if w.dead(procs) or w.errors:
                    failure = "died"
                    break
            if time.monotonic() > deadline:
                failure = f"timed out after {timeout:g} s"
                break
        if failure is None:
            # Every rank reported; each must also shut down cleanly.
            for p in procs:
                p.join(max(0.1, min(exit_grace, deadline + exit_grace - time.monotonic())))
            if any(p.is_alive() or (p.exitcode != 0 and r not in w.may_die)
                   for r, p in enumerate(procs)):
                failure = "did not shut down cleanly"
    finally:
        if progress is not None:
            progress.done()
        for r, p in enumerate(procs):
            if p.is_alive():
                p.kill()
                w.killed.add(r)
        for p in procs:
            p.join(5)

    if failure is None:
        return [w.results.get(r) for r in range(world)]
    err = WorldError(_describe(failure, w, procs))
    err.results = w.results
    raise err


def _describe(failure, w: _World, procs) -> str:
    lines = [f"{_culprits(failure, w, procs)}; all ranks killed."]
    for r, p in enumerate(procs):
        where = w.last_step.get(r, "none reported")
        if r in w.errors:
            lines.append(f"--- rank {r} raised (last step: {where}):\n{w.errors[r].rstrip()}")
        elif r in w.results:
            state = ("reported results, then hung at shutdown (killed)" if r in w.killed else
                     "finished" if p.exitcode == 0 else f"reported results, then exit code {p.exitcode}")
            lines.append(f"--- rank {r}: {state}")
        elif r in w.killed:
            lines.append(f"--- rank {r} was still running, killed (last step: {where})")
        elif p.exitcode is not None and p.exitcode < 0:
            lines.append(f"--- rank {r} died by signal {-p.exitcode} (last step: {where})")
        else:
            lines.append(f"--- rank {r} exited with code {p.exitcode} (last step: {where})")
    return "\n".join(lines)


def _culprits(failure, w: _World, procs) -> str:
    """The first line of the failure: which ranks failed, and how."""
    def ranks(rs):
        return ("rank " if len(rs) == 1 else "ranks ") + ",".join(map(str, rs))

    world = len(procs)
    if w.errors:
        return f"{ranks(sorted(w.errors))} raised an exception (world of {world})"
    if failure == "died":
        dead = [r for r in w.dead(procs) if r not in w.killed]
        codes = ",".join(str(procs[r].exitcode) for r in dead)
        return f"{ranks(dead)} died, exit code {codes} (world of {world})"
    if failure == "did not shut down cleanly":
        bad = [r for r, p in enumerate(procs)
               if r in w.killed or (p.exitcode != 0 and r not in w.may_die)]
        return f"{ranks(bad)} did not shut down cleanly after reporting results (world of {world})"
    hung = [r for r in range(world) if r not in w.results and r not in w.may_die]
    return f"{failure}; {ranks(hung)} had not finished (world of {world})"
