"""Run a function on n real processes that talk over real sockets.

Children are forked from a forkserver that has torch and ringflow imported
once, so a world starts in well under a second.  Every world has a hard
timeout; every rank's exception is shown; a hang kills all ranks.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import traceback

_ctx = None


def _context():
    global _ctx
    if _ctx is None:
        _ctx = mp.get_context("forkserver")
        # torch._dynamo: DDP's constructor imports it lazily, which costs every
        # rank 5-10 s on a busy 2-CPU host; imported here once instead.
        _ctx.set_forkserver_preload(["torch", "torch.distributed", "torch.nn.parallel",
                                     "torch._dynamo", "numpy", "ringflow"])
    return _ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorldError(AssertionError):
    pass


def _child(fn, rank, size, port, env, args, results):
    os.environ.update(env)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank))
    try:
        results.put((rank, True, fn(rank, size, *args)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        # A forked child ends in os._exit, skipping atexit; close like a
        # normal interpreter exit would, so peers see a goodbye.
        from ringflow.rendezvous import close_all

        close_all()


def run_world(size: int, fn, *args, timeout: float = 120, env: dict | None = None,
              may_die: tuple = ()) -> list:
    """Runs fn(rank, size, *args) on `size` processes; returns each rank's result.

    Ranks in `may_die` may exit without a result (a test that kills them);
    their result is None.  Raises WorldError naming every failed rank.
    """
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(fn, r, size, port, env or {}, args, results),
                         daemon=True) for r in range(size)]
    for p in procs:
        p.start()
    got: dict[int, tuple] = {}
    import time

    deadline = time.monotonic() + timeout
    failed = None  # the first rank that raised or died: the others are killed at once
    while len(got) < size and time.monotonic() < deadline and failed is None:
        try:
            rank, ok, value = results.get(timeout=0.2)
            got[rank] = (ok, value)
            if not ok:
                failed = rank
        except queue.Empty:
            if any(not p.is_alive() and r not in got for r, p in enumerate(procs)):
                # A rank exited: read what it put before exiting, then see
                # whether it left without a result (a crash).
                try:
                    while True:
                        rank, ok, value = results.get(timeout=0.5)
                        got[rank] = (ok, value)
                        if not ok and failed is None:
                            failed = rank
                except queue.Empty:
                    pass
                dead = [r for r, p in enumerate(procs)
                        if not p.is_alive() and r not in got and r not in may_die]
                if dead and failed is None:
                    failed = dead[0]
            if all(not p.is_alive() for p in procs):
                # Drain what the last ranks put before exiting.
                try:
                    while True:
                        rank, ok, value = results.get(timeout=0.5)
                        got[rank] = (ok, value)
                except queue.Empty:
                    break
    hung = [r for r, p in enumerate(procs) if p.is_alive() and r not in got]
    for p in procs:
        if failed is None:
            p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
    problems = []
    for r in range(size):
        if r in got and not got[r][0]:
            problems.append(f"--- rank {r} raised:\n{got[r][1]}")
        elif r not in got and r not in may_die:
            if r in hung:
                why = (f"killed when rank {failed} failed" if failed is not None
                       else "still running at the timeout (killed)")
            else:
                why = f"exited with code {procs[r].exitcode}"
            problems.append(f"--- rank {r} gave no result: {why}")
    if problems:
        raise WorldError(f"world of {size} failed:\n" + "\n".join(problems))
    return [got[r][1] if r in got else None for r in range(size)]


def init_torch(rank: int, size: int, backend: str = "ringflow", timeout_s: float = 60):
    """init_process_group over the MASTER_ADDR/PORT the world set."""
    from datetime import timedelta

    import torch.distributed as dist

    import ringflow  # noqa: F401 - registers the backend

    dist.init_process_group(backend, rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s))
    return dist


def live_communicator():
    """The ringflow Communicator behind the default group (after init_torch)."""
    from ringflow.rendezvous import _live_comms

    return next(iter(_live_comms))
