"""A tuned schedule set on the communicator (C++ Schedule via
ringflow.tune.apply): every collective still matches gloo under a permuted
ring order and a regrouping, and deterministic mode gives bit-identical
allreduce results however a vector is cut into buckets."""

import numpy as np
import pytest

import collective_cases as cases
from worlds import init_torch, live_communicator, run_world

PATTERNS = {
    # a flat ring in a permuted order, small pieces
    "permuted ring": {"order": [2, 0, 3, 1], "groups": None, "piece_bytes": 65536,
                      "algorithms": [[0, "ring"]]},
    # groups across the launcher's order; lower rings follow the ring order
    "regrouped": {"order": [3, 1, 0, 2], "groups": [0, 1, 0, 1], "piece_bytes": 262144,
                  "algorithms": [[0, "ring"], [65536, "hierarchical"]]},
    # unequal groups (one shard holder per group), hierarchical at every size
    "unequal groups": {"order": [1, 3, 2, 0], "groups": [5, 5, 5, 9], "piece_bytes": 1048576,
                       "algorithms": [[0, "hierarchical"]]},
}


def scheduled_collectives(rank, size, pattern):
    import torch

    from ringflow import _C
    from ringflow.tune import Pattern, apply

    dist = init_torch(rank, size)
    ck = cases.Checker(dist.new_group(backend="gloo"))
    comm = live_communicator().comm
    apply(comm, Pattern.from_json(pattern))
    chosen = [_C.allreduce_algorithm(comm, b) for b in (4096, 1 << 20)]
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.int32, torch.uint8]
    cases.check_allreduce(ck, rank, lengths=[0, 1, 7, 1001, 300_001], dtypes=dtypes)
    cases.check_rooted(ck, rank, size)
    cases.check_gathers(ck, rank, size)
    cases.check_reduce_scatter(ck, rank, size)
    cases.check_alltoall(ck, rank, size)
    cases.check_large(ck, rank, size, n=1 << 20)
    apply(comm, None)  # back to untuned auto: still right
    cases.check_allreduce(ck, rank, lengths=[1001, 300_001], dtypes=[torch.float32])
    return ck.count, ck.failures, chosen, _C.has_schedule(comm)


@pytest.mark.parametrize("name", list(PATTERNS))
def test_collectives_match_gloo_under_a_schedule(name):
    pattern = PATTERNS[name]
    want = [pattern["algorithms"][0][1] if len(pattern["algorithms"]) == 1 else "ring",
            pattern["algorithms"][-1][1]]
    for count, failures, chosen, still_set in run_world(4, scheduled_collectives, pattern,
                                                        timeout=300):
        assert count > 100
        assert not failures, "\n".join(failures[:20])
        assert chosen == want
        assert not still_set


def split_allreduces(rank, size, splits, n):
    import torch

    from ringflow.tune import set_deterministic

    dist = init_torch(rank, size)
    rng = np.random.default_rng(rank)
    x = torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 10.0 ** rng.integers(-3, 4, n))
    everyone = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(everyone, x, group=dist.new_group(backend="gloo"))

    def by_buckets(bucket):
        out = x.clone()
        for chunk in out.split(bucket):
            dist.all_reduce(chunk)  # views: staged and written back
        return out.numpy()

    plain = {b: by_buckets(b) for b in splits}
    set_deterministic(live_communicator().comm, True)
    deterministic = {b: by_buckets(b) for b in splits}
    avg = x.double().clone()
    dist.all_reduce(avg, op=dist.ReduceOp.AVG)
    set_deterministic(live_communicator().comm, False)
    return ([e.numpy() for e in everyone], {b: v.tobytes() for b, v in plain.items()},
            {b: v.tobytes() for b, v in deterministic.items()}, avg.numpy())


def test_deterministic_mode_is_bit_identical_across_bucket_sizes():
    n, size = 200_003, 4
    splits = [n, 65_536, 10_007, 1_000]
    results = run_world(size, split_allreduces, splits, n, timeout=300,
                        env={"RINGFLOW_ALGO": "ring"})
    inputs = results[0][0]
    # The reference: each element summed in rank order, in float32.
    ref = inputs[0].copy()
    for x in inputs[1:]:
        ref = ref + x
    ref_avg = sum(x.astype(np.float64) for x in inputs) / size
    for _, plain, det, avg in results:
        for b in splits:
            assert det[b] == ref.tobytes(), f"bucket {b}: not the rank-order sum"
        np.testing.assert_allclose(avg, ref_avg, rtol=1e-12)
        # Without the mode, the ring's order follows the block boundaries, so
        # some bucket size changes some element's rounding: the test can see it.
        assert len({plain[b] for b in splits}) > 1


def deterministic_at_init(rank, size):
    import torch

    from ringflow import _C

    dist = init_torch(rank, size)
    comm = live_communicator().comm
    x = torch.full((100_001,), float(rank + 1))
    dist.all_reduce(x)
    return [_C.allreduce_algorithm(comm, b) for b in (64, 1 << 20)], float(x[0]), float(x[-1])


def test_deterministic_setting_at_init():
    for algos, first, last in run_world(3, deterministic_at_init,
                                        env={"RINGFLOW_DETERMINISTIC": "1"}, timeout=120):
        assert algos == ["deterministic", "deterministic"]
        assert first == last == 6.0
