"""Faults in `allreduce` mode (the default), real processes: a worker SIGKILLed mid-epoch, the
master SIGKILLed mid-job and restarted on the same state directory.  Either way the survivors
(or the returning workers) form a new generation of the group, restore the last confirmed
commit and finish the job.  "Exactly once per epoch" for allreduce (arjob.py): the sample log
counts confirmed steps only (steps after the last confirmed commit are recomputed from it), and
over the finished job it holds every training sample exactly once per epoch.  The final
committed model equals plain torch training the logged batches in step order (to float32
rounding: DDP sums the parts' gradients), so a wrong restore would show."""

from __future__ import annotations

import collections
import os
import re
import signal

import numpy as np
import torch

from service_procs import Service, blobs, exactly_once, samples_of, write_job

BATCH = 40
STEPS = 10          # two epochs of the 192 training samples (5 steps each, the last 32)
N_TRAIN = 192
LR = 0.05


def _job_file(tmp_path, name="elastic", **extra):
    return write_job(str(tmp_path / f"{name}.toml"), **{
        "name": name, "dataset": "blobs", "entry": "ringflow.jobs.mlp:build", "workers": 4,
        "mode": "allreduce", "steps": STEPS, "batch_size": BATCH, "seed": 5, "lr": LR,
        "commit_every": 2, **extra})


def _reference(npz: str, samples: list, steps: int) -> dict:
    """Plain torch, one process: per step, Adam on the mean loss over the step's logged samples."""
    from ringflow.jobs.mlp import build

    with np.load(npz) as z:
        job = build(data={"x": z["x"], "y": z["y"]}, seed=5, lr=LR, batch_size=BATCH)
    model, (x, y) = job.model, job.train
    opt = job.make_optimizer(model.parameters())
    by_step = collections.defaultdict(list)
    for _epoch, sample, step, _part, _worker in samples:
        by_step[step].append(sample)
    for step in range(steps):
        idx = torch.tensor(sorted(by_step[step]))
        opt.zero_grad(set_to_none=True)
        job.loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.state_dict()


def _check(tmp_path, svc: Service, npz: str, j: dict, steps: int) -> list:
    from ringflow.versions.store import Store

    assert j["state"] == "done", (j, svc.logs())
    assert j["step"] == steps and j["metrics"]["step"] == steps
    samples = samples_of(svc, j["id"])
    assert sorted({s[2] for s in samples}) == list(range(steps))
    exactly_once(samples, N_TRAIN, BATCH, steps)
    assert len(samples) == steps // 5 * N_TRAIN
    store = Store(os.path.join(tmp_path, "state", "jobs", str(j["id"]), "versions"), create=False)
    assert j["head"] == store.resolve("HEAD")
    got = store.checkout("HEAD")["model"]
    want = _reference(npz, samples, steps)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    return samples


def test_a_worker_killed_mid_epoch_the_survivors_reform_and_finish(tmp_path):
    npz = blobs(str(tmp_path / "blobs.npz"))
    with Service(str(tmp_path), workers=4, worker_args=("--inject-delay-ms", "200")) as svc:
        svc.cli("data", "add", "blobs", npz)
        job_id = svc.submit(_job_file(tmp_path), via_cli=False)
        before = svc.wait_step(job_id, 2)
        assert before["state"] == "running", (before, svc.logs())
        victim = svc.workers[2]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        j = svc.wait_job(job_id, timeout=180)
        samples = _check(tmp_path, svc, npz, j, STEPS)
        assert j["metrics"]["world"] == 3      # the final generation ran without the victim
    workers_by_step = collections.defaultdict(set)
    for _e, _s, step, _part, worker in samples:
        workers_by_step[step].add(worker)
    assert len(workers_by_step[0]) == 4
    # after the kill every step is split over the three survivors: the victim's share of
    # the recomputed steps went to them
    assert len(workers_by_step[STEPS - 1]) == 3
    victim_id = int(re.search(r"ringflow worker (\d+):", open(f"{tmp_path}/worker2.log").read())[1])
    last_of_victim = max(s for s, ws in workers_by_step.items() if victim_id in ws)
    assert all(len(workers_by_step[s]) == 3 for s in range(last_of_victim + 1, STEPS))


def test_the_master_killed_mid_job_resumes_from_its_last_confirmed_commit(tmp_path):
    npz = blobs(str(tmp_path / "blobs.npz"))
    steps = 3 * STEPS
    with Service(str(tmp_path), worker_args=("--inject-delay-ms", "100")) as svc:
        svc.cli("data", "add", "blobs", npz)
        first = svc.submit(_job_file(tmp_path, steps=steps), via_cli=False)
        queued = svc.submit(_job_file(tmp_path, name="behind", steps=4), via_cli=False)
        for _ in range(4):   # workers after the submissions: the kill lands mid-job
            svc.add_worker()
        before = svc.wait_step(first, 4)
        assert before["state"] == "running", (before, svc.logs())
        svc.kill_master()
        svc.start_master(port=svc.port)
        j = svc.wait_job(first, timeout=180)
        _check(tmp_path, svc, npz, j, steps)
        resumed = re.search(r"job %d resumes at step (\d+), its last confirmed commit \((\w+)\), in "
                            r"generation 1" % first, open(f"{tmp_path}/master.log").read())
        assert resumed, svc.logs()
        assert int(resumed[1]) % 2 == 0 and before["step"] <= int(resumed[1]) < steps
        behind = svc.wait_job(queued, timeout=180)
        assert behind["state"] == "done" and behind["step"] == 4, svc.logs()
