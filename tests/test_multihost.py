"""2 hosts x 2 ranks in network namespaces: collectives over real
inter-host TCP, flat ring and hierarchical, equal to gloo's results."""

import os

import pytest

import netns

why_not = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(bool(why_not), reason=why_not)]


def matrix(rank, size):
    import collective_cases as cases
    from worlds import init_torch

    dist = init_torch(rank, size, timeout_s=60)
    ck = cases.Checker(dist.new_group(backend="gloo"))
    cases.check_allreduce(ck, rank, lengths=[0, 1, 7, 1001, 1 << 20],
                          dtypes=[cases.torch.float32, cases.torch.int64, cases.torch.bfloat16,
                                  cases.torch.uint8, cases.torch.bool])
    cases.check_gathers(ck, rank, size)
    cases.check_p2p_and_async(ck, rank, size)
    import ringflow

    owner = dist.distributed_c10d._get_default_group()._comm_owner
    chosen = ringflow._C.allreduce_algorithm(owner.comm, 1 << 20)
    dist.destroy_process_group()
    return [ck.count, ck.failures, chosen]


@pytest.mark.parametrize("algo", ["ring", "hierarchical", "auto"])
def test_two_hosts_two_ranks(algo):
    # auto: no RINGFLOW_GROUPS; the layout comes from the hosts themselves.
    env = {"RINGFLOW_ALGO": algo} if algo == "auto" else {"RINGFLOW_ALGO": algo, "RINGFLOW_GROUPS": "h0,h0,h1,h1"}
    with netns.Hosts(2) as hosts:
        results = hosts.run([0, 0, 1, 1], "test_multihost:matrix", env=env, timeout=300,
                            path=[os.path.dirname(os.path.abspath(__file__))])
    for rank, (count, failures, chosen) in enumerate(results):
        assert count > 0
        assert not failures, f"rank {rank}: " + "\n".join(failures[:20])
        assert chosen == ("ring" if algo == "ring" else "hierarchical"), (rank, chosen)


def test_three_ranks_and_one_rank_auto_uses_the_uneven_hierarchy():
    # Hosts of unequal size: auto still picks the hierarchy (one shard
    # crosses, held by each host's first rank), and results equal gloo's.
    with netns.Hosts(2) as hosts:
        results = hosts.run([0, 0, 0, 1], "test_multihost:matrix", env={"RINGFLOW_ALGO": "auto"},
                            timeout=300, path=[os.path.dirname(os.path.abspath(__file__))])
    for rank, (count, failures, chosen) in enumerate(results):
        assert count > 0
        assert not failures, f"rank {rank}: " + "\n".join(failures[:20])
        assert chosen == "hierarchical", (rank, chosen)
