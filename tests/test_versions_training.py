"""Versioned data-parallel training: rollback on NaN and on spikes, bounded rollbacks,
the GRU reference job's accuracy, ringflow against gloo, and `ringflow demo --json`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from worlds import init_torch, run_world

pytest.importorskip("sklearn")

TIMEOUT = 240


def train_world(rank, size, store, steps, commit_every, inject=None, skip=(), guard=None,
                backend="ringflow", rank_seed=None):
    import torch

    torch.set_num_threads(1)
    init_torch(rank, size, backend)
    from ringflow.jobs.gru import build
    from ringflow.versions.guard import GuardConfig
    from ringflow.versions.training import TrainConfig, train

    cfg = TrainConfig(steps=steps, commit_every=commit_every, store=store, inject=inject or {},
                      skip=tuple(skip), guard=GuardConfig(**(guard or {})))
    job = build(batch_size=48)
    if rank_seed is not None:
        torch.manual_seed(rank_seed + rank)
    return train(job, cfg).__dict__


def _same_on_every_rank(results, key):
    assert all(r[key] == results[0][key] for r in results), [r[key] for r in results]
    return results[0][key]


def test_nan_on_one_rank_rolls_every_rank_back_like_a_run_that_skipped(tmp_path):
    # Commits at steps 0, 10, 20, 30; a NaN on rank 1 at batch 25 -> back to step 20,
    # batches 20..25 skipped.
    a = run_world(3, train_world, str(tmp_path / "a"), 40, 10, {25: (1, "nan")}, timeout=TIMEOUT)
    rb = _same_on_every_rank(a, "rollbacks")
    assert len(rb) == 1 and rb[0]["at_step"] == 25 and rb[0]["to_step"] == 20
    assert "non-finite" in rb[0]["reason"]
    skipped = _same_on_every_rank(a, "skipped")
    assert skipped == list(range(20, 26))
    digest = _same_on_every_rank(a, "model_sha256")
    from ringflow.versions import Store

    s = Store(tmp_path / "a")
    log = s.log()
    rolled = [e for e in log if e["rollbacks"]]
    assert [e["id"] for e in rolled] == [rb[0]["commit"]] and rolled[0]["step"] == 20
    assert log[0]["step"] == 40 and s.fsck() == []

    ref = run_world(3, train_world, str(tmp_path / "b"), 40, 10, None, skipped, timeout=TIMEOUT)
    assert _same_on_every_rank(ref, "rollbacks") == []
    assert _same_on_every_rank(ref, "model_sha256") == digest
    plain = run_world(3, train_world, str(tmp_path / "c"), 40, 10, timeout=TIMEOUT)
    assert plain[0]["model_sha256"] != digest  # the skipped batches did matter


def test_every_ranks_rng_state_is_committed(tmp_path):
    """The commit records each rank's RNG state (element r is rank r's), not only
    the writer's: the GRU job draws nothing from torch's RNG, so each must equal
    the state its rank was seeded with."""
    import torch

    from ringflow.versions import Store

    run_world(3, train_world, str(tmp_path / "r"), 6, 3, None, (), None, "ringflow", 1000,
              timeout=TIMEOUT)
    s = Store(tmp_path / "r")
    for entry in s.log():
        rngs = s.checkout_rng(entry["id"])["torch"]
        assert len(rngs) == 3
        for r, state in enumerate(rngs):
            torch.manual_seed(1000 + r)
            assert torch.equal(state, torch.get_rng_state()), (entry["step"], r)


def test_loss_spike_is_caught_and_only_the_culprit_skipped(tmp_path):
    guard = {"skip": "culprit", "spike_factor": 5.0, "warmup": 5}
    a = run_world(2, train_world, str(tmp_path / "a"), 40, 10, {33: (0, "spike")}, (), guard,
                  timeout=TIMEOUT)
    rb = _same_on_every_rank(a, "rollbacks")
    assert len(rb) == 1 and "loss spike" in rb[0]["reason"]
    assert rb[0]["at_step"] == 33 and rb[0]["to_step"] == 30
    assert _same_on_every_rank(a, "skipped") == [33]
    ref = run_world(2, train_world, str(tmp_path / "b"), 40, 10, None, [33], guard, timeout=TIMEOUT)
    assert _same_on_every_rank(ref, "model_sha256") == _same_on_every_rank(a, "model_sha256")


def diverging_world(rank, size, store, inject, guard):
    """train_world, but each rank reports its own DivergenceError instead of
    raising it (the harness stops the other ranks as soon as one raises)."""
    from ringflow.versions import DivergenceError

    try:
        train_world(rank, size, store, 60, 5, inject, (), guard)
    except DivergenceError as e:
        return f"{type(e).__name__}: {e}"
    return "trained to the end"


def test_job_that_keeps_diverging_stops_on_every_rank(tmp_path):
    inject = {b: (1, "nan") for b in range(12, 200)}
    results = run_world(2, diverging_world, str(tmp_path / "a"), inject, {"max_rollbacks": 2},
                        timeout=TIMEOUT)
    for rank, msg in enumerate(results):
        assert msg.startswith(f"DivergenceError: rank {rank}: training diverged"), msg
        assert "giving up after 2 rollback(s)" in msg, msg
    from ringflow.versions import Store

    s = Store(tmp_path / "a")
    assert sum(len(c["rollbacks"]) for c in s.log()) == 2 and s.fsck() == []


def test_gru_reaches_its_accuracy_and_gloo_ends_with_the_same_loss(tmp_path):
    from ringflow.jobs.gru import TARGET_ACCURACY

    rf = run_world(2, train_world, str(tmp_path / "rf"), 300, 100, timeout=TIMEOUT)
    gl = run_world(2, train_world, str(tmp_path / "gl"), 300, 100, None, (), None, "gloo",
                   timeout=TIMEOUT)
    acc = _same_on_every_rank(rf, "test")["accuracy"]
    assert acc >= TARGET_ACCURACY, acc
    # Two ranks: each sum has two terms, so both backends give the same bits.
    assert rf[0]["final_loss"] == gl[0]["final_loss"]
    assert rf[0]["model_sha256"] == gl[0]["model_sha256"]


def test_demo_json_contract(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ringflow.cli", "demo", "--json", "--world", "2",
                        "--steps", "30", "--commit-every", "10", "--inject-nan", "15",
                        "--out", str(tmp_path / "demo")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"accuracy", "rollbacks", "ringflow_s", "gloo_s"} <= set(out)
    assert out["rollbacks"] == 1 and out["all_ranks_same_rollbacks"]
    assert 0 < out["accuracy"] <= 1 and out["ringflow_s"] > 0 and out["gloo_s"] > 0
    assert (tmp_path / "demo" / "loss.png").stat().st_size > 10_000
    log = subprocess.run([sys.executable, "-m", "ringflow.cli", "versions", "--store", out["store"],
                          "log", "--json"], capture_output=True, text=True, timeout=120)
    assert any(c["rollbacks"] for c in json.loads(log.stdout))


def test_gru_data_is_sklearns_digits():
    import numpy as np
    from sklearn.datasets import load_digits

    from ringflow.jobs.gru import build, load_digits_arrays

    x, y = load_digits_arrays()
    d = load_digits()
    assert np.array_equal(x, d.data) and np.array_equal(y, d.target)
    job = build()
    assert len(job.train[1]) == 1438 and len(job.test[1]) == 359
    assert job.train[0].shape[1:] == (8, 8) and float(job.train[0].max()) == 1.0
    with pytest.raises(ValueError, match="must be positive"):
        build(batch_size=0)


def test_each_rollback_scales_the_learning_rate_once(tmp_path):
    # NaN at batch 12 -> back to step 10 (lr x 0.5), batches 10-12 skipped; committed at step 20
    # with lr x 0.5;
    # NaN at batch 27 (step 24) -> back to step 20, whose lr already carries one 0.5: now x 0.25.
    a = run_world(2, train_world, str(tmp_path / "a"), 40, 10, {12: (0, "nan"), 27: (1, "nan")},
                  (), {"lr_scale": 0.5}, timeout=TIMEOUT)
    rb = _same_on_every_rank(a, "rollbacks")
    assert [(r["at_step"], r["to_step"]) for r in rb] == [(12, 10), (24, 20)]
    from ringflow.jobs.gru import build
    from ringflow.versions import Store

    base = build().config["lr"]
    s = Store(tmp_path / "a")
    lrs = {c["step"]: s.checkout(c["id"])["optim"]["param_groups"][0]["lr"] for c in s.log()}
    assert lrs[10] == base and lrs[20] == base * 0.5 and lrs[40] == base * 0.25
