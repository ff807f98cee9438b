"""The shared-memory transport and the shared-memory allreduce.

The collective matrix with each allreduce algorithm forced (RINGFLOW_ALGO=
ring|shm|auto), 1-4 ranks on one host: allreduce over every dtype and op at
lengths 0, 1, odd and 1001, and at 4 Mi (collective_cases.ops_at); the other collectives in a reduced matrix (they
run the ring/chain algorithms over shared-memory links whatever the setting).
Then placement (which transport and algorithm a world gets), determinism,
failures with the shm allreduce forced, a sender blocked on a dead peer's
queue, and /dev/shm left clean after normal and killed worlds."""

import os
import signal
import time

import pytest

import collective_cases as cases
import test_failures as failures
from worlds import init_torch, live_communicator, run_world

ALGOS = ["ring", "shm", "auto"]
LONG = 4 * 1024 * 1024


def _assert_clean(results):
    counts = [c for c, _ in results]
    assert min(counts) > 0
    bad = [f"rank {r}: {f}" for r, (_, fs) in enumerate(results) for f in fs]
    assert not bad, "\n".join(bad[:40])


def full_allreduce(rank, size):
    dist = init_torch(rank, size)
    ck = cases.Checker(dist.new_group(backend="gloo"))
    cases.check_allreduce(ck, rank, lengths=[0, 1, 7, 1001, LONG + 3])
    algo = __import__("ringflow")._C.allreduce_algorithm(live_communicator().comm)
    dist.destroy_process_group()
    return ck.count, ck.failures + ([] if algo == os.environ["EXPECT"] else [f"ran {algo}"])


def reduced_matrix(rank, size):
    dist = init_torch(rank, size)
    ck = cases.Checker(dist.new_group(backend="gloo"))
    cases.check_allreduce(ck, rank, lengths=[0, 1, 7, 300_001],
                          dtypes=[cases.torch.float32, cases.torch.bfloat16, cases.torch.int64,
                                  cases.torch.bool])
    cases.check_gathers(ck, rank, size)
    cases.check_alltoall(ck, rank, size)
    cases.check_p2p_and_async(ck, rank, size)
    cases.check_subgroups(ck, rank, size)
    dist.destroy_process_group()
    return ck.count, ck.failures


def _expected(algo, size):
    return "ring" if algo == "ring" or size == 1 else "shm"


# auto at 4 ranks is tests/test_collectives.py's full matrix already.
@pytest.mark.parametrize("algo,size", [(a, s) for s in (2, 4) for a in ALGOS if (a, s) != ("auto", 4)])
def test_allreduce_every_dtype_op_length(algo, size):
    env = {"RINGFLOW_ALGO": algo, "EXPECT": _expected(algo, size)}
    _assert_clean(run_world(size, full_allreduce, timeout=300, env=env))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("size", [1, 3])
def test_collectives_reduced_matrix(algo, size):
    _assert_clean(run_world(size, reduced_matrix, timeout=300, env={"RINGFLOW_ALGO": algo}))


def test_copy_in_allreduce_without_cross_memory():
    """RINGFLOW_SHM_CMA=0: large messages go through the slots in steps."""
    env = {"RINGFLOW_ALGO": "shm", "RINGFLOW_SHM_CMA": "0", "EXPECT": "shm"}
    _assert_clean(run_world(3, full_allreduce, timeout=300, env=env))


def placement(rank, size, hosts):
    import torch

    if hosts:
        os.environ["RINGFLOW_HOST_ID"] = hosts[rank]
    dist = init_torch(rank, size)
    from ringflow import _C

    c = live_communicator()
    x = torch.arange(1001, dtype=torch.int64) * (rank + 1)
    dist.all_reduce(x)
    y = torch.full((300_001,), float(rank))
    dist.broadcast(y, size - 1)
    ok = torch.equal(x, torch.arange(1001, dtype=torch.int64) * sum(range(1, size + 1)))
    return (c.transport.name, c.local_ranks, _C.allreduce_algorithm(c.comm), ok,
            bool((y == size - 1).all()))


def test_same_host_ranks_found_by_host_identity():
    same = run_world(4, placement, None, timeout=60)
    assert all(r == ("tcp+shm", [0, 1, 2, 3], "shm", True, True) for r in same), same
    # Two pretend hosts: shm inside each pair, TCP across, and by default one
    # lower-order group per host, so large allreduces run hierarchically.
    split = run_world(4, placement, ["a", "a", "b", "b"], timeout=60)
    assert [r[1] for r in split] == [[0, 1], [0, 1], [2, 3], [2, 3]], split
    assert all(r[0] == "tcp+shm" and r[2] == "hierarchical" and r[3] and r[4] for r in split), split
    alone = run_world(2, placement, ["a", "b"], timeout=60)
    assert all(r[0] == "tcp" and r[2] == "ring" for r in alone), alone


@pytest.mark.parametrize("off", ["0", "off", "False"])
def test_shm_can_be_turned_off(off):
    results = run_world(2, placement, None, timeout=60, env={"RINGFLOW_SHM": off})
    assert all(r == ("tcp", [0, 1], "ring", True, True) for r in results), results


def bit_identical(rank, size):
    import hashlib

    import torch

    dist = init_torch(rank, size)
    out = []
    for n in (1001, 200_000, 3_000_001):
        x = torch.randn(n, generator=torch.Generator().manual_seed(rank * 7 + n))
        dist.all_reduce(x)
        out.append(hashlib.sha1(x.numpy().tobytes()).hexdigest())
    return out


def test_every_rank_gets_bit_identical_floats():
    results = run_world(4, bit_identical, timeout=120, env={"RINGFLOW_ALGO": "shm"})
    assert all(r == results[0] for r in results), results


@pytest.mark.parametrize("what", ["size", "dtype", "op"])
def test_mismatch_with_shm_allreduce(what):
    results = run_world(4, failures.mismatched_calls, what, timeout=120,
                        env={"RINGFLOW_ALGO": "shm"})
    for rank, (kind, msg, took) in enumerate(results):
        assert kind == "MismatchError", (rank, kind, msg)
        assert "allreduce #1" in msg and "called" in msg, (rank, msg)
        assert took < failures.TIMEOUT_S, (rank, took)


def mismatched_kind(rank, size):
    import torch

    dist = init_torch(rank, size, timeout_s=failures.TIMEOUT_S)
    dist.all_reduce(torch.ones(10))
    x = torch.ones(1 << 20)
    if rank == 1:
        return failures._error_of(lambda: dist.broadcast(x, 0))
    return failures._error_of(lambda: dist.all_reduce(x))


def test_allreduce_against_broadcast_is_a_mismatch():
    for kind, msg, took in run_world(3, mismatched_kind, timeout=120, env={"RINGFLOW_ALGO": "shm"}):
        assert kind == "MismatchError", (kind, msg)
        assert took < failures.TIMEOUT_S


def test_killed_rank_named_with_shm_allreduce():
    failures.assert_rank_2_named(run_world(4, failures.killed_mid_allreduce, timeout=120,
                                           may_die=(2,), env={"RINGFLOW_ALGO": "shm"}))


def sender_to_dead_peer(rank, size):
    import torch

    dist = init_torch(rank, size, timeout_s=failures.TIMEOUT_S)
    dist.barrier()
    if rank == 1:
        # Not at once: the barrier's last message to rank 0 may still be queued.
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.6)
    # 16 MiB cannot fit the 1 MiB queue: the rest waits for a reader that is gone.
    return failures._error_of(lambda: dist.send(torch.ones(4 << 20), 1))


def test_send_into_dead_peers_queue_fails():
    kind, msg, took = run_world(2, sender_to_dead_peer, timeout=60, may_die=(1,))[0]
    assert kind == "PeerError" and "rank 1" in msg, (kind, msg)
    assert took < failures.TIMEOUT_S


def _ours():
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("ringflow-"))


def killed_after_setup(rank, size):
    import torch

    dist = init_torch(rank, size, timeout_s=5)
    dist.all_reduce(torch.ones(1000))
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return failures._error_of(lambda: dist.all_reduce(torch.ones(1000)))


def test_nothing_left_in_dev_shm():
    before = _ours()
    run_world(3, placement, None, timeout=60)
    assert _ours() == before
    results = run_world(3, killed_after_setup, timeout=60, may_die=(1,))
    assert results[0][0] == "PeerError", results
    assert _ours() == before
