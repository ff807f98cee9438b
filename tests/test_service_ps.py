"""`ps` mode end to end: a master and 4 real worker processes, random delays per calculation.

The parameters after training must be bit-identical across runs and equal
to one process training the same batches (read back from the master's
sample log) in the same order with plain torch.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time

import numpy as np
import torch

from service_procs import Service, blobs, write_job

STEPS = 6
BATCH = 40


def _reference(npz: str, samples: list, lr: float, seed: int) -> str:
    """Plain torch: per step, the parts' gradients (weight x mean loss) summed in part order."""
    from ringflow.jobs.mlp import build
    from ringflow.versions.training import model_digest

    torch.set_num_threads(1)
    with np.load(npz) as z:
        job = build(data={"x": z["x"], "y": z["y"]}, seed=seed, lr=lr, batch_size=BATCH)
    model, (x, y) = job.model, job.train
    opt = job.make_optimizer(model.parameters())
    steps = collections.defaultdict(lambda: collections.defaultdict(list))
    for _epoch, sample, step, part, _worker in samples:
        steps[step][part].append(sample)
    for step in sorted(steps):
        parts = steps[step]
        total = sum(len(v) for v in parts.values())
        acc = None
        for part in sorted(parts):
            idx = torch.tensor(parts[part])
            model.zero_grad(set_to_none=True)
            (job.loss_fn(model(x[idx]), y[idx]) * (len(idx) / total)).backward()
            g = torch.nn.utils.parameters_to_vector(p.grad for p in model.parameters())
            acc = g.clone() if acc is None else acc.add_(g)
        off = 0
        for p in model.parameters():
            p.grad = acc[off:off + p.numel()].view_as(p).clone()
            off += p.numel()
        opt.step()
    return model_digest(model)


def _samples(svc: Service, job_id: int) -> list:
    from ringflow.service.protocol import call, parse_address

    return call(parse_address(svc.address), "samples", job=job_id)[0]["samples"]


def _exactly_once(samples: list, n_train: int, steps: int) -> None:
    """Every epoch the log covers fully has each training sample exactly once."""
    per_epoch = collections.defaultdict(list)
    for epoch, sample, *_ in samples:
        per_epoch[epoch].append(sample)
    steps_per_epoch = -(-n_train // BATCH)
    for epoch, got in per_epoch.items():
        assert len(got) == len(set(got)), f"epoch {epoch}: a sample used twice"
        if (epoch + 1) * steps_per_epoch <= steps:
            assert sorted(got) == list(range(n_train)), f"epoch {epoch}: samples missing"


def test_ps_is_bit_identical_across_runs_and_equals_one_process(tmp_path):
    npz = blobs(str(tmp_path / "blobs.npz"))
    with Service(str(tmp_path), workers=4, worker_args=("--inject-delay-ms", "40")) as svc:
        svc.cli("data", "add", "blobs", npz)
        job_file = write_job(str(tmp_path / "job.toml"), name="blobs-ps", dataset="blobs",
                             entry="ringflow.jobs.mlp:build", workers=4, mode="ps", steps=STEPS,
                             batch_size=BATCH, seed=3, lr=0.05, commit_every=2)
        ids = [svc.submit(job_file) for _ in range(5)]   # queued: they run one after another
        hashes = []
        for i in ids:
            j = svc.wait_job(i, timeout=120)
            assert j["state"] == "done", (j, svc.logs())
            assert j["step"] == STEPS and j["metrics"]["step"] == STEPS
            hashes.append(j["params_sha256"])
        samples = _samples(svc, ids[0])
        workers_used = {s[4] for i in ids for s in _samples(svc, i)}
    assert len(set(hashes)) == 1, hashes
    assert len(workers_used) > 1, "the calculations should have spread over several workers"
    n_train = 240 - 48   # the MLP job holds out 20%
    _exactly_once(samples, n_train, STEPS)
    assert hashes[0] == _reference(npz, samples, lr=0.05, seed=3)
