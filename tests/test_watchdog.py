"""The ring-relay watchdog: a slow hop is named in one warning per call and
counted; stats() reports per-call timings."""

import time

from worlds import init_torch, run_world


def late_rank(rank, size, late_rank_id, delay_s):
    import torch

    import ringflow

    dist = init_torch(rank, size)
    x = torch.ones(1000)
    dist.all_reduce(x)  # warm: connections and buffers in place
    if rank == late_rank_id:
        time.sleep(delay_s)
    dist.all_reduce(x)
    dist.broadcast(x, 0)
    return ringflow.stats()


def test_slow_hop_is_named_and_counted():
    results = run_world(3, late_rank, 2, 0.4, env={"RINGFLOW_WARN_MS": "100"}, timeout=120)
    waiting = results[0]  # rank 0 receives from rank 2 in the ring
    assert waiting["warn_ms"] == 100
    assert waiting["warnings"] >= 1
    msg = waiting["last_warning"]
    assert "allreduce #1" in msg and "aggregation phase" in msg, msg
    assert "waiting for rank 2" in msg, msg
    slow = [r for r in waiting["recent"] if r["op"].startswith("allreduce #1")][0]
    assert slow["warned"] and slow["slow_peer"] == 2
    assert slow["aggregation_ms"] >= 300 and slow["total_ms"] >= slow["aggregation_ms"]
    # The late rank itself waited for nobody.
    assert results[2]["warnings"] == 0
    for s in results:
        assert s["ops"]["allreduce"]["count"] == 2
        assert s["ops"]["broadcast"]["count"] == 1
        # Broadcast has no aggregation phase.
        bcast = [r for r in s["recent"] if r["op"].startswith("broadcast")][0]
        assert bcast["aggregation_ms"] is None


def test_no_warning_under_the_threshold():
    results = run_world(2, late_rank, 1, 0.0, timeout=60)
    for s in results:
        assert s["warn_ms"] == 10000 and s["warnings"] == 0 and s["last_warning"] == ""
