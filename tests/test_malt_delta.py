"""ringflow.malt.Optimizer(update="delta"): replicas add each other's
weighted deltas, so they converge to the global least-squares optimum (an
independent reference) and, once no delta is in flight, agree exactly
without any averaging of models;
a plain Python model of the rule (every replica = start + w * all deltas)
checks the merge's arithmetic in one process."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ringflow import _C
from test_malt_optimizer import _linear, _optimum, _shard
from worlds import init_torch, run_world


def test_adding_deltas_is_start_plus_the_weighted_sum():
    n, w = 257, 0.25
    inbox = _C.MaltInbox(3, n, 2, _C.MaltFullPolicy.coalesce)
    outs = [_C.MaltOutbox(inbox.pid, inbox.fd, inbox.bytes, s, n) for s in (1, 2)]
    rng = np.random.default_rng(3)
    deltas = [[torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for _ in range(3)]
              for _ in outs]
    for o, ds in zip(outs, deltas):
        for i, d in enumerate(ds):  # 3 pushes into 2 slots: the ring coalesces
            o.push(d.data_ptr(), i)
    x = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    want = x.double().numpy() + w * sum(d.double().numpy() for ds in deltas for d in ds)
    while inbox.arrivals():
        takes = [(a.sender, a.slot, a.seq, w) for a in inbox.arrivals()]
        inbox.merge(x.data_ptr(), takes, 0.0, False)
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-5, atol=1e-5)


def _train_then_settle(rank, size, steps, weight):
    """Trains `steps` steps (lr decayed to 0, as _train does), then, once
    every rank has, keeps exchanging without training until the deltas in
    flight have landed everywhere."""
    import ringflow.malt

    dist = init_torch(rank, size)
    model = _linear(0)
    opt = ringflow.malt.Optimizer(torch.optim.SGD(model.parameters(), lr=0.05), model,
                                  update="delta", delta_weight=weight)
    x, y = _shard(rank)
    dist.barrier()  # a rank training alone at the start would pull the sum its way
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.05 * (1 - step / steps)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x).squeeze(1), y).backward()
        opt.step()
        # Sleep-bound steps keep the ranks at one pace even on a busy
        # machine: the sum weighs each shard by how many steps it took.
        time.sleep(0.015)
    opt.zero_grad()  # no gradients: the steps below only merge
    for _ in range(2):
        dist.barrier()
        for _ in range(20):
            opt.step()
            time.sleep(0.01)
    stats = opt.stats()
    w = model.weight.detach().reshape(-1).tolist()
    dist.barrier()
    opt.close()
    dist.destroy_process_group()
    return w, stats


def test_replicas_converge_and_agree():
    out = run_world(4, _train_then_settle, 250, 0.5, timeout=180)
    best = _optimum(range(4))
    ws = [torch.tensor(w) for w, _ in out]
    for rank, (w, (_, stats)) in enumerate(zip(ws, out)):
        own = _optimum([rank])
        assert torch.dist(w, best) < 0.25 * torch.dist(own, best), (rank, w, best, stats)
        assert all(v > 0 for v in stats["merged_from"].values()), stats
    # Same start (seed 0), the same deltas applied everywhere at the same
    # weight: once none is in flight the replicas agree up to float sums.
    spread = max(torch.dist(a, b).item() for a in ws for b in ws)
    assert spread < 1e-4, [w.tolist() for w in ws]


def _bad_update(rank, size):
    import ringflow.malt
    init_torch(rank, size)
    model = _linear(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for kw, msg in [({"update": "gradients"}, "update must be one of"),
                    ({"update": "delta", "delta_weight": 0}, "delta_weight must be positive")]:
        with pytest.raises(ValueError, match=msg):
            ringflow.malt.Optimizer(opt, model, **kw)
    return True


def test_bad_update_arguments_are_named():
    assert run_world(2, _bad_update, timeout=120) == [True, True]


def _stop_early_then_close(rank, size, settle, tail=0, every=1):
    """Rank 0 trains 5 steps and closes at once; rank 1 trains 30 slower
    steps, then closes: rank 0's close() follows rank 1's deltas for up to
    `settle` seconds.  Returns the model after and before close()."""
    import ringflow.malt

    dist = init_torch(rank, size)
    model = _linear(0)
    opt = ringflow.malt.Optimizer(torch.optim.SGD(model.parameters(), lr=0.05), model,
                                  update="delta", settle=settle, tail_average=tail,
                                  every=every)
    x, y = _shard(rank)
    dist.barrier()
    for _ in range(5 if rank == 0 else 30):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x).squeeze(1), y).backward()
        opt.step()
        time.sleep(0.02)
    before = model.weight.detach().reshape(-1).tolist()
    t0 = time.monotonic()
    opt.close()
    closed_s = time.monotonic() - t0
    w = model.weight.detach().reshape(-1).tolist()
    dist.destroy_process_group()
    return w, closed_s, before


@pytest.mark.parametrize("settle", [0.0, 20.0])
def test_close_follows_the_replicas_still_training_within_settle(settle):
    """With a settle long enough, the replica that stopped first ends on the
    same model as the one that trained on (every delta of both, added at the
    same weight); with settle 0 it keeps only what had arrived."""
    (w0, closed0, _), (w1, _, _) = run_world(2, _stop_early_then_close, settle, timeout=120)
    gap = torch.dist(torch.tensor(w0), torch.tensor(w1)).item()
    if settle:
        assert gap < 1e-4, (gap, closed0)
        assert closed0 < settle  # it left once the other had, not at the bound
    else:
        assert gap > 1e-3, gap
        assert closed0 < 0.5, closed0


def test_close_pushes_the_progress_since_the_last_exchange():
    """Exchanging every 4 steps, rank 0 stops 1 step and rank 1 2 steps
    after an exchange: close() sends those steps too, so both end on one
    model (a step kept back would count on its own replica alone)."""
    (w0, _, _), (w1, _, _) = run_world(2, _stop_early_then_close, 20.0, 0, 4, timeout=120)
    gap = torch.dist(torch.tensor(w0), torch.tensor(w1)).item()
    assert gap < 1e-4, gap


def test_the_tail_average_follows_the_replicas_still_training():
    """A replica that stopped first counts every delta it adds while it
    waits as a step of its tail average: it ends on the average the last
    one ends on, although the two took different steps (and far from the
    last one's final model, which the average replaces)."""
    (w0, _, _), (w1, _, last1) = run_world(2, _stop_early_then_close, 20.0, 10, timeout=120)
    w0, w1, last1 = torch.tensor(w0), torch.tensor(w1), torch.tensor(last1)
    moved = torch.dist(w1, last1).item()
    assert moved > 1e-3, moved
    assert torch.dist(w0, w1).item() < 0.1 * moved, (torch.dist(w0, w1).item(), moved)
