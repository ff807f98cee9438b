"""The installed surface: `ringflow info`, `ringflow bench --json`, and the
torch.backends entry point that registers the backend without an import."""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest


def _run(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_info_reports_the_build():
    import ringflow

    out = _run("-m", "ringflow.cli", "info")
    assert out.returncode == 0, out.stderr
    assert f"ringflow {ringflow.__version__}" in out.stdout
    cuda = "yes" if ringflow.build_info()["cuda"] else "no"
    assert f"CUDA kernels compiled: {cuda}" in out.stdout
    assert "backend registered: yes" in out.stdout


def test_bench_json_rows_are_correct():
    out = _run("-m", "ringflow.cli", "bench", "--world", "2", "--sizes", "4K,256K,16M", "--iters", "3",
               "--warmup", "1", "--json", "--backends", "ringflow,ringflow-shared,gloo")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["backend"] for r in rows] == ["ringflow", "ringflow-shared", "gloo"] * 3
    for r in rows:
        assert {"backend", "world", "bytes", "p50_us", "algbw", "busbw", "wrong"} <= set(r)
        assert r["wrong"] == 0 and r["p50_us"] > 0 and r["world"] == 2
        # Only large rows are set against the memory bound measured in the run.
        # How close they come is a measurement (bench/RESULTS.md), not a test.
        if r["bytes"] >= 16 << 20:
            assert r["of_bound"] > 0 and r["bound_busbw"] > 0, r
        else:
            assert "of_bound" not in r, r
    memory = [line for line in out.stdout.splitlines() if line.startswith("#   memory")]
    assert len(memory) == 1 and "GB/s before 16M" in memory[0], memory


def _entry_point_installed():
    return any(ep.name == "ringflow" for ep in importlib.metadata.entry_points(group="torch.backends"))


@pytest.mark.skipif(not _entry_point_installed(),
                    reason="ringflow is not pip-installed here, so torch has no entry point to call")
def test_torch_import_registers_backend_without_importing_ringflow():
    code = ("import sys, torch.distributed as dist; "
            "print('ringflow' in dist.Backend.backend_list)")
    out = _run("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    # The hook can be switched off, and then nothing registers.
    off = _run("-c", code, env={"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"})
    assert off.stdout.strip() == "False"
