"""ringflow.versions.Store: bit-identical checkouts, diff against numpy, dedup on disk,
refs and rollback, corruption caught, crash safety under SIGKILL, background commits."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ringflow.versions import (BackgroundCommitter, CorruptObjectError, MissingObjectError, Store,
                               StoreError)


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(17, 5, generator=g), "b": torch.randn(5, generator=g).double(),
                  "h": torch.randn(3, 4, generator=g).to(torch.bfloat16),
                  "half": torch.randn(6, generator=g).half()},
        "optim": {"state": {0: {"step": torch.tensor(3.0), "m": torch.randn(4, generator=g)}},
                  "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0]}]},
        "ints": torch.randint(-5, 5, (9,), generator=g), "mask": torch.rand(7, generator=g) > 0.5,
        "empty": torch.empty(0, 3), "scalar": torch.tensor(-0.0),
        "nan": torch.tensor([float("nan"), float("inf"), 1.0]),
        "strided": torch.arange(20.0).reshape(4, 5).t(),
    }


def _assert_same(a, b, path="state"):
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert _bytes(a) == _bytes(b), f"{path} differs"
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_checkout_is_bit_identical(tmp_path):
    s = Store(tmp_path / "st")
    states = [_state(i) for i in range(3)]
    ids = [s.commit(st, step=i, metrics={"loss": 1.0 / (i + 1)}, message=f"c{i}")
           for i, st in enumerate(states)]
    for cid, st in zip(ids, states):
        _assert_same(st, Store(tmp_path / "st").checkout(cid))
    m = torch.nn.GRU(4, 8)
    cid = s.commit(m, step=9)
    back = s.checkout(cid)
    assert list(back) == list(m.state_dict())
    for k, v in m.state_dict().items():
        assert _bytes(v) == _bytes(back[k])
    assert s.resolve("HEAD") == cid and s.resolve(cid[:8]) == cid
    assert s.resolve("HEAD~") == ids[2] and s.resolve("main~3") == ids[0]
    with pytest.raises(StoreError, match="has only 3 ancestor"):
        s.resolve("HEAD~4")
    assert [e["id"] for e in s.log()] == [cid] + ids[::-1]
    assert s.fsck() == []


def test_diff_equals_numpy(tmp_path):
    s = Store(tmp_path / "st")
    a, b = _state(0), _state(0)
    b["model"]["w"] = b["model"]["w"] + torch.linspace(-0.5, 2.0, 85).reshape(17, 5)
    b["model"]["b"][3] = 7.0
    ca = s.commit(a, step=1, metrics={"loss": 2.5, "acc": 0.5})
    cb = s.commit(b, step=2, metrics={"loss": 1.25, "acc": 0.75})
    d = s.diff(ca, cb)
    for name, x, y in (("model/w", a["model"]["w"], b["model"]["w"]),
                       ("model/b", a["model"]["b"], b["model"]["b"])):
        xa, ya = x.numpy().astype(np.float64), y.numpy().astype(np.float64)
        t = d["tensors"][name]
        assert t["changed"]
        assert t["max_abs"] == np.abs(ya - xa).max()
        assert t["rel_l2"] == pytest.approx(np.linalg.norm(ya - xa) / np.linalg.norm(xa), rel=1e-12)
    assert d["tensors"]["model/h"] == {"changed": False, "max_abs": 0.0, "rel_l2": 0.0}
    assert d["metrics"]["loss"]["delta"] == -1.25 and d["metrics"]["acc"]["delta"] == 0.25


def _disk_bytes(root) -> int:
    return sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(root) for f in fs
               if dp.startswith(os.path.join(root, "objects")) or dp.startswith(os.path.join(root, "commits")))


def test_dedup_writes_only_changed_tensors(tmp_path):
    root = str(tmp_path / "st")
    s = Store(root)
    g = torch.Generator().manual_seed(1)
    state = {f"layer{i}.weight": torch.randn(128, 128, generator=g) for i in range(20)}
    before = _disk_bytes(root)
    s.commit(state, step=0)
    full = _disk_bytes(root) - before
    for i in (3, 11):  # 10% of the tensors change
        state[f"layer{i}.weight"] = state[f"layer{i}.weight"] * 1.01
    mid = _disk_bytes(root)
    s.commit(state, step=1)
    incremental = _disk_bytes(root) - mid
    assert full > 20 * 128 * 128 * 4
    assert incremental <= 0.12 * full, (incremental, full)
    assert s.fsck() == []


def test_rollback_keeps_the_abandoned_line_and_tags(tmp_path):
    s = Store(tmp_path / "st")
    c = [s.commit({"x": torch.full((3,), float(i))}, step=i, message=f"m{i}") for i in range(4)]
    s.tag("best", c[1])
    e = s.rollback("best", reason="loss blew up", step=3)
    assert s.resolve("HEAD") == c[1] and e["from"] == c[3] and e["saved_as"]
    assert s.resolve(e["saved_as"]) == c[3]
    log = s.log()
    assert [x["id"] for x in log] == [c[1], c[0]]
    assert log[0]["rollbacks"][0]["reason"] == "loss blew up"
    c4 = s.commit({"x": torch.zeros(3)}, step=4)
    assert s.log()[0]["parent"] == c[1] and s.log()[0]["id"] == c4
    assert s.gc()["commits"] == 0  # the abandoned line is still reachable
    assert torch.equal(s.checkout(c[3])["x"], torch.full((3,), 3.0))


def test_bad_input_is_named(tmp_path):
    s = Store(tmp_path / "st")
    with pytest.raises(StoreError, match=r"'model/f'.*function"):
        s.commit({"model": {"f": print}}, step=0)
    with pytest.raises(StoreError, match="step must be an int"):
        s.commit({"x": torch.zeros(1)}, step="3")
    with pytest.raises(StoreError, match="no commits yet"):
        s.checkout()
    s.commit({"x": torch.zeros(1)}, step=0)
    with pytest.raises(StoreError, match="no commit, branch or tag named 'nope'"):
        s.checkout("nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "f").write_text("x")
    with pytest.raises(StoreError, match="not empty, and is not a version store"):
        Store(tmp_path / "other")


def test_corruption_is_reported_and_refused(tmp_path):
    s = Store(tmp_path / "st")
    cid = s.commit({"a": torch.arange(1000.0), "b": torch.ones(10)}, step=1)
    oid = s.read_commit(cid).manifest["a"]
    p = s.objects.path(oid)
    data = bytearray(open(p, "rb").read())
    data[-100] ^= 0x10
    os.chmod(p, 0o644)
    open(p, "wb").write(bytes(data))
    with pytest.raises(CorruptObjectError, match=f"object {oid} is corrupt"):
        s.checkout(cid)
    problems = s.fsck()
    assert len(problems) == 1 and oid in problems[0]
    open(p, "wb").write(bytes(data[:200]))  # truncated object
    with pytest.raises(CorruptObjectError, match=f"object {oid} is truncated"):
        s.checkout(cid)
    os.unlink(p)
    with pytest.raises(MissingObjectError, match=oid):
        s.checkout(cid)
    assert any(oid in x and "missing" in x for x in s.fsck())

    s2 = Store(tmp_path / "st2")
    cid2 = s2.commit({"a": torch.ones(4)}, step=1)
    cp = s2.commits.path(cid2)
    raw = open(cp, "rb").read()
    open(cp, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(CorruptObjectError, match=f"commit {cid2} is corrupt or truncated"):
        s2.checkout(cid2)
    assert any(cid2 in x for x in s2.fsck())


def _commit_forever(root, conn):
    # A child that commits small, changing states as fast as it can; killed at random.
    torch.set_num_threads(1)
    s = Store(root)
    g = torch.Generator().manual_seed(os.getpid())
    state = {f"t{i}": torch.randn(256, generator=g) for i in range(6)}
    step = 0
    while True:
        state[f"t{step % 6}"] = torch.randn(256 + step % 3, generator=g)
        cid = s.commit(state, step=step, metrics={"i": step})
        conn.send(cid)
        step += 1


def test_sigkill_at_random_instants_leaves_a_clean_store(tmp_path):
    root = str(tmp_path / "st")
    Store(root)
    ctx = mp.get_context("fork")
    rnd = random.Random(15)
    durable = []
    kills = 0
    while kills < 60:
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_commit_forever, args=(root, send), daemon=True)
        p.start()
        send.close()
        assert recv.poll(30), "the committing child never finished a commit"
        durable.append(recv.recv())
        time.sleep(rnd.uniform(0, 0.03))
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        kills += 1
        while recv.poll():
            try:
                durable.append(recv.recv())
            except EOFError:
                break
        s = Store(root)
        head = s.resolve("HEAD")
        chain = [e["id"] for e in s.log()]
        assert chain[0] == head
        # A commit whose id was returned is durable: HEAD is it or a descendant.
        assert durable[-1] in chain
        s.checkout(head)  # complete and verified
    s = Store(root)
    assert s.fsck() == []
    s.gc()
    assert s.fsck() == []
    assert not [f for dp, _, fs in os.walk(root) for f in fs if ".tmp-" in f]
    assert len(s.log()) >= 60


@pytest.mark.parametrize("snapshot", ["copy", "fork"])
def test_background_commit_snapshots_then_writes(tmp_path, snapshot):
    s = Store(tmp_path / "st")
    w = BackgroundCommitter(s, snapshot=snapshot)
    x = {"w": torch.zeros(1000)}
    futs = []
    for i in range(5):
        futs.append(w.submit(x, step=i, metrics={"i": i}, message=f"bg {i}"))
        x["w"].add_(1.0)  # the loop goes on changing its tensors at once
    w.close()
    ids = [f.result() for f in futs]
    for i, cid in enumerate(ids):
        assert torch.equal(s.checkout(cid)["w"], torch.full((1000,), float(i)))
    assert [e["id"] for e in s.log()] == ids[::-1]


def _hold_lock(store: Store):
    import fcntl

    fd = os.open(os.path.join(store.path, "lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_forked_commit_failures_reach_the_loop(tmp_path):
    """A commit process that fails, or dies, fails its Future with a StoreError
    naming what happened; the committer and the store go on working."""
    import threading

    s = Store(tmp_path / "st")
    w = BackgroundCommitter(s, snapshot="fork")
    bad = w.submit({"w": torch.ones(3)}, step=0, metrics={"loss": object()})
    with pytest.raises(StoreError, match="commit failed in the commit process: StoreError: .*loss"):
        bad.result(timeout=60)
    fd = _hold_lock(s)  # the next child waits for the store's lock: kill it there
    fut = w.submit({"w": torch.ones(3)}, step=1)
    child = next(int(t.name.rsplit("-", 1)[1]) for t in threading.enumerate()
                 if t.name.startswith("ringflow-commit-"))
    os.kill(child, signal.SIGKILL)
    with pytest.raises(StoreError, match=rf"commit process {child} died \(signal 9\)"):
        fut.result(timeout=60)
    os.close(fd)
    cid = w.submit({"w": torch.full((3,), 2.0)}, step=2).result(timeout=60)
    w.close()
    assert [e["id"] for e in s.log()] == [cid] and s.fsck() == []


def test_a_held_store_lock_times_out_with_its_name(tmp_path):
    s = Store(tmp_path / "st", lock_timeout_s=0.3)
    fd = _hold_lock(s)
    with pytest.raises(StoreError, match=r"another writer held .*lock for over 0.3 s"):
        s.commit({"w": torch.ones(2)}, step=0)
    os.close(fd)
    s.commit({"w": torch.ones(2)}, step=0)


def test_overlapped_snapshot_commits_each_state_the_optimizer_left(tmp_path):
    """snapshot="overlap": the copy runs beside the next forward/backward; the
    attached optimizer waits for it, so every commit equals the model (and the
    optimizer state) as they were at its submit, checked against clones taken then."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    s = Store(tmp_path / "st")
    w = BackgroundCommitter(s, snapshot="overlap")
    w.attach(opt)
    expected, futs = [], []
    for step in range(12):
        x, y = torch.randn(32, 64), torch.randint(0, 4, (32,))
        loss = torch.nn.functional.cross_entropy(model(x), y)  # updates BatchNorm's buffers in place
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 3 == 0:
            state = {"model": model, "optim": opt.state_dict()}
            futs.append(w.submit(state, step=step))
            expected.append({k: v.clone() for k, v in model.state_dict().items()})
            expected[-1]["exp_avg"] = opt.state[model[0].weight]["exp_avg"].clone()
    w.close()
    for want, fut in zip(expected, futs):
        got = s.checkout(fut.result())
        for k, v in got["model"].items():
            assert torch.equal(v, want[k]), k
        assert torch.equal(got["optim"]["state"][0]["exp_avg"], want["exp_avg"])


def test_overlapped_snapshot_refuses_a_state_written_during_its_copy(tmp_path):
    """A loop that writes the state without waiting for the copy gets a
    StoreError naming the tensor, never a torn commit; the next commit works."""
    s = Store(tmp_path / "st")
    w = BackgroundCommitter(s, snapshot="overlap")
    x = {"big": torch.zeros(1 << 25), "w": torch.zeros(8)}  # 128 MiB: a copy of tens of ms
    fut = w.submit(x, step=0)
    x["w"].add_(1.0)   # no wait_snapshot(): written while (or before) the copy runs
    with pytest.raises(StoreError, match="tensor 'w' was written while its snapshot was being copied"):
        fut.result(timeout=60)
    fut = w.submit(x, step=1)
    w.wait_snapshot()
    x["w"].add_(1.0)
    cid = fut.result(timeout=60)
    with pytest.raises(StoreError, match="tensor 'w'"):  # flush reports the failed commit
        w.close()
    assert torch.equal(s.checkout(cid)["w"], torch.ones(8)) and s.fsck() == []


def test_an_unknown_snapshot_kind_is_named(tmp_path):
    with pytest.raises(ValueError, match="snapshot must be one of copy, fork, overlap"):
        BackgroundCommitter(Store(tmp_path / "st"), snapshot="cow")


def _cli(capsys, *args):
    # In-process (importing torch per call costs seconds); one test runs the real command.
    from ringflow.cli import main

    capsys.readouterr()
    rc = main(["versions", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def test_cli_log_json_diff_fsck(tmp_path, capsys):
    root = str(tmp_path / "st")
    s = Store(root)
    a = s.commit({"x": torch.arange(5.0)}, step=1, metrics={"loss": 3.0}, message="one")
    b = s.commit({"x": torch.arange(5.0) * 2}, step=2, metrics={"loss": 2.0}, message="two")
    r = subprocess.run([sys.executable, "-m", "ringflow.cli", "versions", "--store", root, "log",
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    log = json.loads(r.stdout)
    assert [e["id"] for e in log] == [b, a]
    for e in log:
        assert {"id", "parent", "step", "metrics", "message"} <= set(e)
    assert log[0]["parent"] == a and log[1]["metrics"] == {"loss": 3.0}
    r = _cli(capsys, "--store", root, "diff", a, b)
    assert r.returncode == 0 and "x" in r.stdout and "-1" in r.stdout, r.stdout + r.stderr
    assert _cli(capsys, "--store", root, "tag", "v1", a).returncode == 0
    r = _cli(capsys, "--store", root, "rollback", "v1")
    assert r.returncode == 0 and Store(root).resolve("HEAD") == a, r.stderr
    assert "ROLLBACK" in _cli(capsys, "--store", root, "log").stdout
    assert _cli(capsys, "--store", root, "fsck").returncode == 0
    oid = s.read_commit(b).manifest["x"]
    with open(s.objects.path(oid), "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x7f")
    r = _cli(capsys, "--store", root, "fsck")
    assert r.returncode == 1 and oid in r.stdout
    r = _cli(capsys, "--store", root, "checkout", b)
    assert r.returncode == 2 and oid in r.stderr
    r = _cli(capsys, "--store", str(tmp_path / "nothing"), "log")
    assert r.returncode == 2 and "not a ringflow version store" in r.stderr


def test_gc_removes_only_unreachable_objects_and_stray_temporaries(tmp_path):
    s = Store(tmp_path / "st")
    keep = s.commit({"a": torch.ones(100)}, step=0)
    info, data = s.objects.hash_tensor(torch.full((100,), 5.0))  # an object no commit names
    s.objects.publish(s.objects.write(info, data), info.oid)
    stray = s.objects.path(keep and s.read_commit(keep).manifest["a"]) + ".tmp-1-deadbeef"
    open(stray, "wb").write(b"half a tensor")
    assert s.fsck() == []  # a stray temporary (a crash mid-commit) is not a problem
    removed = s.gc()
    assert removed["objects"] == 1 and removed["tmp_files"] == 1
    assert not os.path.exists(s.objects.path(info.oid)) and not os.path.exists(stray)
    assert torch.equal(s.checkout(keep)["a"], torch.ones(100)) and s.fsck() == []


def test_guard_flags_nan_and_spikes_against_its_moving_average():
    from ringflow.versions.guard import DivergenceGuard, GuardConfig

    g = DivergenceGuard(GuardConfig(spike_factor=3.0, ema_decay=0.5, warmup=2), world_size=1)
    assert g.check(float("nan"), 1.0).diverged and g.check(1.0, float("inf")).diverged
    ema = None
    for loss in (2.0, 1.0, 1.5):
        v = g.check(loss, 1.0)
        assert not v.diverged and v.mean_loss == loss
        g.accept(v.mean_loss)
        ema = loss if ema is None else 0.5 * ema + 0.5 * loss
    assert g.ema == ema
    assert not g.check(3 * ema - 1e-9, 1.0).diverged
    v = g.check(3 * ema + 1e-6, 1.0)
    assert v.diverged and "loss spike" in v.reason
    for bad in ({"skip": "all"}, {"spike_factor": 1.0}, {"max_rollbacks": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GuardConfig(**bad)
