"""`ringflow tune` (spawning local ranks), its cache, `--show`, `--export`,
and RINGFLOW_TUNE=1 at init (cache hit, same schedule on every rank)."""

import csv
import json
import os
import subprocess
import sys

from worlds import init_torch, live_communicator, run_world


def ringflow_cmd(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "ringflow.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_tune_show_export(tmp_path):
    cache = str(tmp_path / "tune.json")
    r = ringflow_cmd("tune", "--ranks", "2", "--cache", cache, "--confirm-bytes", str(1 << 20),
                     "--time-bound", "10")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tuned: topology" in r.stdout
    data = json.load(open(cache))
    assert len(data) == 1
    (key, entry), = data.items()
    assert entry["world"] == 2 and len(entry["candidates"]) >= 1
    for c in entry["candidates"]:
        assert c["predicted_s"] > 0 and c["measured_s"] > 0
    assert entry["measurement"]["complete"]
    # A second run finds it in the cache.
    r = ringflow_cmd("tune", "--ranks", "2", "--cache", cache)
    assert r.returncode == 0 and "cached: topology " + key in r.stdout, r.stderr[-3000:]
    r = ringflow_cmd("tune", "--show", "--cache", cache)
    assert r.returncode == 0 and key in r.stdout and "measured" in r.stdout
    out = tmp_path / "tuner.csv"
    r = ringflow_cmd("tune", "--export", str(out), "--cache", cache)
    assert r.returncode == 0, r.stderr
    rows = [row for row in csv.reader(l for l in open(out) if not l.startswith("#"))]
    assert rows and all(len(row) == 10 and row[0] == "allreduce" for row in rows)
    assert int(rows[0][1]) == 0 and int(rows[-1][2]) == 2 ** 63 - 1
    for a, b in zip(rows, rows[1:]):
        assert int(b[1]) == int(a[2]) + 1  # the size ranges tile the line
    want = ["auto"] if entry["pattern"] is None else [a for _, a in entry["pattern"]["algorithms"]]
    assert [row[3] for row in rows] == want


def test_bad_cache_is_named(tmp_path):
    bad = tmp_path / "tune.json"
    bad.write_text("[1, 2")
    r = ringflow_cmd("tune", "--show", "--cache", str(bad))
    assert r.returncode == 2 and "unreadable" in r.stderr


def tuned_at_init(rank, size):
    import torch

    from ringflow import _C
    from ringflow.tune import tune_or_load

    dist = init_torch(rank, size)
    owner = live_communicator()
    x = torch.arange(300_001, dtype=torch.float32) * (rank + 1)
    dist.all_reduce(x)
    right = bool(torch.equal(x, torch.arange(300_001, dtype=torch.float32) * sum(range(1, size + 1))))
    entry, hit = tune_or_load(owner)  # what init did, once more: from the cache now
    return right, hit, entry["pattern"], _C.has_schedule(owner.comm)


def test_tune_at_init_then_cache_hit(tmp_path):
    env = {"RINGFLOW_TUNE": "1", "RINGFLOW_TUNE_CACHE": str(tmp_path / "tune.json")}
    for _ in range(2):  # the first world tunes and stores; the second reads the cache
        results = run_world(3, tuned_at_init, env=env, timeout=300)
        patterns = {json.dumps(p) for _, _, p, _ in results}
        assert len(patterns) == 1  # rank 0 decided for everyone
        for right, hit, pattern, has in results:
            assert right and hit
            assert has == (pattern is not None)
    assert len(json.load(open(tmp_path / "tune.json"))) == 1
