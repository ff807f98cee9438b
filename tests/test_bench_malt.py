"""bench/malt.py's JSON line, the interface acceptance checks read: keys for
every mode (a tiny run: 2 ranks, one epoch), and the per-seed summary."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "malt.py"


def test_the_json_line_holds_every_mode():
    cmd = [sys.executable, str(BENCH), "--world", "2", "--epochs", "1", "--step-ms", "5",
           "--merge-mib", "1", "--merge-reps", "1", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["seeds"] == [0]
    for mode in ("sync", "malt", "postlocal"):
        assert f"{mode}_s" in out  # None: one epoch does not reach the reference accuracy
        assert 0.1 < out[f"{mode}_acc"] <= 1.0, out[f"{mode}_acc"]
        assert f"{mode}_acc_by_seed" not in out  # one seed: no summary
    assert out["merge_gbps"] > 0


def test_several_seeds_give_each_mode_its_accuracies_and_their_mean(capsys):
    spec = importlib.util.spec_from_file_location("bench_malt", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    by_seed = {"malt": [(0.97, 5.0), (0.98, None)], "sync": [(0.981, 14.6), (0.967, 12.4)]}
    out = {}
    bench._summarise_seeds([0, 1], by_seed, out)
    assert out["malt_acc_by_seed"] == [0.97, 0.98] and out["malt_s_by_seed"] == [5.0, None]
    assert out["sync_acc_over_seeds"] == statistics.mean([0.981, 0.967])
    assert out["malt_speedup_by_seed"] == [14.6 / 5.0, None]
    printed = capsys.readouterr().out
    # Compared with sync's mean even when sync ran after it.
    assert f"{100 * (0.975 - 0.974):+.1f} pp vs sync; time to accuracy vs sync: 2.92x -" in printed, printed
