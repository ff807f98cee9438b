"""End to end, real processes, through the CLI: `ringflow data add` of the digits, a master and
4 workers training the GRU reference job in `allreduce` mode over the ringflow backend, versions
committed in the master's state directory, metrics shown by `ringflow job ID`."""

from __future__ import annotations

import os

import numpy as np
import pytest

from service_procs import Service, write_job

pytest.importorskip("sklearn")

STEPS = 12


def test_gru_job_from_data_add_to_committed_versions(tmp_path):
    from ringflow.jobs.gru import load_digits_arrays
    from ringflow.versions.store import Store

    x, y = load_digits_arrays()
    np.savez(tmp_path / "digits.npz", x=x, y=y)
    with Service(str(tmp_path), workers=4) as svc:
        out = svc.cli("data", "add", "digits", str(tmp_path / "digits.npz")).stdout
        assert "digits@1: 1797 records" in out
        job_file = write_job(str(tmp_path / "gru.toml"), name="gru", dataset="digits",
                             entry="ringflow.jobs.gru:build", workers=4, mode="allreduce",
                             steps=STEPS, batch_size=64, seed=1, lr=0.01, commit_every=4)
        job_id = svc.submit(job_file)
        j = svc.wait_job(job_id, timeout=240)
        assert j["state"] == "done", (j, svc.logs())
        assert svc.job(job_id, wait=5) == j     # `ringflow job ID --json`, the same object
        text = svc.cli("job", job_id).stdout
        jobs = svc.cli("jobs").stdout
    m = j["metrics"]
    assert m["step"] == STEPS and np.isfinite(m["loss"]) and 0 <= m["test_accuracy"] <= 1
    assert "test_accuracy" in text and f"job {job_id} gru: done" in text
    assert "done" in jobs and "gru" in jobs
    store = Store(os.path.join(tmp_path, "state", "jobs", str(job_id), "versions"), create=False)
    log = store.log()
    assert [c["step"] for c in log][:1] == [STEPS] and j["head"] == store.resolve("HEAD")
    assert sorted(c["step"] for c in log) == [0, 4, 8, 12]
    # the committed model is the one the workers ended with
    from ringflow.jobs.gru import build
    from ringflow.versions.training import model_digest

    job = build(seed=1, data={"x": x, "y": y})
    job.model.load_state_dict(store.checkout("HEAD")["model"])
    assert model_digest(job.model) == m["model_sha256"]
