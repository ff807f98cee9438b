"""A dead, silent or mismatched peer gives every rank a clear error within
the timeout; no rank hangs and no process crashes."""

import os
import signal
import time

import pytest

from worlds import init_torch, run_world

TIMEOUT_S = 20


def _error_of(fn):
    """Runs fn; returns (exception class name, message, seconds taken)."""
    t0 = time.monotonic()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return type(e).__name__, str(e), time.monotonic() - t0
    return None, "", time.monotonic() - t0


def killed_mid_allreduce(rank, size, shared=False):
    """Rank 2 dies during an allreduce of 32 MiB (in a ringflow.shared_empty
    tensor with `shared`, which the peers map)."""
    import torch

    import ringflow

    dist = init_torch(rank, size, timeout_s=TIMEOUT_S)
    x = ringflow.shared_empty(8 << 20) if shared else torch.empty(8 << 20)
    x.fill_(1)
    dist.all_reduce(x)  # one good call first: the mesh is up
    if rank == 2:
        dist.all_reduce(x, async_op=True)
        time.sleep(0.05)  # let it get going, then die without a word
        os.kill(os.getpid(), signal.SIGKILL)
    kind, msg, took = _error_of(lambda: [dist.all_reduce(x) for _ in range(3)])
    # The process is intact: later calls fail cleanly too, they do not hang.
    later, later_msg, _ = _error_of(lambda: dist.all_reduce(torch.ones(4)))
    return kind, msg, took, later, later_msg


def assert_rank_2_named(results):
    """Every survivor of killed_mid_allreduce got a PeerError naming rank 2
    within the timeout, and so did its next call."""
    for rank, res in enumerate(results):
        if rank == 2:
            continue
        kind, msg, took, later, later_msg = res
        assert kind == "PeerError" and "rank 2" in msg, (rank, kind, msg)
        assert took < TIMEOUT_S, (rank, took)
        assert later is not None and "rank 2" in later_msg, (rank, later, later_msg)


def test_killed_rank_is_named_on_every_other_rank():
    assert_rank_2_named(run_world(4, killed_mid_allreduce, timeout=120, may_die=(2,)))


def mismatched_calls(rank, size, what):
    import torch

    dist = init_torch(rank, size, timeout_s=TIMEOUT_S)
    dist.all_reduce(torch.ones(10))
    if what == "size":
        x = torch.ones(1000 + (7 if rank == 2 else 0))
    elif what == "dtype":
        x = torch.ones(1000, dtype=torch.float64 if rank == 1 else torch.float32)
    else:  # op
        x = torch.ones(1000)
    op = dist.ReduceOp.MAX if (what == "op" and rank == 3) else dist.ReduceOp.SUM
    return _error_of(lambda: dist.all_reduce(x, op=op))


@pytest.mark.parametrize("what", ["size", "dtype", "op"])
def test_mismatched_calls_fail_on_every_rank(what):
    results = run_world(4, mismatched_calls, what, timeout=120)
    for rank, (kind, msg, took) in enumerate(results):
        assert kind == "MismatchError", (rank, kind, msg)
        assert "allreduce #1" in msg and "called" in msg, (rank, msg)
        assert took < TIMEOUT_S, (rank, took)
    # The rank whose call differs is named with both calls.
    odd = {"size": "count=1007", "dtype": "float64", "op": "max"}[what]
    assert any(odd in msg for _, msg, _ in results)


def silent_peer(rank, size):
    import torch

    dist = init_torch(rank, size, timeout_s=3)
    dist.barrier()
    if rank == 1:
        time.sleep(6)  # never joins the call in time
        return None, "", 0
    return _error_of(lambda: dist.all_reduce(torch.ones(100)))


def test_silent_peer_times_out_naming_it():
    results = run_world(2, silent_peer, timeout=60)
    kind, msg, took = results[0]
    assert kind == "TimeoutError", (kind, msg)
    assert "timed out after 3.0s" in msg and "rank 1" in msg, msg
    assert 2.5 < took < 6, took


def bad_arguments(rank, size):
    import torch

    dist = init_torch(rank, size, timeout_s=TIMEOUT_S)
    errors = [
        _error_of(lambda: dist.all_reduce(torch.ones(3, dtype=torch.int32), op=dist.ReduceOp.AVG)),
        _error_of(lambda: dist.all_reduce(torch.ones(3), op=dist.ReduceOp.BXOR)),
        _error_of(lambda: dist.all_reduce(torch.ones(3, dtype=torch.uint16))),
        _error_of(lambda: dist.all_gather([torch.empty(3)], torch.ones(3))),
        _error_of(lambda: dist.all_gather_into_tensor(torch.empty(5), torch.ones(3))),
        _error_of(lambda: dist.all_to_all_single(torch.empty(4), torch.ones(4), [1, 3], [3, 3])),
    ]
    # Nothing reached the peers: the group still works.
    x = torch.full((5,), float(rank))
    dist.all_reduce(x)
    return errors, x.tolist()


def test_bad_arguments_raise_before_touching_peers():
    results = run_world(2, bad_arguments, timeout=60)
    for errors, after in results:
        kinds = [k for k, _, _ in errors]
        assert all(k in ("ValueError", "InvalidArgument", "TypeError") for k in kinds), kinds
        msgs = [m for _, m, _ in errors]
        assert "avg" in msgs[0] and "int32" in msgs[0], msgs[0]
        assert "bxor" in msgs[1] and "float32" in msgs[1], msgs[1]
        assert "uint16" in msgs[2], msgs[2]
        assert after == [1.0] * 5
