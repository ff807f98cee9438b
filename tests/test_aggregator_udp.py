"""How the aggregator and its workers move datagrams through the kernel
(RINGFLOW_AGG_UDP, csrc/aggregator/udp_batch.cc): every path gives the same
bit-exact sums as the numpy model, under 10% loss, duplication and
reordering too; the batched paths really carry several datagrams per system
call (the counters of ringflow.stats()["aggregate"] and Aggregator.stats());
offload really segments (GSO) and coalesces (GRO) where the kernel has them;
and a route that cannot segment falls back to one datagram per message,
with the same sums."""

from __future__ import annotations

from pathlib import Path

import pytest

import ringflow
from aggregate_reference import aggregated_sum, worker_input
import netns
from ringflow import _C
from test_aggregate import FAULTS, assert_bits_equal, env_for, sums
from worlds import run_world

PATHS = ["offload", "batch", "single"]
K = 352  # 1472-byte datagrams: an Ethernet MTU, where segmentation pays
SLOTS = "16"
SIZES = [1, 5_000, 120_000]


def run_path(monkeypatch, path, workers=2, faults="", seed=3):
    """(per-rank results of `sums`, the aggregator's stats) with both sides on `path`."""
    monkeypatch.setenv("RINGFLOW_AGG_UDP", path)  # the aggregator reads it when built
    with ringflow.Aggregator(workers=workers, faults=faults) as agg:
        env = env_for(agg, RINGFLOW_AGG_UDP=path, RINGFLOW_AGG_PACKET_ELEMS=str(K),
                      RINGFLOW_AGG_SLOTS=SLOTS, RINGFLOW_AGG_FAULTS=faults)
        results = run_world(workers, sums, SIZES, seed, env=env, timeout=180)
        return results, agg.stats()


def assert_exact(results, workers, seed):
    for i, n in enumerate(SIZES):
        want = aggregated_sum([worker_input(r, n, seed) for r in range(workers)], K)
        for r in range(workers):
            assert_bits_equal(results[r][0][i], want, f"n={n} rank {r}")


@pytest.mark.parametrize("path", PATHS)
def test_every_path_sums_exactly_and_batches_as_it_says(monkeypatch, path):
    results, stats = run_path(monkeypatch, path)
    assert_exact(results, 2, 3)
    assert stats["udp_path"] == path
    sides = [("aggregator", stats)] + [(f"rank {r}", res[1]) for r, res in enumerate(results)]
    for who, s in sides:
        per_send = s["packets_sent"] / s["send_calls"]
        if path == "single":
            assert s["packets_sent"] == s["send_calls"], who
            assert s["packets_received"] == s["recv_calls"], who
        else:
            # A worker's first flush alone puts its whole window (16) in one call.
            assert per_send > 1, f"{who}: {per_send} datagrams per send call"
        if path != "offload":
            assert s["gso_sends"] == s["gro_receives"] == 0, who
    if path == "offload" and stats["gso"] and stats["gro"]:
        # Loopback keeps a segmented send whole for a GRO socket: both ends
        # see messages of many datagrams.
        for who, s in sides:
            assert s["gso_datagrams"] > s["gso_sends"] > 0, who
            assert s["gro_datagrams"] > s["gro_receives"] > 0, who
            assert s["packets_received"] / s["recv_calls"] > 2, who


@pytest.mark.parametrize("path", ["offload", "single"])
def test_lost_duplicated_and_reordered_packets_change_nothing_on_either_path(monkeypatch, path):
    results, stats = run_path(monkeypatch, path, workers=3, faults=FAULTS, seed=5)
    assert_exact(results, 3, 5)
    assert sum(res[1]["retransmits"] for res in results) > 0
    assert stats["duplicates"] > 0
    assert stats["contributions"] == 3 * stats["results"]


def test_a_bad_path_is_named(monkeypatch):
    monkeypatch.setenv("RINGFLOW_AGG_UDP", "zerocopy")
    with pytest.raises(ringflow.InvalidArgument, match="RINGFLOW_AGG_UDP"):
        ringflow.Aggregator(workers=2)


def sums_on_host(rank, size, n, seed):
    """`sums` in a namespace host, as JSON: the result's bits and the traffic."""
    (out,), traffic = sums(rank, size, [n], seed)
    return {"bits": out.view("<u4").tolist(), "traffic": traffic}


@pytest.mark.skipif(bool(netns.available()), reason=netns.available() or "namespaces available")
@pytest.mark.parametrize("k", [1000, 352])
def test_only_datagrams_that_fit_the_link_mtu_are_segmented(monkeypatch, k):
    """Namespace hosts on MTU-1500 veth links, the aggregator on their
    bridge.  4064-byte datagrams (k=1000) would be dropped by the bridge as
    segments of a GSO packet, so they go one per message (IP fragments
    them); 1472-byte ones (k=352) fit, and go segmented.  The 64-byte
    exponent-only rounds fit either way.  Same sums."""
    import numpy as np

    n, seed = 30_000, 9
    monkeypatch.setenv("RINGFLOW_AGG_UDP", "offload")
    token = "udp-mtu-test"
    with netns.Hosts(2, mtu=1500) as hosts, \
            ringflow.Aggregator(workers=2, host=hosts.gateway, token=token) as agg:
        env = {"RINGFLOW_ALGO": "aggregate", "RINGFLOW_AGGREGATOR": f"{hosts.gateway}:{agg.port}",
               "RINGFLOW_AGG_TOKEN": token, "RINGFLOW_AGG_PACKET_ELEMS": str(k),
               "RINGFLOW_AGG_SLOTS": SLOTS, "RINGFLOW_AGG_UDP": "offload"}
        results = hosts.run([0, 1], "test_aggregator_udp:sums_on_host", args=(n, seed), env=env,
                            timeout=120, path=[str(Path(__file__).parent)])
        stats = agg.stats()
    want = aggregated_sum([worker_input(r, n, seed) for r in range(2)], k)
    size = _C.PACKET_HEADER_BYTES + 4 * k
    fits = size <= 1500 - 28  # the workers' route: the veth's MTU
    for r, res in enumerate(results):
        got = np.asarray(res["bits"], dtype="<u4").view(np.float32)
        assert_bits_equal(got, want, f"rank {r}")
        t = res["traffic"]
        assert t["gso_bytes"] <= t["gso_datagrams"] * (1500 - 28), f"rank {r}: {t}"
        if fits and stats["gso"]:  # data rounds too, not only the 64-byte exponent rounds
            assert t["gso_bytes"] > t["gso_datagrams"] * 64, f"rank {r}: {t}"
    # The aggregator's bound: the smallest MTU of this host's interfaces.
    assert stats["gso_max_segment"] <= 1500 - 28, stats
    assert stats["gso_bytes"] <= stats["gso_datagrams"] * stats["gso_max_segment"], stats


def test_the_floor_moves_every_datagram_and_names_bad_arguments(monkeypatch):
    """bench/aggregate.py's floor (_testing.udp_floor): every timed call
    completes (a lost datagram would raise), and its CPU is counted."""
    from ringflow import _testing

    monkeypatch.setenv("RINGFLOW_AGG_UDP", "offload")
    f = _testing.udp_floor(2, 100_003, 1000, 8, 3)
    assert len(f["seconds"]) == 3 and all(s > 0 for s in f["seconds"])
    assert f["relay_cpu"] > 0 and f["worker_cpu"] > 0
    with pytest.raises(ringflow.InvalidArgument, match="udp floor"):
        _testing.udp_floor(0, 1000, 1000, 8, 1)


def test_a_large_tensor_takes_its_result_with_streaming_stores_bit_exactly(monkeypatch):
    """From 2^20 elements on, workers write results with non-temporal stores
    (client.cc, kernels::dequantizeFixedStreaming); 1001-value chunks start
    off the 32-byte boundary, so heads, vector bodies and tails all run, and
    lost, duplicated and reordered packets write some chunks twice."""
    k, n, seed = 1001, (1 << 20) + 12_345, 13
    monkeypatch.setenv("RINGFLOW_AGG_UDP", "offload")
    with ringflow.Aggregator(workers=2, faults=FAULTS) as agg:
        env = env_for(agg, RINGFLOW_AGG_PACKET_ELEMS=str(k), RINGFLOW_AGG_SLOTS="16",
                      RINGFLOW_AGG_FAULTS=FAULTS)
        results = run_world(2, sums, [n], seed, env=env, timeout=180)
    want = aggregated_sum([worker_input(r, n, seed) for r in range(2)], k)
    for r in range(2):
        assert_bits_equal(results[r][0][0], want, f"rank {r}")
    assert sum(res[1]["retransmits"] for res in results) > 0
