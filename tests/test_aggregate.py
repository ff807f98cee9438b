"""Allreduce through the packet aggregator (RINGFLOW_ALGO=aggregate), through
torch.distributed, against an independent numpy model: sums bit-exact,
within the quantisation bound of float64, exact under injected loss,
duplication and reordering, and every rank failing clearly when the
aggregator dies or the ranks disagree."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import ringflow
from aggregate_reference import aggregated_sum, error_bound, worker_input
from test_failures import _error_of
from worlds import init_torch, run_world

K = 1000  # small packets and few slots: many chunks, windows that wrap
SIZES = [0, 1, 7, 999, 1000, 1001, 25_000, 300_000]
FAULTS = "drop:0.1,dup:0.1,reorder:0.1"


def env_for(*aggregators, **extra):
    env = {"RINGFLOW_ALGO": "aggregate",
           "RINGFLOW_AGGREGATOR": ",".join(a.address for a in aggregators),
           "RINGFLOW_AGG_PACKET_ELEMS": str(K), "RINGFLOW_AGG_SLOTS": "4"}
    env.update(extra)
    return env


def sums(rank, size, sizes, seed=0):
    import torch

    dist = init_torch(rank, size, timeout_s=60)
    out = []
    for n in sizes:
        x = torch.from_numpy(worker_input(rank, n, seed))
        dist.all_reduce(x)
        out.append(x.numpy().copy())
    traffic = ringflow.stats()["aggregate"]
    dist.destroy_process_group()
    return out, traffic


def assert_bits_equal(got, want, what):
    assert got.shape == want.shape, what
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{what}: {bad.size} elements differ, first at {bad[:5]}: " \
                          f"{got[bad[:5]]} != {want[bad[:5]]}"


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_sums_are_bit_exact_and_within_the_quantisation_bound(workers):
    with ringflow.Aggregator(workers=workers) as agg:
        results = run_world(workers, sums, SIZES, env=env_for(agg), timeout=180)
        stats = agg.stats()
    for i, n in enumerate(SIZES):
        inputs = [worker_input(r, n) for r in range(workers)]
        want = aggregated_sum(inputs, K)
        exact = np.sum([x.astype(np.float64) for x in inputs], axis=0)
        for r in range(workers):
            got = results[r][0][i]
            assert_bits_equal(got, want, f"n={n} rank {r}")
            assert np.all(np.abs(got - exact) <= error_bound(inputs, K)), f"n={n} rank {r}"
    # A data round per chunk, and an exponent-only round to open each of
    # the (at most 4) slots a call uses.
    assert stats["results"] == sum(-(-n // K) + min(-(-n // K), 4) for n in SIZES)
    assert stats["elements"] == sum(SIZES)
    # Each way, a worker moves the tensor once (plus one header per packet
    # and whatever it had to send again).
    for _, traffic in results:
        payload = 4 * sum(SIZES)
        resent = traffic["retransmits"] * (64 + 4 * K)
        assert payload <= traffic["bytes_sent"] <= payload + 64 * traffic["packets_sent"] + resent
        assert payload <= traffic["bytes_received"]


def avg_and_other_types(rank, size):
    import torch

    dist = init_torch(rank, size, timeout_s=60)
    out = {}
    x = torch.from_numpy(worker_input(rank, 5000, seed=1))
    dist.all_reduce(x, op=dist.ReduceOp.AVG)
    out["avg"] = x.numpy().copy()
    for name, dtype in (("f64", torch.float64), ("f16", torch.float16), ("bf16", torch.bfloat16)):
        x = torch.from_numpy(worker_input(rank, 5000, seed=2)).clamp(-1e4, 1e4).to(dtype)
        dist.all_reduce(x)
        out[name] = x.float().numpy().copy() if dtype == torch.bfloat16 else x.numpy().copy()
    x = torch.from_numpy(worker_input(rank, 3500, seed=3))
    if rank == 1:
        x[1500] = float("nan")
        x[2700] = float("inf")
    dist.all_reduce(x)
    out["nonfinite"] = x.numpy().copy()
    dist.destroy_process_group()
    return out


def test_avg_half_double_and_non_finite_chunks():
    import torch

    with ringflow.Aggregator(workers=3) as agg:
        results = run_world(3, avg_and_other_types, env=env_for(agg), timeout=120)
    avg = aggregated_sum([worker_input(r, 5000, seed=1) for r in range(3)], K) / np.float32(3)
    staged = [torch.from_numpy(worker_input(r, 5000, seed=2)).clamp(-1e4, 1e4) for r in range(3)]
    as_f32 = {name: aggregated_sum([s.to(dt).float().numpy() for s in staged], K)
              for name, dt in (("f64", torch.float64), ("f16", torch.float16), ("bf16", torch.bfloat16))}
    nonfinite_in = [worker_input(r, 3500, seed=3) for r in range(3)]
    nonfinite_in[1][1500], nonfinite_in[1][2700] = np.nan, np.inf
    nonfinite = aggregated_sum(nonfinite_in, K)
    for r, got in enumerate(results):
        assert_bits_equal(got["avg"], avg, f"avg rank {r}")
        assert np.array_equal(got["f64"], as_f32["f64"].astype(np.float64))
        assert np.array_equal(got["f16"], as_f32["f16"].astype(np.float16))
        want_bf16 = torch.from_numpy(as_f32["bf16"]).to(torch.bfloat16).float().numpy()
        assert np.array_equal(got["bf16"], want_bf16)
        # The chunks holding NaN or inf come back all NaN; the others exact.
        assert np.isnan(got["nonfinite"][1000:3000]).all()
        assert_bits_equal(got["nonfinite"][:1000], nonfinite[:1000], f"finite chunk rank {r}")
        assert_bits_equal(got["nonfinite"][3000:], nonfinite[3000:], f"finite tail rank {r}")


def test_lost_duplicated_and_reordered_packets_change_nothing():
    sizes = [1, 1001, 60_000]
    with ringflow.Aggregator(workers=4, faults=FAULTS) as agg:
        results = run_world(4, sums, sizes, 7, env=env_for(agg, RINGFLOW_AGG_FAULTS=FAULTS),
                            timeout=240)
        stats = agg.stats()
    for i, n in enumerate(sizes):
        want = aggregated_sum([worker_input(r, n, 7) for r in range(4)], K)
        for r in range(4):
            assert_bits_equal(results[r][0][i], want, f"n={n} rank {r}")
    assert sum(res[1]["retransmits"] for res in results) > 0
    assert stats["duplicates"] > 0 and stats["shadow_answers"] > 0
    assert stats["contributions"] == 4 * stats["results"]  # each worker counted once per round


def test_two_aggregators_share_the_chunks():
    with ringflow.Aggregator(workers=2) as a, ringflow.Aggregator(workers=2) as b:
        results = run_world(2, sums, [50_000], env=env_for(a, b), timeout=120)
        sa, sb = a.stats(), b.stats()
    want = aggregated_sum([worker_input(r, 50_000) for r in range(2)], K)
    for r in range(2):
        assert_bits_equal(results[r][0][0], want, f"rank {r}")
    # 50 chunks dealt round-robin: 25 data rounds each, plus 4 slot openings.
    assert sa["results"] == sb["results"] == 25 + 4


def side_by_side(rank, size):
    import torch

    dist = init_torch(rank, size, timeout_s=60)
    pair = [dist.new_group([0, 1]), dist.new_group([2, 3])][rank // 2]
    out = []
    for i in range(3):
        x = torch.from_numpy(worker_input(rank, 20_000, seed=10 + i))
        dist.all_reduce(x, group=pair)
        y = torch.from_numpy(worker_input(rank, 20_000, seed=20 + i))
        dist.all_reduce(y)
        out.append((x.numpy().copy(), y.numpy().copy()))
    dist.destroy_process_group()
    return out


def test_jobs_run_side_by_side_without_mixing():
    with ringflow.Aggregator(workers=0, jobs=4) as agg:
        results = run_world(4, side_by_side, env=env_for(agg), timeout=120)
        stats = agg.stats()
    assert stats["jobs_opened"] == 3  # the world and two pairs
    for i in range(3):
        world = aggregated_sum([worker_input(r, 20_000, seed=20 + i) for r in range(4)], K)
        for r in range(4):
            pair = aggregated_sum([worker_input(p, 20_000, seed=10 + i)
                                   for p in (r // 2 * 2, r // 2 * 2 + 1)], K)
            assert_bits_equal(results[r][i][0], pair, f"pair call {i} rank {r}")
            assert_bits_equal(results[r][i][1], world, f"world call {i} rank {r}")


def until_failure(rank, size, flag_dir):
    import torch

    dist = init_torch(rank, size, timeout_s=30)
    x = torch.ones(2_000_000)
    dist.all_reduce(x)
    open(os.path.join(flag_dir, f"rank{rank}"), "w").close()
    t0 = None
    try:
        for _ in range(100_000):
            t0 = time.monotonic()
            dist.all_reduce(x)
    except Exception as e:  # noqa: BLE001 - the failure is the result
        return type(e).__name__, str(e), time.monotonic() - t0
    return "no error", "", 0.0


def test_killed_aggregator_fails_every_worker(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "ringflow.cli", "aggregator", "--port", "0",
                             "--workers", "3"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        address = line.split("listening on ")[1].split()[0]

        class Remote:
            pass

        Remote.address = address
        import threading

        def kill_when_running():
            deadline = time.monotonic() + 60
            while len(os.listdir(tmp_path)) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            proc.kill()

        threading.Thread(target=kill_when_running, daemon=True).start()
        results = run_world(3, until_failure, str(tmp_path), env=env_for(Remote), timeout=120)
    finally:
        proc.kill()
        proc.wait()
    for rank, (kind, message, seconds) in enumerate(results):
        assert kind != "no error", f"rank {rank} never failed"
        assert "aggregat" in message, f"rank {rank}: {message}"
        assert seconds < 30, f"rank {rank} took {seconds:.1f} s to fail"


def allreduce_error(rank, size, timeout_s, counts):
    """(exception class, message, seconds) of building the group, or if that
    worked of one allreduce of counts[rank] ones; class None when neither
    failed.  (A bad setting fails the former: settings are checked then.)"""
    import torch

    group = []
    failed_init = _error_of(lambda: group.append(init_torch(rank, size, timeout_s=timeout_s)))
    if not group:
        return failed_init
    return _error_of(lambda: group[0].all_reduce(torch.ones(counts[rank])))


def test_mismatched_calls_fail_on_every_rank():
    with ringflow.Aggregator(workers=2) as agg:
        results = run_world(2, allreduce_error, 20, [5000, 7000], env=env_for(agg), timeout=60)
    for rank, (_, message, seconds) in enumerate(results):
        assert "mismatched" in message or "differ" in message, f"rank {rank}: {message}"
        assert seconds < 15, f"rank {rank} waited {seconds:.1f} s"


@pytest.mark.parametrize("env, expected", [
    ({"RINGFLOW_ALGO": "aggregate"}, "RINGFLOW_AGGREGATOR"),
    ({"RINGFLOW_ALGO": "aggregate", "RINGFLOW_AGGREGATOR": "127.0.0.1:1",
      "RINGFLOW_AGG_FAULTS": "drop:2"}, "RINGFLOW_AGG_FAULTS"),
    ({"RINGFLOW_ALGO": "aggregate", "RINGFLOW_AGGREGATOR": "127.0.0.1"}, "host:port"),
    ({"RINGFLOW_ALGO": "aggregate", "RINGFLOW_AGGREGATOR": "[::1]"}, "host:port"),
])
def test_bad_settings_are_named_on_every_rank(env, expected):
    for _, message, _ in run_world(2, allreduce_error, 20, [10, 10], env=env, timeout=60):
        assert expected in message, message


def other_calls(rank, size):
    import torch

    dist = init_torch(rank, size, timeout_s=30)
    a = torch.arange(10, dtype=torch.int64) * (rank + 1)
    dist.all_reduce(a)
    b = torch.tensor([float(rank), -float(rank)])
    dist.all_reduce(b, op=dist.ReduceOp.MAX)
    dist.destroy_process_group()
    return a.tolist(), b.tolist()


def test_integer_and_max_allreduce_fall_back_to_the_ring():
    with ringflow.Aggregator(workers=2) as agg:
        results = run_world(2, other_calls, env=env_for(agg), timeout=60)
        assert agg.stats()["packets_received"] == 0
    for a, b in results:
        assert a == [3 * i for i in range(10)]
        assert b == [1.0, 0.0]
