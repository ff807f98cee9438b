"""Every collective against gloo, world sizes 1-4 (8 oversubscribed for
all_reduce): lengths 0, 1, odd and 4 Mi elements, every dtype and op."""

import pytest

import collective_cases as cases
from worlds import init_torch, run_world


def full_matrix(rank, size):
    dist = init_torch(rank, size)
    ck = cases.Checker(dist.new_group(backend="gloo"))
    cases.check_allreduce(ck, rank)
    cases.check_rooted(ck, rank, size)
    cases.check_gathers(ck, rank, size)
    cases.check_reduce_scatter(ck, rank, size)
    cases.check_alltoall(ck, rank, size)
    cases.check_p2p_and_async(ck, rank, size)
    cases.check_subgroups(ck, rank, size)
    cases.check_large(ck, rank, size)
    dist.destroy_process_group()
    return ck.count, ck.failures


def allreduce_only(rank, size):
    dist = init_torch(rank, size)
    ck = cases.Checker(dist.new_group(backend="gloo"))
    cases.check_allreduce(ck, rank, lengths=[0, 1, 7, 1001, 1 << 20],
                          dtypes=[cases.torch.float32, cases.torch.int64, cases.torch.bfloat16, cases.torch.bool])
    dist.destroy_process_group()
    return ck.count, ck.failures


def _assert_clean(results):
    counts = [c for c, _ in results]
    assert min(counts) > 0
    failures = [f"rank {r}: {f}" for r, (_, fs) in enumerate(results) for f in fs]
    assert not failures, "\n".join(failures[:40])


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_every_collective_matches_gloo(size):
    _assert_clean(run_world(size, full_matrix, timeout=400))


def test_allreduce_eight_ranks_oversubscribed():
    _assert_clean(run_world(8, allreduce_only, timeout=300))
