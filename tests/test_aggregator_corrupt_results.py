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

import select
import socket
import struct
import threading

import pytest

import ringflow
from aggregate_reference import aggregated_sum, worker_input
from test_aggregate import assert_bits_equal, env_for, sums
from worlds import run_world

HEADER = 64
RESULT = 2
SIZES = [1, 1000, 25_000, 120_000]
K = 1000


class CorruptingRelay:
    """Forwards datagrams both ways (one upstream socket per worker, so the
    aggregator tells the workers apart); the first copy of each data result
    bound for a worker leaves with one payload bit flipped."""

    def __init__(self, aggregator_port: int):
        self.upstream = ("127.0.0.1", aggregator_port)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.front.getsockname()[1]}"
        self.up: dict = {}    # worker address -> its upstream socket
        self.back: dict = {}  # upstream socket -> worker address
        self.seen: set = set()
        self.corrupted = 0
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.thread.join(timeout=10)
        for s in [self.front, *self.up.values()]:
            s.close()

    def run(self):
        while not self.stopping:
            ready, _, _ = select.select([self.front, *self.up.values()], [], [], 0.05)
            for s in ready:
                data, addr = s.recvfrom(65536)
                if s is self.front:
                    if addr not in self.up:
                        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        u.connect(self.upstream)
                        self.up[addr], self.back[u] = u, addr
                    self.up[addr].send(data)
                else:
                    self.front.sendto(self.tampered(data, self.back[s]), self.back[s])

    def tampered(self, data: bytes, worker) -> bytes:
        if len(data) <= HEADER or data[5] != RESULT:
            return data
        slot, rnd, call = struct.unpack_from("<III", data, 12)
        key = (worker, slot, rnd, call)
        if key in self.seen:
            return data
        self.seen.add(key)
        self.corrupted += 1
        b = bytearray(data)
        at = HEADER + (rnd * 7919 + slot) % (len(b) - HEADER)
        b[at] ^= 1 << (rnd % 8)
        return bytes(b)


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
