"""Results corrupted between the aggregator and a worker never reach the
tensor.  A worker checks an unkeyed result's checksum in the same pass that
dequantises it into its chunk (csrc/aggregator/client.cc), so a corrupt
result is written there before it is known bad: the lane must keep waiting
and the genuine result, answered again from the aggregator's shadow copy
after a retransmission, must overwrite it.  A relay between the workers
and the aggregator flips one payload bit of the first copy of every data
result; the sums must still equal the numpy model bit for bit, with the
keyed MAC (checked before use) and without it."""

from __future__ import annotations

import struct

import pytest

import ringflow
from aggregate_reference import aggregated_sum, worker_input
from aggregator_harness import HEADER, RESULT, UdpRelay
from test_aggregate import assert_bits_equal, env_for, sums
from worlds import run_world

SIZES = [1, 1000, 25_000, 120_000]
K = 1000


class CorruptingRelay(UdpRelay):
    """The first copy of each data result bound for a worker leaves with one
    payload bit flipped."""

    def __init__(self, aggregator_port: int):
        super().__init__(aggregator_port)
        self.seen: set = set()
        self.corrupted = 0

    def back(self, data: bytes, worker) -> list[bytes]:
        if len(data) <= HEADER or data[5] != RESULT:
            return [data]
        slot, rnd, call = struct.unpack_from("<III", data, 12)
        key = (worker, slot, rnd, call)
        if key in self.seen:
            return [data]
        self.seen.add(key)
        self.corrupted += 1
        b = bytearray(data)
        at = HEADER + (rnd * 7919 + slot) % (len(b) - HEADER)
        b[at] ^= 1 << (rnd % 8)
        return [bytes(b)]


@pytest.mark.parametrize("token", ["", "corrupt-results-token"])
def test_a_corrupted_result_is_dropped_and_answered_again(token):
    workers, seed = 2, 11
    with ringflow.Aggregator(workers=workers, token=token) as agg, \
            CorruptingRelay(agg.port) as relay:
        env = env_for(agg, RINGFLOW_AGGREGATOR=relay.address, RINGFLOW_AGG_PACKET_ELEMS=str(K))
        if token:
            env["RINGFLOW_AGG_TOKEN"] = token
        results = run_world(workers, sums, SIZES, seed, env=env, timeout=180)
        stats = agg.stats()
    for i, n in enumerate(SIZES):
        want = aggregated_sum([worker_input(r, n, seed) for r in range(workers)], K)
        for r in range(workers):
            assert_bits_equal(results[r][0][i], want, f"n={n} rank {r}")
    data_results = sum(-(-n // K) for n in SIZES)
    assert relay.corrupted >= workers * data_results
    for r, (_, traffic) in enumerate(results):
        # Every data result came corrupted first: each was dropped as
        # stale and its round sent again.
        assert traffic["stale"] >= data_results, (r, traffic)
        assert traffic["retransmits"] >= data_results, (r, traffic)
    assert stats["shadow_answers"] >= workers * data_results
