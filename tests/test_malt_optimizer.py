"""ringflow.malt.Optimizer on real processes: a plain loop wrapped with three
lines (under torchrun), replicas pulled towards the global optimum (an
independent least-squares reference), replay against a plain Python
simulation, a SIGKILLed rank, ranks that stop at different times."""

from __future__ import annotations

import difflib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from worlds import free_port, init_torch, run_world

ROOT = Path(__file__).resolve().parent.parent


def _shard(rank, n=64, d=8):
    """Rank r's least-squares data: each shard has its own optimum, far from
    the optimum of all shards together."""
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(n, d, generator=g)
    w = torch.full((d,), float(rank * 2 - 3)) + 0.1 * torch.randn(d, generator=g)
    return x, x @ w


def _linear(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 1, bias=False)


def _train(rank, size, steps, lr=0.05, die_at=None, malt_kwargs=None, seed=None, stop_at=None,
           pause=0.002):
    import ringflow.malt

    dist = init_torch(rank, size)
    model = _linear(rank if seed is None else seed)
    opt = ringflow.malt.Optimizer(torch.optim.SGD(model.parameters(), lr=lr), model,
                                  **(malt_kwargs or {}))
    x, y = _shard(rank)
    gaps, last = [], time.monotonic()
    total = steps if stop_at is None else stop_at
    for step in range(total):
        # Decayed to 0, as training schedules do: a rank still running after
        # its peers stopped does not wander back to its own shard's optimum.
        for group in opt.param_groups:
            group["lr"] = lr * (1 - step / total)
        if die_at == (rank, step):
            os.kill(os.getpid(), signal.SIGKILL)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x).squeeze(1), y).backward()
        opt.step()
        now = time.monotonic()
        gaps.append(now - last)
        last = now
        time.sleep(pause)  # room for the peers' pushes to interleave
    stats = opt.stats()
    begun = time.monotonic()
    opt.close()  # waits at most `settle` (1 s) for the live peers' final models
    stats["close_s"] = time.monotonic() - begun
    dist.destroy_process_group()
    # A list: a tensor would cross the result queue as a file descriptor of a process that exits.
    return model.weight.detach().reshape(-1).tolist(), max(gaps), stats


def _optimum(ranks):
    xs, ys = zip(*(_shard(r) for r in ranks))
    return torch.linalg.lstsq(torch.cat(xs), torch.cat(ys).unsqueeze(1)).solution.reshape(-1)


def test_replicas_converge_to_the_global_optimum():
    # 3 s of training or more: longer than the ranks' start-up skew on a loaded host.
    out = [(torch.tensor(w), g, s) for w, g, s in run_world(4, _train, 500, 0.05, None, {"update": "params"}, None,
                                                            None, 0.006, timeout=180)]
    best = _optimum(range(4))
    for rank, (w, _, stats) in enumerate(out):
        own = _optimum([rank])
        assert torch.dist(w, best) < 0.25 * torch.dist(own, best), (rank, w, best, stats)
        assert stats["merged"] > 0
    spread = max(torch.dist(a[0], b[0]).item() for a in out for b in out)
    start = max(torch.dist(_linear(a).weight, _linear(b).weight).item() for a in range(4) for b in range(4))
    assert spread < 0.25 * start + 0.5


def _simulate(steps, lr, size=4):
    """The replay schedule in plain Python: a local SGD step, then every
    replica averages its model with those of its in-neighbours.  Returns
    every replica's model after each step (before close())."""
    from ringflow.malt import send_targets

    ws = [_linear(7).weight.detach().reshape(-1).double().clone() for _ in range(size)]
    data = [(x.double(), y.double()) for x, y in (_shard(r) for r in range(size))]
    ins = {r: [s for s in range(size) if r in send_targets(s, list(range(size)))] for r in range(size)}
    path = []
    for t in range(steps):
        for r in range(size):
            x, y = data[r]
            ws[r] = ws[r] - lr * (1 - t / steps) * 2 * x.T @ (x @ ws[r] - y) / len(y)
        ws = [(ws[r] + sum(ws[s] for s in ins[r])) / (1 + len(ins[r])) for r in range(size)]
        path.append(list(ws))
    return path


def tail_average(path, rank, steps=20):
    """close()'s tail average in plain Python: the weights beta^(n-1-t) of
    an exponential average over the models after each step, normalised
    (the optimizer's zero start divided by 1 - beta^n is the same)."""
    beta = 1 - 1 / steps
    n = len(path)
    weights = [(1 - beta) * beta ** (n - 1 - t) for t in range(n)]
    return sum(w * models[rank] for w, models in zip(weights, path)) / sum(weights)


def test_replay_repeats_and_matches_the_simulation():
    kw = {"replay_seed": 7, "timeout": 60, "update": "params"}
    first = run_world(4, _train, 25, 0.05, None, kw, 7, timeout=180)
    second = run_world(4, _train, 25, 0.05, None, kw, 7, timeout=180)
    # close() (in _train) averages every replica's tail average.
    path = _simulate(25, 0.05)
    want = [sum(tail_average(path, r) for r in range(4)) / 4] * 4
    for r in range(4):
        assert first[r][0] == second[r][0], f"rank {r}: replay differs"
        np.testing.assert_allclose(first[r][0], want[r].numpy(), rtol=1e-4, atol=1e-5)


def test_a_sigkilled_rank_stalls_nobody():
    out = run_world(4, _train, 300, 0.05, (2, 40), {"depart_after": 0.5}, timeout=180, may_die=(2,))
    assert out[2] is None
    for rank in (0, 1, 3):
        _, worst_gap, stats = out[rank]
        assert worst_gap < 2.0, f"rank {rank} stalled {worst_gap:.2f} s"
        assert 2 in stats["departed"], stats
        assert stats["close_s"] < 3.0, stats  # settle (1 s), never the dead rank


def _stop_early(rank, size):
    # A short settle: rank 3 must still be training when the others have closed.
    return _train(rank, size, None, stop_at=40 * (rank + 1), pause=0.01,
                  malt_kwargs={"depart_after": 0.5, "settle": 0.1})


def test_ranks_that_stop_early_are_departed_peers():
    out = run_world(4, _stop_early, timeout=180)
    assert [s["steps"] for _, _, s in out] == [40, 80, 120, 160]
    assert out[3][2]["departed"] == [0, 1, 2]
    # Once the rest departed, rank 3 pushes to nobody.
    assert max(g for _, g, _ in out) < 2.0
    # Closing waits for the peers still training at most `settle`.
    assert max(s["close_s"] for _, _, s in out) < 2.0, [s["close_s"] for _, _, s in out]


def _bad_arguments(rank, size):
    import ringflow.malt

    init_torch(rank, size)
    model = _linear(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for kw, msg in [({"every": 0}, "every must be"), ({"staleness_horizon": 0}, "horizon must be positive"),
                    ({"depart_after": 0}, "depart_after must be positive"),
                    ({"settle": -1}, "settle must be >= 0"),
                    ({"tail_average": 0.5}, "tail_average must be 0 \\(off\\) or at least 1 step")]:
        with pytest.raises(ValueError, match=msg):
            ringflow.malt.Optimizer(opt, model, **kw)
    with pytest.raises(ValueError, match="float32 CPU"):
        ringflow.malt.Optimizer(opt, model.double())
    return True


def test_bad_arguments_are_named():
    assert run_world(2, _bad_arguments, timeout=120) == [True, True]


def _code(path):
    lines = path.read_text().splitlines()
    end = [i for i, l in enumerate(lines) if l.startswith('"""')][1]
    return lines[end + 1:]  # the docstrings differ; the code is compared


def test_three_changed_lines_under_torchrun():
    plain, malt = ROOT / "examples" / "gru_plain.py", ROOT / "examples" / "gru_malt.py"
    changed = [l for l in difflib.unified_diff(_code(plain), _code(malt), lineterm="", n=0)
               if l[:1] in "+-" and not l.startswith(("+++", "---"))]
    assert len(changed) <= 3, changed
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
           f"--master-port={free_port()}", str(malt), "--epochs", "20"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    # Four ranks share torchrun's stdout: one rank's line can land before another's newline.
    accs = [json.loads(obj)["accuracy"] for obj in re.findall(r"\{[^{}]*\}", res.stdout)]
    assert len(accs) == 4 and min(accs) > 0.7, res.stdout
