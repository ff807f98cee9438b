"""DistributedDataParallel over ringflow trains exactly like over gloo."""

import os
import signal

from worlds import init_torch, run_world

STEPS = 50


def _train(group, rank, steps=STEPS, die_at=None):
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    ddp = DDP(model, process_group=group)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(100 + rank)
    for step in range(steps):
        if step == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        x = torch.randn(8, 16, generator=data)
        y = torch.randn(8, 4, generator=data)
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def ddp_same_as_gloo(rank, size):
    import torch

    dist = init_torch(rank, size)
    ours = _train(None, rank)
    ref = _train(dist.new_group(backend="gloo"), rank)
    exact = all(torch.equal(a, b) for a, b in zip(ours, ref))
    worst = max(float((a - b).abs().max()) for a, b in zip(ours, ref))
    # The replicas agree with each other, too.
    flat = torch.cat([p.reshape(-1) for p in ours])
    first = flat.clone()
    dist.broadcast(first, 0)
    return exact, worst, torch.equal(flat, first)


def test_ddp_two_ranks_bitwise_equal_to_gloo():
    # Two ranks: every sum has two terms, so any order gives the same bits.
    for exact, worst, replicas_agree in run_world(2, ddp_same_as_gloo, timeout=240):
        assert exact, f"parameters differ from gloo's by up to {worst}"
        assert replicas_agree


def test_ddp_three_ranks_matches_gloo():
    # Three terms: ring order and gloo's order may round differently.
    for exact, worst, replicas_agree in run_world(3, ddp_same_as_gloo, timeout=240):
        assert worst < 1e-5, worst
        assert replicas_agree


def ddp_peer_dies(rank, size):
    import ringflow

    init_torch(rank, size, timeout_s=20)
    try:
        _train(None, rank, steps=20, die_at=5 if rank == 1 else None)
    except RuntimeError as e:
        # DDP hands the failure over as a plain RuntimeError; error_of finds
        # the ringflow error inside, under its documented class.
        err = ringflow.error_of(e)
        return type(e).__name__, str(e), isinstance(err, ringflow.PeerError), str(err)
    return None, "", False, ""


def test_ddp_raises_cleanly_when_a_peer_dies():
    results = run_world(2, ddp_peer_dies, timeout=120, may_die=(1,))
    kind, msg, is_peer_error, inner = results[0]
    assert kind is not None, "training went on although rank 1 died"
    assert "rank 1" in msg, msg
    assert is_peer_error and "rank 1" in inner and "PeerError" not in inner, inner
