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
    cuda = "compiled" if ringflow.build_info()["cuda"] else "not compiled"
    assert f"CUDA:                  {cuda}" in out.stdout
    # Whether a device is usable, not only what was built.
    assert "usable device" in out.stdout or "no device" in out.stdout or "not compiled" in out.stdout
    assert "NCCL:                  " in out.stdout
    assert "backend registered: yes" in out.stdout


def test_bare_command_prints_help():
    out = _run("-m", "ringflow.cli")
    assert out.returncode == 0 and "usage: ringflow" in out.stdout and "bench" in out.stdout


def test_user_errors_are_one_line_without_traceback():
    env = {k: v for k, v in os.environ.items() if k != "RINGFLOW_AGG_TOKEN"}
    for args in (["aggregator", "--port", "0", "--workers", "2", "--host", "0.0.0.0"], ["frobnicate"]):
        out = subprocess.run([sys.executable, "-m", "ringflow.cli", *args], capture_output=True,
                             text=True, timeout=60, env=env)
        assert out.returncode == 2, (args, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr
        assert [l for l in out.stderr.splitlines() if l.startswith("ringflow")][-1].startswith("ringflow")
        assert "error:" in out.stderr


def test_a_bad_log_level_names_the_variable():
    out = _run("-c", "import ringflow.config as c; c.log_config_once()", env={"RINGFLOW_LOG": "loud"})
    assert out.returncode != 0 and "RINGFLOW_LOG='loud' is not a log level" in out.stderr


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


def test_importing_ringflow_registers_the_backend_without_importing_torch_first():
    """`import ringflow` leaves torch's import (seconds) to whoever needs
    torch, and the backend is registered either way: by torch's entry point
    when torch is imported later, by ringflow itself when the hook is off or
    torch is already imported."""
    code = ("import sys, ringflow; before = 'torch' in sys.modules; "
            "import torch.distributed as dist; "
            "print(before, 'ringflow' in dist.Backend.backend_list, "
            "ringflow.hooks.__name__, ringflow.backend.__name__)")
    hooks_backend = "ringflow.hooks ringflow.backend"
    out = _run("-c", code)
    deferred = "False" if _entry_point_installed() else "True"
    assert out.returncode == 0 and out.stdout.split() == [deferred, "True", *hooks_backend.split()], \
        out.stdout + out.stderr
    off = _run("-c", code, env={"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"})
    assert off.returncode == 0 and off.stdout.split() == ["True", "True", *hooks_backend.split()], \
        off.stdout + off.stderr
    after = _run("-c", "import torch, ringflow, sys; print(sys.modules['ringflow.backend'].__name__)",
                 env={"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"})
    assert after.returncode == 0 and after.stdout.strip() == "ringflow.backend", after.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        __import__("ringflow").nope


def test_quick_start_example_trains_under_torchrun():
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "ddp_torchrun.py")
    out = _run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", example,
               timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("done: 2 ranks, final loss"), last
    assert float(last.rsplit(" ", 1)[1]) < 1.0, last


def test_bench_help_usage_and_the_training_pattern():
    out = _run("-m", "ringflow.cli", "bench", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: ringflow bench ["), out.stdout[:200]
    repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = subprocess.run([sys.executable, "-m", "ringflow.cli", "bench", "--world", "2", "--sizes", "4K",
                          "--compute-us", "200", "--iters", "20", "--warmup", "1", "--json", "--quiet",
                          "--backends", "ringflow,gloo"], capture_output=True, text=True, timeout=240,
                         cwd=repo)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    rows = json.loads(lines[-1])
    assert [r["backend"] for r in rows] == ["ringflow", "gloo"]
    assert all(r["wrong"] == 0 and r["p90_us"] >= r["p50_us"] > 0 for r in rows)
    verdict = [l for l in lines if l.startswith("# verdict: ringflow ")]
    assert verdict and "gloo's speed at p50" in verdict[0]
    git = [l for l in lines if l.startswith("#   git")]
    if subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True).returncode == 0:
        assert git and "unknown" not in git[0], git
