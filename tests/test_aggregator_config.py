"""The aggregator's configuration errors as a user meets them, through
torch.distributed on real processes: settings checked when the group is
built, alike on every rank; a token the aggregator does not share failing
the first allreduce promptly with an error that names it; a finished job
giving its aggregator entry back at once; a full aggregator naming the
flags that change that."""

from __future__ import annotations

import time

import pytest

import ringflow
from aggregator_harness import LAYOUT, NO_WORKER, REJECTED, UdpRelay
from test_failures import _error_of
from worlds import init_torch, run_world

TOKEN_MESSAGE = "the aggregator rejects our packets' MACs: is RINGFLOW_AGG_TOKEN the same everywhere?"
TEST_NET = "192.0.2.1:7777"  # RFC 5737: documentation only, never loopback


def aggregate_env(address, **extra):
    return {"RINGFLOW_ALGO": "aggregate", "RINGFLOW_AGGREGATOR": address,
            "RINGFLOW_AGG_PACKET_ELEMS": "1000", "RINGFLOW_AGG_SLOTS": "4", **extra}


def init_error(rank, size):
    """(class name, message, seconds) of init_process_group; class None if it worked."""
    group = []
    error = _error_of(lambda: group.append(init_torch(rank, size, timeout_s=20)))
    if group:
        group[0].destroy_process_group()
    return error


def first_allreduce_error(rank, size, timeout_s):
    """(class name, message, seconds) of building the group and one allreduce."""
    import torch

    def build_and_reduce():
        dist = init_torch(rank, size, timeout_s=timeout_s)
        dist.all_reduce(torch.ones(5000))
        dist.destroy_process_group()

    return _error_of(build_and_reduce)


def one_allreduce(rank, size):
    import torch

    dist = init_torch(rank, size, timeout_s=30)
    x = torch.full((3000,), float(rank + 1))
    dist.all_reduce(x)
    dist.destroy_process_group()  # the clean shutdown that says goodbye
    return x[:3].tolist()


@pytest.mark.parametrize("env, expected", [
    ({"RINGFLOW_ALGO": "aggregate"}, "RINGFLOW_AGGREGATOR"),
    (aggregate_env(TEST_NET), "RINGFLOW_AGG_TOKEN"),
    (aggregate_env(f"127.0.0.1:7777,{TEST_NET}"), "RINGFLOW_AGG_TOKEN"),
], ids=["no aggregator", "beyond loopback without a token", "one of two beyond loopback"])
def test_init_process_group_refuses_the_setting_alike_on_every_rank(env, expected):
    for rank, (kind, message, _) in enumerate(run_world(2, init_error, env=env, timeout=60)):
        assert kind == "InvalidArgument", f"rank {rank}: {kind}: {message}"
        assert expected in message, f"rank {rank}: {message}"


@pytest.mark.parametrize("address", ["127.0.0.1:7777", "localhost:7777", "[::1]:7777"])
def test_a_loopback_aggregator_needs_no_token(address):
    for rank, (kind, message, _) in enumerate(
            run_world(2, init_error, env=aggregate_env(address), timeout=60)):
        assert kind is None, f"rank {rank}: {kind}: {message}"


@pytest.mark.parametrize("aggregator_token, worker_token", [
    ("right", "wrong"), ("right", ""), ("", "extra")],
    ids=["another token", "no token", "a token the aggregator lacks"])
def test_a_token_the_aggregator_does_not_share_fails_every_rank_at_once(aggregator_token,
                                                                      worker_token):
    # The group's timeout is long enough that only the rejection notices can
    # end the call with this message; without them it ends in a timeout.
    with ringflow.Aggregator(workers=2, token=aggregator_token) as agg:
        results = run_world(2, first_allreduce_error, 15, timeout=90,
                            env=aggregate_env(agg.address, RINGFLOW_AGG_TOKEN=worker_token))
        stats = agg.stats()
    for rank, (kind, message, _) in enumerate(results):
        assert (kind, TOKEN_MESSAGE in message) == ("PeerError", True), \
            f"rank {rank}: {kind}: {message}"
    assert stats["contributions"] == 0 and stats["rejected_notices"] > 0, stats


def wait_for(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def test_quick_reruns_reuse_the_entry_of_a_job_that_shut_down_cleanly():
    # The idle eviction is out of reach: only the workers' goodbyes free it.
    with ringflow.Aggregator(workers=2, jobs=1, packet_elems=1000, job_idle_s=3600) as agg:
        for run in range(3):
            results = run_world(2, one_allreduce, env=aggregate_env(agg.address), timeout=90)
            assert results == [[3.0, 3.0, 3.0]] * 2, (run, results)
            wait_for(lambda: agg.stats()["jobs_active"] == 0, f"run {run}'s entry freed: "
                     f"{agg.stats()}")
        stats = agg.stats()
    assert (stats["jobs_opened"], stats["jobs_closed"], stats["jobs_evicted"]) == (3, 3, 0), stats


def test_a_full_aggregator_names_the_flags_on_every_rank():
    from test_aggregator_service import Worker

    with ringflow.Aggregator(workers=2, jobs=1, packet_elems=1000, job_idle_s=3600) as agg:
        squatter = Worker(agg.port, 0, 2, job=99)  # a job that never finishes
        try:
            squatter.contribute(0, 0, [1])
            squatter.expect_silence()
            results = run_world(2, first_allreduce_error, 30, timeout=90,
                                env=aggregate_env(agg.address))
        finally:
            squatter.close()
    for rank, (kind, message, _) in enumerate(results):
        assert kind == "PeerError", f"rank {rank}: {kind}: {message}"
        for phrase in ("maximum number of jobs", "--jobs 1", "--job-idle-s"):
            assert phrase in message, f"rank {rank}: {phrase!r} not in {message}"


class ForgingRelay(UdpRelay):
    """After every result it relays, sends the worker three forged Rejected
    notices echoing that result's header -- as an attacker on the path
    could."""

    def __init__(self, aggregator_port):
        super().__init__(aggregator_port)
        self.forged = 0

    def notice(self, packet: bytes) -> bytes:
        f = list(LAYOUT.unpack(packet[:LAYOUT.size]))
        f[2], f[3], f[8], f[10], f[16] = REJECTED, 0, NO_WORKER, 0, 0
        return LAYOUT.pack(*f)

    def back(self, data: bytes, worker) -> list[bytes]:
        self.forged += 3
        return [data] + [self.notice(data)] * 3


def sums_of_several_calls(rank, size):
    import torch

    dist = init_torch(rank, size, timeout_s=60)
    out = []
    for n in (1, 999, 20_000):
        x = torch.arange(n, dtype=torch.float32) * (rank + 1)
        dist.all_reduce(x)
        out.append(bool(torch.equal(x, torch.arange(n, dtype=torch.float32) * 3)))
    dist.destroy_process_group()
    return out


def test_forged_rejection_notices_change_no_result():
    with ringflow.Aggregator(workers=2, packet_elems=1000) as agg:
        with ForgingRelay(agg.port) as relay:
            results = run_world(2, sums_of_several_calls, env=aggregate_env(relay.address),
                                timeout=120)
        stats = agg.stats()
    assert results == [[True, True, True]] * 2, results
    assert relay.forged > 0 and stats["bad_mac"] == 0, (relay.forged, stats)
