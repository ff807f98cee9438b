"""Seeded replay for every update ringflow.malt.Optimizer exchanges
("delta", "grads"; "params" is in test_malt_optimizer.py): two runs with
the same seed are bit-identical, and each matches a plain Python model of
its merge rule and of close()'s merge of the final models (float64 torch
arithmetic on the same shards).
Also: update="grads" without replay trains every replica towards the
global least-squares optimum (an independent reference)."""

from __future__ import annotations

import numpy as np
import torch

from test_malt_optimizer import _linear, _optimum, _shard, _train, tail_average
from worlds import run_world

STEPS, LR = 24, 0.05


def _grad(w, data):
    x, y = data
    return 2 * x.T @ (x @ w - y) / len(y)


def _simulate(update, steps, lr, every=1, weight=0.5, size=4):
    """Replay's schedule in plain Python, float64: every replica's model
    after each step (before close()).
    grads:  every replica steps on the mean of its gradient and its
            in-neighbours' (Halton graph, default k), and every `every`
            steps averages its model with theirs.
    delta:  every replica adds weight * (every replica's step), its own
            included (all replicas start from rank 0's model)."""
    from ringflow.malt import send_targets

    ranks = list(range(size))
    start = _linear(7).weight.detach().reshape(-1).double()
    ws = [start.clone() for _ in ranks]
    path = []
    data = [(x.double(), y.double()) for x, y in (_shard(r) for r in ranks)]
    ins = {r: [s for s in ranks if r in send_targets(s, ranks)] for r in ranks}
    for t in range(steps):
        rate = lr * (1 - t / steps)
        gs = [_grad(ws[r], data[r]) for r in ranks]
        if update == "grads":
            ws = [ws[r] - rate * (gs[r] + sum(gs[s] for s in ins[r])) / (1 + len(ins[r])) for r in ranks]
            if (t + 1) % every == 0:
                ws = [(ws[r] + sum(ws[s] for s in ins[r])) / (1 + len(ins[r])) for r in ranks]
        else:
            total = sum(-rate * weight * g for g in gs)
            ws = [w + total for w in ws]
        path.append(list(ws))
    return path


def _replay(update, **kw):
    malt = {"replay_seed": 7, "timeout": 60, "update": update, **kw}
    return [w for w, _, _ in run_world(4, _train, STEPS, LR, None, malt, 7, timeout=180)]


def test_grads_replay_repeats_and_matches_the_simulation():
    first, second = _replay("grads", every=3, k=2), _replay("grads", every=3, k=2)
    path = _simulate("grads", STEPS, LR, every=3)
    # The graph is not complete (k = 2 of 3 peers): the replicas differ
    # until close() (in _train) averages every replica's tail average.
    assert len({tuple(np.round(w.numpy(), 6)) for w in path[-1]}) > 1
    want = sum(tail_average(path, r) for r in range(4)) / 4
    for r in range(4):
        assert first[r] == second[r], f"rank {r}: replay differs"
        np.testing.assert_allclose(first[r], want.numpy(), rtol=1e-4, atol=1e-5)


def test_delta_replay_repeats_and_matches_the_simulation():
    first, second = _replay("delta", delta_weight=0.5), _replay("delta", delta_weight=0.5)
    path = _simulate("delta", STEPS, LR, weight=0.5)
    for r in range(4):
        assert first[r] == second[r], f"rank {r}: replay differs"
        np.testing.assert_allclose(first[r], tail_average(path, r).numpy(), rtol=1e-4, atol=1e-5)


def test_grads_train_every_replica_towards_the_global_optimum():
    out = run_world(4, _train, 500, 0.05, None, {"update": "grads", "every": 4}, None, None, 0.006,
                    timeout=180)
    best = _optimum(range(4))
    for rank, (w, _, stats) in enumerate(out):
        own = _optimum([rank])
        assert torch.dist(torch.tensor(w), best) < 0.25 * torch.dist(own, best), (rank, w, best, stats)
        assert stats["merged"] > 0, stats
