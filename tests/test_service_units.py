"""The training service's parts, in process: data repository, job files, distribution,
ordered collector, protocol token, and bad requests to a running master."""

from __future__ import annotations

import itertools
import json
import os
import socket
import time

import numpy as np
import pytest
import torch

from ringflow.service import jobspec
from ringflow.service.collector import OrderedCollector
from ringflow.service.datasets import Repository, load_arrays
from ringflow.service.distribution import Distribution
from ringflow.service.master import Master
from ringflow.service.protocol import Server, ServiceError, call
from ringflow.service.state import State


def records():
    """A generator source: 50 records, x = [i, i*i], y = i % 3."""
    for i in range(50):
        yield {"x": [float(i), float(i * i)], "y": i % 3}


def drop_odd(rec):
    """Annotation hook: rejects odd x[0], labels the rest with y = x[0] // 10."""
    if int(rec["x"][0]) % 2:
        return None
    return {"x": rec["x"], "y": int(rec["x"][0]) // 10}


@pytest.fixture
def repo(tmp_path):
    return Repository(State(str(tmp_path / "state")))


def test_npz_ingest_roundtrips_and_versions_are_immutable(repo, tmp_path, monkeypatch):
    import ringflow.service.datasets as ds

    monkeypatch.setattr(ds, "SHARD_BYTES", 1000)   # several shards
    x = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    y = np.arange(300) % 5
    np.savez(tmp_path / "d.npz", x=x, y=y)
    m = repo.add("d", str(tmp_path / "d.npz"))
    assert m["version"] == 1 and m["records"] == 300 and len(m["shards"]) > 1
    assert m["schema"] == {"x": {"dtype": "float32", "shape": [4]}, "y": {"dtype": "int64", "shape": []}}
    got = load_arrays(repo.directory(m), m)
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["y"], y)
    np.savez(tmp_path / "d.npz", x=x[:10], y=y[:10])
    assert repo.add("d", str(tmp_path / "d.npz"))["version"] == 2
    assert repo.manifest("d@1")["records"] == 300 and repo.manifest("d")["records"] == 10
    assert repo.verify("d@1") == []
    assert [d["version"] for d in repo.list()] == [1, 2]
    assert repo.remove("d@1") == [1]
    with pytest.raises(LookupError, match="unknown dataset 'd@1'"):
        repo.manifest("d@1")


def test_csv_jsonl_generator_and_annotation_hook(repo, tmp_path):
    with open(tmp_path / "d.csv", "w") as f:
        f.write("a,b,y\n" + "".join(f"{i},{2 * i},{i % 2}\n" for i in range(20)))
    m = repo.add("c", str(tmp_path / "d.csv"))
    d = load_arrays(repo.directory(m), m)
    np.testing.assert_array_equal(d["x"], np.array([[i, 2 * i] for i in range(20)], np.float32))
    np.testing.assert_array_equal(d["y"], np.arange(20) % 2)
    with open(tmp_path / "d.jsonl", "w") as f:
        f.write("".join(json.dumps({"x": [i, -i], "y": i}) + "\n" for i in range(7)))
    m = repo.add("j", str(tmp_path / "d.jsonl"))
    assert load_arrays(repo.directory(m), m)["x"].tolist() == [[i, -i] for i in range(7)]
    m = repo.add("g", "test_service_units:records", annotate="test_service_units:drop_odd")
    assert (m["read"], m["records"], m["rejected"]) == (50, 25, 25)
    d = load_arrays(repo.directory(m), m)
    assert d["x"][:, 0].tolist() == [float(i) for i in range(0, 50, 2)]
    assert d["y"].tolist() == [i // 10 for i in range(0, 50, 2)]


def test_bad_sources_and_tampered_shards_are_named(repo, tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        repo.add("x", str(tmp_path / "missing.npz"))
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match="unknown format .txt"):
        repo.add("x", str(tmp_path / "d.txt"))
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(ValueError, match="share their first"):
        repo.add("x", str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="annotation hook 'nope:fn'"):
        repo.add("x", "test_service_units:records", annotate="nope:fn")
    np.savez(tmp_path / "ok.npz", x=np.ones((8, 2), np.float32), y=np.arange(8))
    m = repo.add("t", str(tmp_path / "ok.npz"))
    path = os.path.join(repo.directory(m), m["shards"][0]["files"][0])
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x7f")
    problems = repo.verify("t")
    assert len(problems) == 1 and "shard 0" in problems[0] and "does not match" in problems[0]
    with pytest.raises(ValueError, match="shard 0 .* does not match"):
        load_arrays(repo.directory(m), m)


def test_job_files_are_checked():
    ok = 'name = "a"\ndataset = "d"\nentry = "m:f"\n'
    spec = jobspec.parse(ok)
    assert spec["mode"] == "allreduce" and spec["micro_batches"] == spec["workers"] == 1
    for text, what in [("name = ", "not valid TOML"), ('dataset = "d"\nentry = "m:f"', "missing required key 'name'"),
                       (ok + "mode = 'gossip'", "mode = 'gossip'"), (ok + "steps = 0", "steps = 0"),
                       (ok + "colour = 1", "unknown key"), (ok + 'lr = "fast"', "lr = 'fast' must be float"),
                       (ok + "max_restarts = -1", "max_restarts >= 0")]:
        with pytest.raises(ValueError, match=what):
            jobspec.parse(text)


def test_distribution_uses_every_sample_once_per_epoch_and_is_deterministic():
    d = Distribution(samples=103, batch_size=10, seed=7, parts=4)
    assert d.steps_per_epoch == 11
    for epoch in range(2):
        seen = []
        for step in range(epoch * 11, (epoch + 1) * 11):
            calcs = d.calculations(step)
            assert abs(sum(w for _, _, w in calcs) - 1) < 1e-12
            assert all(e == epoch for e, _, _ in calcs)
            seen += [int(i) for _, ids, _ in calcs for i in ids]
        assert sorted(seen) == list(range(103))
    again = Distribution(samples=103, batch_size=10, seed=7, parts=4)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(d.calculations(15), again.calculations(15)))
    assert not np.array_equal(d.permutation(0), d.permutation(1))


def test_ordered_collector_is_bit_identical_whatever_the_arrival_order():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(1000, generator=g) * 10 ** k for k in range(-3, 4)]
    expected = grads[0].clone()
    for t in grads[1:]:
        expected += t
    orders = [list(p) for p in itertools.islice(itertools.permutations(range(len(grads))), 0, 5040, 97)]
    for order in orders:
        c = OrderedCollector(len(grads), 1000, torch.float32)
        done = [c.add(k, grads[k]) for k in order]
        assert done[-1] and not any(done[:-1])
        assert torch.equal(c.sum, expected)
    c = OrderedCollector(2, 1000, torch.float32)
    with pytest.raises(ValueError, match=r"float64\[1000\]; the model needs float32\[1000\]"):
        c.add(0, grads[0].double())
    with pytest.raises(ValueError, match=r"float32\[999\]"):
        c.add(0, grads[0][:999])
    with pytest.raises(ValueError, match="part 5"):
        c.add(5, grads[0])
    c.add(1, grads[1])
    with pytest.raises(ValueError, match="a second gradient for part 1"):
        c.add(1, grads[1])


def _own_address() -> str:
    from ringflow.addresses import route_source

    for target in ("10.255.255.1", "8.8.8.8"):
        addr = route_source(target)
        if addr and not addr.startswith("127."):
            return addr
    pytest.skip("no non-loopback address on this host")


def test_token_is_required_beyond_loopback(monkeypatch):
    monkeypatch.delenv("RINGFLOW_SERVICE_TOKEN", raising=False)
    with pytest.raises(ValueError, match="RINGFLOW_SERVICE_TOKEN"):
        Server(lambda h, p, peer: ({}, b""), host="0.0.0.0")
    server = Server(lambda h, p, peer: ({"peer": peer}, p), host="0.0.0.0", token="s3cret").start()
    try:
        addr = (_own_address(), server.port)
        with pytest.raises(ServiceError, match="without RINGFLOW_SERVICE_TOKEN: refused"):
            call(addr, "ping")
        monkeypatch.setenv("RINGFLOW_SERVICE_TOKEN", "wrong")
        with pytest.raises(ServiceError, match="with a wrong RINGFLOW_SERVICE_TOKEN"):
            call(addr, "ping")
        monkeypatch.setenv("RINGFLOW_SERVICE_TOKEN", "s3cret")
        reply, data = call(addr, "ping", b"abc")
        assert reply["peer"] == addr[0] and data == b"abc"
        # a malformed frame gets an error reply; the server goes on serving
        with socket.create_connection(addr, timeout=10) as s:
            s.sendall(b"\x00\x00\x00\x05hello")
            s.shutdown(socket.SHUT_WR)
            assert b"malformed request" in s.recv(4096)
        assert call(addr, "ping")[0]["ok"]
    finally:
        server.close()


def _wait(pred, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_bad_requests_fail_clearly_and_the_master_keeps_serving(tmp_path, monkeypatch):
    monkeypatch.delenv("RINGFLOW_SERVICE_TOKEN", raising=False)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32),
             y=np.arange(40) % 2)
    m = Master(str(tmp_path / "state")).start()
    a = ("127.0.0.1", m.port)
    try:
        call(a, "data_add", name="d", source=str(tmp_path / "d.npz"))
        spec = jobspec.check({"name": "p", "dataset": "d", "entry": "ringflow.jobs.mlp:build",
                              "mode": "ps", "workers": 1, "steps": 3, "batch_size": 10})
        with pytest.raises(ServiceError, match="unknown dataset 'nope'"):
            call(a, "submit", spec={**spec, "dataset": "nope"})
        with pytest.raises(ServiceError, match="unknown key"):
            call(a, "submit", spec={**spec, "colour": 1})
        with pytest.raises(ServiceError, match="unknown request 'fly'"):
            call(a, "fly")
        # a worker that sends a float64 gradient: the job fails naming it
        wid = call(a, "register", host="rogue", pid=1)[0]["worker"]
        job = call(a, "submit", spec=spec)[0]["job"]
        task = _wait(lambda: (t := call(a, "next", worker=wid)[0])["kind"] == "calc" and t)
        n = sum(p.numel() for p in __import__("ringflow.jobs.mlp", fromlist=["x"]).build(
            data={"x": np.zeros((40, 3)), "y": np.arange(40) % 2}).model.parameters())
        with pytest.raises(ServiceError, match=rf"dtype float64\[{n}\]|float64\[{n}\]; the model needs float32"):
            call(a, "grad", np.zeros(n).tobytes(), worker=wid, job=job, step=task["step"],
                 part=task["part"], lease=task["lease"], dtype="float64", shape=[n], loss=0.0)
        j = call(a, "job", job=job)[0]["job"]
        assert j["state"] == "failed" and "worker" in j["error"] and "float64" in j["error"]
        # a wrong shape, on a second job
        job2 = call(a, "submit", spec=spec)[0]["job"]
        task = _wait(lambda: (t := call(a, "next", worker=wid)[0])["kind"] == "calc" and t)
        with pytest.raises(ServiceError, match=rf"float32\[7\]; the model needs float32\[{n}\]"):
            call(a, "grad", np.zeros(7, np.float32).tobytes(), worker=wid, job=job2,
                 step=task["step"], part=task["part"], lease=task["lease"], dtype="float32",
                 shape=[7], loss=0.0)
        assert call(a, "job", job=job2)[0]["job"]["state"] == "failed"
        # a shard whose hash no longer matches: the job fails naming the shard
        man = call(a, "data_show", dataset="d")[0]["manifest"]
        shard = tmp_path / "state" / "datasets" / "d" / "v1" / man["shards"][0]["files"][0]
        shard.write_bytes(shard.read_bytes()[:-1] + b"\x01")
        call(a, "register", host="fresh", pid=2)     # the rogue has stopped heartbeating by now
        job3 = call(a, "submit", spec=spec)[0]["job"]
        j = _wait(lambda: (j := call(a, "job", job=job3)[0]["job"])["state"] == "failed" and j)
        assert "shard 0" in j["error"] and "does not match" in j["error"]
        assert call(a, "ping")[0]["ok"]
    finally:
        m.close()
