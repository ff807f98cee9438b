"""Hierarchical ring aggregation on one host, with the layout given by
RINGFLOW_GROUPS: results equal gloo's for every dtype, op and length (at 4 Mi
the ops of collective_cases.ops_at)."""

import pytest

import collective_cases as cases
from worlds import init_torch, run_world


def hierarchical_matrix(rank, size):
    import torch

    import ringflow

    dist = init_torch(rank, size)
    ck = cases.Checker(dist.new_group(backend="gloo"))
    cases.check_allreduce(ck, rank, lengths=[0, 1, 7, 1001, 4 * 1024 * 1024])
    used = ringflow.stats()["ops"]["allreduce"]["count"]
    # The watchdog sees the sub-rings' waits as hops of the parent call.
    recent = [r for r in ringflow.stats()["recent"] if r["op"].startswith("allreduce")]
    dist.destroy_process_group()
    return ck.count, ck.failures, used, len(recent) > 0 and all(r["aggregation_ms"] is not None for r in recent)


# Equal groups, interleaved labels, and unequal groups (the smallest group
# sets the shard count; a larger group's extra ranks hold no shard).
@pytest.mark.parametrize("groups", ["0,0,1,1", "a,b,a,b", "0,0,0,1", "x,y,y,y", "0,1,1"])
def test_hierarchical_allreduce_matches_gloo(groups):
    env = {"RINGFLOW_GROUPS": groups, "RINGFLOW_ALGO": "hierarchical"}
    world = len(groups.split(","))
    for count, failures, used, timed in run_world(world, hierarchical_matrix, env=env, timeout=300):
        assert count > 0 and used == count
        assert not failures, "\n".join(failures[:20])
        assert timed


def bad_layout(rank, size):
    import torch

    import ringflow

    dist = init_torch(rank, size)
    x = torch.full((100_000,), float(rank))
    dist.all_reduce(x)
    with pytest.raises(ValueError, match="2 group labels for a group of 3 ranks"):
        ringflow.backend.set_groups(None, ["0", "0"])
    return x[:3].tolist()


def test_bad_layout_falls_back_to_the_flat_ring():
    # RINGFLOW_GROUPS of the wrong length is logged and ignored; the API raises.
    for res in run_world(3, bad_layout, env={"RINGFLOW_GROUPS": "0,1"}, timeout=60):
        assert res == [3.0, 3.0, 3.0]


def killed_in_hierarchy(rank, size):
    import os
    import signal
    import time

    import torch

    dist = init_torch(rank, size, timeout_s=20)
    x = torch.ones(4 << 20)
    dist.all_reduce(x)
    if rank == 3:
        dist.all_reduce(x, async_op=True)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    t0 = time.monotonic()
    try:
        dist.all_reduce(x)
        dist.all_reduce(x)
    except RuntimeError as e:
        return str(e), time.monotonic() - t0
    return "", 0.0


def test_killed_rank_in_hierarchy_is_named():
    env = {"RINGFLOW_GROUPS": "0,0,1,1", "RINGFLOW_ALGO": "hierarchical"}
    results = run_world(4, killed_in_hierarchy, env=env, timeout=120, may_die=(3,))
    for rank in range(3):
        msg, took = results[rank]
        assert "rank 3" in msg, (rank, msg)
        assert took < 20, (rank, took)
