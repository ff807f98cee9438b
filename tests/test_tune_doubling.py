"""Recursive doubling allreduce (algo/recursive_doubling.cc) in real
processes: every dtype and op against gloo on a power-of-two world and on
worlds that fold (3 and 5 ranks), chosen by RINGFLOW_ALGO and by a tuned
schedule's size rule in a permuted ring order; random floats come out
bit-identical on every rank and close to numpy's sum."""

import numpy as np
import pytest

import collective_cases as cases
from worlds import init_torch, live_communicator, run_world

LENGTHS = [0, 1, 7, 1001, 70_001]


def doubling_against_gloo(rank, size, schedule):
    import torch

    from ringflow import _C
    from ringflow.tune import Pattern, apply

    dist = init_torch(rank, size)
    ck = cases.Checker(dist.new_group(backend="gloo"))
    comm = live_communicator().comm
    if schedule:
        apply(comm, Pattern.from_json(schedule))
    chosen = [_C.allreduce_algorithm(comm, b) for b in (4, 1 << 16, 1 << 20)]
    cases.check_allreduce(ck, rank, lengths=LENGTHS)
    rng = np.random.default_rng(rank)
    x = torch.from_numpy((rng.standard_normal(30_001)
                          * 10.0 ** rng.integers(-3, 4, 30_001)).astype(np.float32))
    everyone = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(everyone, x, group=ck.gloo)
    ours = x.clone()
    dist.all_reduce(ours)
    results = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(results, ours, group=ck.gloo)
    return (ck.count, ck.failures, chosen, [e.numpy() for e in everyone],
            [r.numpy().tobytes() for r in results])


def check(results, size, want_chosen):
    for count, failures, chosen, everyone, bits in results:
        assert count > 100
        assert not failures, "\n".join(failures[:20])
        assert chosen == want_chosen
        assert len(set(bits)) == 1, "ranks ended with different bits"
        got = np.frombuffer(bits[0], np.float32)
        ref = np.sum(np.stack(everyone).astype(np.float64), axis=0)
        scale = np.sum(np.abs(np.stack(everyone).astype(np.float64)), axis=0)
        assert np.all(np.abs(got - ref) <= 1e-6 * scale + 1e-30)


@pytest.mark.parametrize("size", [4, 3])
def test_recursive_doubling_by_setting(size):
    results = run_world(size, doubling_against_gloo, None, timeout=300,
                        env={"RINGFLOW_ALGO": "recursive_doubling"})
    check(results, size, ["recursive_doubling"] * 3)


def test_recursive_doubling_by_schedule_in_ring_order():
    # 5 ranks: rank order[0] folds into order[1]; the rounds pair positions.
    schedule = {"order": [3, 0, 4, 2, 1], "groups": None, "piece_bytes": 65536,
                "algorithms": [[0, "recursive_doubling"], [262144, "ring"]]}
    results = run_world(5, doubling_against_gloo, schedule, timeout=300)
    check(results, 5, ["recursive_doubling", "recursive_doubling", "ring"])
