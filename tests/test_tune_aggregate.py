"""The aggregator as a tuner candidate (RINGFLOW_AGGREGATOR set): a tune
calibrates its cost line from its own calls (the service counts them), the
cost model then offers it per size bucket, and a schedule that names it
for large messages sends them through the service and sums right."""

import numpy as np

import ringflow
from worlds import init_torch, live_communicator, run_world


def tune_with_aggregator(rank, size):
    import torch

    from ringflow import _C
    from ringflow.tune import Pattern, apply
    from ringflow.tune.tuner import model_of, tune

    init_torch(rank, size)
    owner = live_communicator()
    entry = tune(owner, starts=2, confirm=1, confirm_bytes=1 << 20, time_bound_s=5.0)
    candidates = model_of(entry).candidates(Pattern(tuple(range(size))))
    comm = owner.comm
    apply(comm, Pattern(tuple(range(size)), algorithms=((0, "ring"), (1 << 16, "aggregate"))))
    chosen = [_C.allreduce_algorithm(comm, b) for b in (4096, 1 << 20)]
    x = torch.from_numpy(np.arange(100_000, dtype=np.float32) * (rank + 1))
    torch.distributed.all_reduce(x)
    apply(comm, None)
    return entry["overheads"], candidates, chosen, x.numpy()


def test_tune_calibrates_the_aggregator_and_offers_it():
    size = 2
    with ringflow.Aggregator(workers=size) as agg:
        results = run_world(size, tune_with_aggregator, timeout=300,
                            env={"RINGFLOW_AGGREGATOR": agg.address})
        served = agg.stats()["results"]
    assert served > 0  # the calibration's and the schedule's calls went through it
    want = np.arange(100_000, dtype=np.float64) * sum(r + 1 for r in range(size))
    for overheads, candidates, chosen, x in results:
        assert overheads["agg_per_byte_s"] > 0 and overheads["agg_fixed_s"] >= 0
        assert "aggregate" in candidates
        assert chosen == ["ring", "aggregate"]
        np.testing.assert_allclose(x, want, rtol=1e-6)
