"""`ps` mode end to end: a master and 4 real worker processes, random delays per calculation.

The parameters after training must be bit-identical across runs and equal
to one process training the same batches (read back from the master's
sample log) in the same order with plain torch.
"""

from __future__ import annotations

from service_procs import Service, blobs, exactly_once, reference_ps, samples_of, write_job

STEPS = 6
BATCH = 40


def test_ps_is_bit_identical_across_runs_and_equals_one_process(tmp_path):
    npz = blobs(str(tmp_path / "blobs.npz"))
    with Service(str(tmp_path), workers=4, worker_args=("--inject-delay-ms", "40")) as svc:
        svc.cli("data", "add", "blobs", npz)
        job_file = write_job(str(tmp_path / "job.toml"), name="blobs-ps", dataset="blobs",
                             entry="ringflow.jobs.mlp:build", workers=4, mode="ps", steps=STEPS,
                             batch_size=BATCH, seed=3, lr=0.05, commit_every=2)
        # queued: they run one after another
        ids = [svc.submit(job_file)] + [svc.submit(job_file, via_cli=False) for _ in range(2)]
        hashes = []
        for i in ids:
            j = svc.wait_job(i, timeout=120)
            assert j["state"] == "done", (j, svc.logs())
            assert j["step"] == STEPS and j["metrics"]["step"] == STEPS
            hashes.append(j["params_sha256"])
        samples = samples_of(svc, ids[0])
        # the client side of bad input: one line naming the problem, the master still serving
        bad = tmp_path / "bad.toml"
        bad.write_text('name = "x"\ndataset = "blobs"\nentry = "ringflow.jobs.mlp:build"\nmode = "gossip"\n')
        r = svc.cli("submit", str(bad), check=False)
        assert r.returncode == 2 and "mode = 'gossip' must be one of allreduce, ps" in r.stderr
        bad.write_text('name = "x"\ndataset = "nope"\nentry = "ringflow.jobs.mlp:build"\n')
        r = svc.cli("submit", str(bad), check=False)
        assert r.returncode == 1 and "unknown dataset 'nope'" in r.stderr
        assert "every shard matches its hash" in svc.cli("data", "verify", "blobs").stdout
        assert "blobs@1: 240 records" in svc.cli("data", "ls").stdout
        workers_used = {s[4] for i in ids for s in samples_of(svc, i)}
    assert len(set(hashes)) == 1, hashes
    assert len(workers_used) > 1, "the calculations should have spread over several workers"
    n_train = 240 - 48   # the MLP job holds out 20%
    exactly_once(samples, n_train, BATCH, STEPS)
    assert hashes[0] == reference_ps(npz, samples, lr=0.05, seed=3, batch_size=BATCH)
