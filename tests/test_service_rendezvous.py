"""The allreduce rendezvous runs over the master's authenticated protocol (kvstore.py): the
store's semantics (a get waits for its set; a closed generation answers a waiting get at
once), and, with real processes, a request without RINGFLOW_SERVICE_TOKEN, from a worker that
is not a member of the generation, or with a guessed prefix is refused while the job's own
workers meet and finish."""

from __future__ import annotations

import time

import pytest

from service_procs import Service, blobs, write_job


def _job_file(tmp_path, **extra):
    return write_job(str(tmp_path / "job.toml"), **{
        "name": "auth", "dataset": "blobs", "entry": "ringflow.jobs.mlp:build", "workers": 2,
        "mode": "allreduce", "steps": 20, "batch_size": 40, "seed": 5, "lr": 0.05,
        "commit_every": 2, **extra})


def test_the_rendezvous_store_and_a_closed_generation():
    import threading
    from datetime import timedelta

    from ringflow.service.kvstore import GenerationClosed, RendezvousSpaces, ServiceStore

    spaces = RendezvousSpaces()
    spaces.open("p")

    def call(op, payload=b"", **f):
        assert op == "kv"
        return spaces.serve(f["prefix"], f["action"], f["key"], payload, f.get("wait_s", 0),
                            bytes.fromhex(f.get("expected", "")))

    store = ServiceStore(call, job=1, generation=1, prefix="p", timeout_s=5, host="127.0.0.1")
    threading.Timer(0.3, lambda: store.set("k", b"v")).start()
    assert store.get("k") == b"v"                       # a get waits for the set
    assert store.add("n", 2) == 2 and store.add("n", 3) == 5
    assert store.compare_set("c", "", "x") == b"x" and store.compare_set("c", "y", "z") == b"x"
    assert store.check(["k", "n"]) and not store.check(["k", "none"])
    assert store.num_keys() == 3 and store.delete_key("c") and not store.check(["c"])
    with pytest.raises(TimeoutError, match="key.s. none did not appear within 0 s"):
        store.wait(["none"], timedelta(seconds=0.2))
    closed = []
    waiter = threading.Thread(target=lambda: closed.append(
        pytest.raises(GenerationClosed, store.get, "never")))
    waiter.start()
    time.sleep(0.2)
    spaces.close("p")            # the waiting get is answered at once, not after its timeout
    waiter.join(timeout=2)
    assert closed and not waiter.is_alive()


def test_the_rendezvous_needs_the_token_and_membership(tmp_path, monkeypatch):
    from ringflow.service.protocol import ServiceError, call, parse_address

    npz = blobs(str(tmp_path / "blobs.npz"))
    token = {"RINGFLOW_SERVICE_TOKEN": "elastic-test-secret"}
    monkeypatch.setenv("RINGFLOW_SERVICE_TOKEN", token["RINGFLOW_SERVICE_TOKEN"])
    with Service(str(tmp_path), workers=2, env=token,
                 worker_args=("--inject-delay-ms", "100")) as svc:
        svc.cli("data", "add", "blobs", npz)
        job_id = svc.submit(_job_file(tmp_path), via_cli=False)
        deadline = time.monotonic() + 120
        while svc.job(job_id)["step"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert svc.job(job_id)["state"] == "running", svc.logs()
        address = parse_address(svc.address)
        ask = dict(job=job_id, gen=1, prefix=f"job{job_id}/gen1/guess", action="get",
                   key="ringflow/token", wait_s=0)
        outsider = call(address, "register", host="outsider", pid=0)[0]["worker"]
        with pytest.raises(ServiceError, match="rendezvous refused: worker %d" % outsider):
            call(address, "kv", worker=outsider, **ask)
        with pytest.raises(ServiceError, match="rendezvous refused: worker 1"):  # a guessed prefix
            call(address, "kv", worker=1, **ask)
        with monkeypatch.context() as m:
            m.delenv("RINGFLOW_SERVICE_TOKEN")
            with pytest.raises(ServiceError, match="without RINGFLOW_SERVICE_TOKEN: refused"):
                call(address, "kv", worker=1, **ask)
        intruder = svc.add_worker(env={"RINGFLOW_SERVICE_TOKEN": ""})
        assert intruder.wait(timeout=120) != 0
        assert "without RINGFLOW_SERVICE_TOKEN: refused" in open(f"{tmp_path}/worker2.log").read()
        j = svc.wait_job(job_id, timeout=180)
        assert j["state"] == "done", (j, svc.logs())
        assert j["metrics"]["world"] == 2


def test_generations_confirm_commits_in_order_and_reform(tmp_path):
    """The master's side of an allreduce job in one process: forming, confirmation of a commit
    only once every rank reported its samples, a stale generation told to abandon, a bad state."""
    import io

    import numpy as np
    import torch

    from ringflow.service import jobspec
    from ringflow.service.arjob import AllreduceJob
    from ringflow.service.kvstore import RendezvousSpaces
    from ringflow.service.state import State

    state = State(str(tmp_path / "state"))
    spec = jobspec.check({"name": "t", "dataset": "d@1", "entry": "m:f", "workers": 2, "steps": 4,
                          "max_restarts": 1})
    job_id = state.add_job(spec)
    with state.tx() as db:
        for _ in range(2):
            db.execute("INSERT INTO workers (host, pid, last_seen, job_id) VALUES ('h', 0, ?, ?)",
                       (time.time(), job_id))
    rt = AllreduceJob(state.job(job_id), state, RendezvousSpaces(), str(tmp_path / "versions"))
    assert rt.join(2) == {"kind": "wait"}               # worker 1 is not there yet
    first = rt.join(1)
    assert first["rank"] == 1 and first["world"] == 2 and rt.join(2)["rank"] == 0
    prefix = first["prefix"]
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.arange(3.0)}, "optim": {"state": {}, "param_groups": []}}, buf)
    with pytest.raises(ValueError, match="only rank 0 sends its state"):
        rt.commit_state(1, {"prefix": prefix, "step": 2}, buf.getvalue())
    with pytest.raises(ValueError, match="not a torch save"):
        rt.commit_state(2, {"prefix": prefix, "step": 2}, b"junk")
    head = rt.commit_state(2, {"prefix": prefix, "step": 2, "cursor": {"step": 2}}, buf.getvalue())

    def report(worker, ids, **h):
        consumed = [[0, 0, len(ids) // 2], [1, 0, len(ids) - len(ids) // 2]]
        return rt.commit_report(worker, {"prefix": prefix, "step": 2, "head": head,
                                         "consumed": consumed, **h},
                                np.array(ids, dtype="<i8").tobytes())

    assert report(2, [5, 6, 7, 8]) is False
    assert rt.restore == (0, None)                      # rank 1 has not reported: unconfirmed
    assert report(1, [1, 2, 3, 4]) is False
    assert rt.restore == (2, head) and state.job(job_id)["head"] == head
    log = state.query("SELECT sample, step, part, worker FROM sample_log ORDER BY sample")
    assert [(r["sample"], r["step"], r["part"], r["worker"]) for r in log] == [
        (1, 0, 1, 1), (2, 0, 1, 1), (3, 1, 1, 1), (4, 1, 1, 1),
        (5, 0, 0, 2), (6, 0, 0, 2), (7, 1, 0, 2), (8, 1, 0, 2)]
    with pytest.raises(ValueError, match="3 sample ids, the header counts 4"):
        rt.commit_report(1, {"prefix": prefix, "step": 4, "consumed": [[2, 0, 4]]},
                         np.arange(3, dtype="<i8").tobytes())
    rt.abandoned(1, prefix, "PeerError: rank 0 closed its connection")   # the group broke
    assert rt.gen == 2 and rt.prefix != prefix
    assert report(2, [9]) is True                       # the old generation is told to abandon
    with pytest.raises(LookupError, match="rendezvous refused: worker 1"):
        rt.check_rendezvous(1, 1, prefix)
    assert rt.join(1) == {"kind": "wait"}
    assert rt.join(2)["restore_head"] == head and rt.join(1)["restore_step"] == 2
    with pytest.raises(ValueError, match=r"re-formed 1 times \(max_restarts = 1\)"):
        rt.abandoned(2, rt.prefix, "PeerError: again")
