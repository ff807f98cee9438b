"""Run a function on n real processes that talk over real sockets.

Children are forked from a forkserver that has torch and ringflow imported
once, so a world starts in well under a second.  Every world has a hard
timeout; every rank's exception is shown; a hang kills all ranks.
"""

from __future__ import annotations

import multiprocessing as mp

from ringflow.benchmark import harness
from ringflow.addresses import free_port  # noqa: F401 - for tests that need a port

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


def run_world(size: int, fn, *args, timeout: float = 120, env: dict | None = None,
              may_die: tuple = ()) -> list:
    """Runs fn(rank, size, *args) on `size` processes forked from a server
    that has torch and ringflow imported once (a world starts in well under
    a second); returns each rank's result.  Ranks in `may_die` may exit
    without a result (a test that kills them); their result is None.  Raises
    WorldError naming every failed rank."""
    return harness.run_world(fn, size, args, timeout=timeout, env=env, may_die=may_die,
                             context=_context())


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
