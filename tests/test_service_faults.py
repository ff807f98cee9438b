"""Faults in `ps` mode, real processes: a worker SIGKILLed mid-epoch, the master SIGKILLed
mid-job and restarted on the same state directory.  Either way the job finishes, every
sample is used exactly once per epoch (the master's sample log), and the parameters equal
one process training the logged batches in order."""

from __future__ import annotations

import signal

from service_procs import Service, blobs, exactly_once, reference_ps, samples_of, write_job

BATCH = 40
STEPS = 10          # two epochs of the 192 training samples
N_TRAIN = 192


def _job_file(tmp_path, **extra):
    return write_job(str(tmp_path / "job.toml"), **{
        "name": "faults", "dataset": "blobs", "entry": "ringflow.jobs.mlp:build", "workers": 4,
        "mode": "ps", "steps": STEPS, "batch_size": BATCH, "seed": 5, "lr": 0.05,
        "commit_every": 3, "lease_s": 6.0, **extra})


def _check(svc: Service, npz: str, j: dict, steps: int = STEPS) -> None:
    assert j["state"] == "done", (j, svc.logs())
    samples = samples_of(svc, j["id"])
    assert sorted({s[2] for s in samples}) == list(range(steps))
    exactly_once(samples, N_TRAIN, BATCH, steps)
    assert j["params_sha256"] == reference_ps(npz, samples, lr=0.05, seed=5, batch_size=BATCH)


def test_a_worker_killed_mid_epoch(tmp_path):
    npz = blobs(str(tmp_path / "blobs.npz"))
    with Service(str(tmp_path), workers=4, worker_args=("--inject-delay-ms", "150")) as svc:
        svc.cli("data", "add", "blobs", npz)
        job_id = svc.submit(_job_file(tmp_path))
        svc.wait_step(job_id, 2)
        victim = svc.workers[1]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        j = svc.wait_job(job_id, timeout=180)
        _check(svc, npz, j)
        assert j["step"] == STEPS


def test_the_master_killed_mid_job_resumes_from_its_last_commit(tmp_path):
    npz = blobs(str(tmp_path / "blobs.npz"))
    with Service(str(tmp_path), worker_args=("--inject-delay-ms", "100")) as svc:
        svc.cli("data", "add", "blobs", npz)
        first = svc.submit(_job_file(tmp_path, steps=3 * STEPS))
        queued = svc.submit(_job_file(tmp_path, name="behind", steps=4))
        for _ in range(4):   # workers after the submissions: the kill lands mid-job
            svc.add_worker()
        before = svc.wait_step(first, 4)
        assert before["state"] == "running"
        svc.kill_master()
        svc.start_master(port=svc.port)
        after = svc.job(first)
        # back at its last commit (every 3 steps), never ahead of where it was killed
        assert after["state"] in ("running", "done")
        j = svc.wait_job(first, timeout=180)
        _check(svc, npz, j, steps=3 * STEPS)
        import re

        resumed = re.search(r"job %d resumes at step (\d+)" % first,
                            open(f"{tmp_path}/master.log").read())
        assert resumed and int(resumed.group(1)) % 3 == 0 and int(resumed.group(1)) <= before["step"] + 3
        behind = svc.wait_job(queued, timeout=180)
        assert behind["state"] == "done" and behind["step"] == 4, svc.logs()
        assert "the master restarted" not in (behind["error"] or "")
