"""The packet aggregator at the protocol level: fake workers
on raw UDP sockets speak the wire format of ringflow/packet.h to an
in-process aggregator and check exact sums, exactly-once adding across
duplicates, lost results and stale rounds, the Error replies, packet
integrity and the rationed Rejected notices, the bounded job table and the
goodbye that frees a job's entry, and the `ringflow aggregator` command.

Silence is checked with a probe rather than a timeout: the aggregator
handles one socket's datagrams in order and answers in order, so when a
worker sends a packet and then a probe (a slot index beyond the table,
answered with an Error), the first reply it gets must be the probe's."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ringflow
from ringflow import _C

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
HEADER = _C.PACKET_HEADER_BYTES
DATA, RESULT, ERROR, GOODBYE, REJECTED = 1, 2, 3, 4, 5
NOTICES_PER_ADDRESS = 4  # NoticeLimiter::kPerAddress: per second, per source address
SHADOW = 0x80000000
NO_WORKER = 0xFFFF
NO_EXPONENT = -32768
FLAG_KEYED = 1
INT32_MAX = 2**31 - 1
RECV_TIMEOUT = 10.0  # only a hang waits this long
PROBE_SLOT = 0x7FFFFFF0

# PacketHeader of packet.h, field by field, little-endian and packed.
LAYOUT = struct.Struct("<IBBHIIIIHHIQQhhIQ")
FIELDS = ("magic", "version", "type", "flags", "job", "slot", "round", "call", "sender",
          "workers", "count", "offset", "total", "exponent", "next_exponent", "reserved", "mac")
MAGIC, VERSION = 0x47414652, 1

# ErrorCode of packet.h, and a phrase of each one's text.
WRONG_WORKERS, SLOT_OUT_OF_RANGE, TOO_MANY_JOBS, TOO_MANY_ELEMENTS, INCONSISTENT = 1, 2, 3, 4, 5
ERROR_TEXT = {WRONG_WORKERS: "worker count", SLOT_OUT_OF_RANGE: "slot index",
              TOO_MANY_JOBS: "maximum number of jobs", TOO_MANY_ELEMENTS: "elements per packet",
              INCONSISTENT: "mismatched"}


def i32(values) -> np.ndarray:
    return np.asarray(values, dtype="<i4")


def values_of(reply) -> np.ndarray:
    return np.frombuffer(reply["payload"], dtype="<i4")


def memory_per_job(slots, elems):
    return slots * 2 * elems * 4  # two sets of `elems` int32 per slot


class Worker:
    """A fake worker: one UDP socket that builds packets with encode_packet."""

    def __init__(self, port, rank, workers, job=7, token=""):
        self.port, self.rank, self.workers, self.job, self.token = port, rank, workers, job, token
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))

    def packet(self, slot_index=0, round=0, values=(), token=None, sign=True, **fields) -> bytes:
        f = {"job": self.job, "sender": self.rank, "workers": self.workers,
             "slot_index": slot_index, "round": round, **fields}
        return _C.encode_packet(f, i32(values).tobytes(),
                                token=self.token if token is None else token, sign=sign)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, (HOST, self.port))

    def contribute(self, slot_index, round, values, **fields) -> bytes:
        p = self.packet(slot_index, round, values, **fields)
        self.send(p)
        return p

    def receive(self) -> dict:
        self.sock.settimeout(RECV_TIMEOUT)
        data, sender = self.sock.recvfrom(1 << 17)
        assert sender == (HOST, self.port), f"a datagram from {sender}"
        reply = _C.decode_packet(data, token=self.token)
        reply["bytes"] = data
        return reply

    def expect_silence(self, token=None) -> None:
        """Nothing was answered to what this worker sent so far."""
        self.send(self.packet(PROBE_SLOT, 0, token=token))
        reply = self.receive()
        assert (reply["type"], reply["count"], reply["slot_index"]) == \
            (ERROR, SLOT_OUT_OF_RANGE, PROBE_SLOT), f"an answer before the probe's: {reply}"
        assert reply["authentic"], reply

    def expect_rejected(self, sent: bytes) -> None:
        """The next reply is the Rejected notice for `sent`: its header alone,
        unsigned, echoing the fields that let the worker match it."""
        reply = self.receive()
        assert reply["type"] == REJECTED, reply
        assert len(reply["bytes"]) == HEADER <= len(sent), reply
        assert (reply["mac"], reply["flags"], reply["count"], reply["sender"]) == \
            (0, 0, 0, NO_WORKER), reply
        fields = _C.decode_packet(sent)
        for f in ("job", "slot", "round", "call", "workers"):
            assert reply[f] == fields[f], (f, reply, fields)

    def goodbye(self, token=None) -> None:
        self.send(self.packet(0, 0, type=GOODBYE, token=token))

    def close(self):
        self.sock.close()


@pytest.fixture
def serve():
    """Starts in-process aggregators (token '' unless given); stops them all."""
    started = []

    def start(workers, **config):
        config.setdefault("token", "")
        agg = ringflow.Aggregator(workers, **config)
        started.append(agg)
        return agg

    yield start
    for agg in started:
        agg.close()


@pytest.fixture
def workers_of():
    made = []

    def make(agg, n, **kw):
        ws = [Worker(agg.port, r, n, **kw) for r in range(n)]
        made.extend(ws)
        return ws

    yield make
    for w in made:
        w.close()


def assert_error(reply, code, sent):
    """An authentic Error for the packet `sent` (decoded), naming `code`."""
    assert reply["type"] == ERROR, reply
    assert reply["count"] == code, reply
    assert ERROR_TEXT[code] in reply["error"], reply["error"]
    assert reply["authentic"], reply
    assert reply["sender"] == NO_WORKER and reply["payload"] == b"", reply
    for f in ("job", "slot", "round", "workers"):
        assert reply[f] == sent[f], (f, reply, sent)


# --- exact sums ----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 8])
def test_every_worker_receives_the_exact_sum_of_every_round(serve, workers_of, n):
    slots, elems, used, rounds = 4, 64, 3, 4
    rng = np.random.default_rng(1000 + n)
    agg = serve(n, slots=slots, packet_elems=elems)
    ws = workers_of(agg, n, job=0x1234)
    bound = INT32_MAX // n
    elements = 0
    for rnd in range(rounds):  # reuses each slot: sets 0, 1, 0, 1
        want = {}
        order = []
        for s in range(used):
            count = int(rng.integers(1, elems + 1))
            values = rng.integers(-bound, bound, size=(n, count), endpoint=True)
            nexts = rng.integers(-60, 60, size=n)
            common = {"exponent": int(rng.integers(-60, 60)), "call": int(rng.integers(0, 2**32)),
                      "offset": int(rng.integers(0, 2**40))}
            common["total"] = common["offset"] + count + int(rng.integers(0, 10**6))
            want[s] = (values.sum(axis=0), int(nexts.max()), count, common)
            elements += count
            order += [(w, s, values[w], int(nexts[w]), common) for w in range(n)]
        for k in rng.permutation(len(order)):
            w, s, values, nxt, common = order[k]
            ws[w].contribute(s, rnd, values, next_exponent=nxt, **common)
        for w in ws:
            got = {}
            for _ in range(used):
                r = w.receive()
                got[r["slot_index"]] = r
            assert sorted(got) == list(range(used)), sorted(got)
            for s, r in got.items():
                total, next_exponent, count, common = want[s]
                assert np.all(np.abs(total) <= INT32_MAX)
                assert r["type"] == RESULT and r["authentic"] and "error" not in r, r
                assert r["flags"] & FLAG_KEYED == 0
                assert (r["job"], r["round"], r["slot"]) == \
                    (0x1234, rnd, s | (SHADOW if rnd & 1 else 0)), r
                assert (r["sender"], r["workers"], r["count"]) == (NO_WORKER, n, count), r
                for f, v in common.items():
                    assert r[f] == v, (f, r)
                assert r["next_exponent"] == next_exponent
                np.testing.assert_array_equal(values_of(r), total)
    stats = agg.stats()
    done = used * rounds
    assert stats["results"] == done
    assert stats["contributions"] == n * done
    assert stats["elements"] == elements
    assert stats["packets_received"] == stats["packets_sent"] == n * done
    for counter in ("duplicates", "shadow_answers", "stale", "malformed", "bad_mac", "refused"):
        assert stats[counter] == 0, counter
    assert (stats["jobs_opened"], stats["jobs_active"]) == (1, 1)
    assert stats["memory_bytes"] == memory_per_job(slots, elems)


def test_a_duplicated_contribution_is_added_once(serve, workers_of):
    agg = serve(2, slots=2, packet_elems=16)
    w0, w1 = workers_of(agg, 2)
    a, b = i32([5, -7, 2**30, 1]), i32([1, 1, -2**29, -1])
    p = w0.packet(1, 0, a)
    w0.send(p)
    w0.send(p)
    w0.expect_silence()
    stats = agg.stats()
    assert (stats["duplicates"], stats["contributions"]) == (1, 1)
    # The same sender's packet with another payload is a duplicate too.
    w0.contribute(1, 0, i32([100, 100, 100, 100]))
    w0.expect_silence()
    assert agg.stats()["duplicates"] == 2
    w1.contribute(1, 0, b)
    for w in (w0, w1):
        r = w.receive()
        assert r["type"] == RESULT and r["authentic"], r
        np.testing.assert_array_equal(values_of(r), a.astype(np.int64) + b)
        w.expect_silence()  # one result each
    stats = agg.stats()
    assert (stats["contributions"], stats["results"], stats["elements"]) == (2, 1, 4)
    assert (stats["duplicates"], stats["shadow_answers"], stats["stale"]) == (2, 0, 0)


def test_a_lost_result_is_answered_again_from_the_shadow_copy(serve, workers_of):
    agg = serve(2, slots=2, packet_elems=8)
    w0, w1 = workers_of(agg, 2)
    rng = np.random.default_rng(7)
    vals = rng.integers(-2**20, 2**20, size=(4, 2, 8))  # round, worker, element
    sent = {}  # (round, worker) -> packet bytes

    def send(rnd, w):
        sent[rnd, w] = (w0, w1)[w].contribute(0, rnd, vals[rnd][w], next_exponent=rnd + 3 * w)

    def expect_result(w, rnd):
        r = (w0, w1)[w].receive()
        assert r["type"] == RESULT and r["authentic"], r
        assert (r["round"], r["slot"]) == (rnd, SHADOW if rnd & 1 else 0), r
        np.testing.assert_array_equal(values_of(r), vals[rnd].sum(axis=0))
        assert r["next_exponent"] == rnd + 3
        return r["bytes"]

    def counters():
        s = agg.stats()
        return {k: s[k] for k in ("contributions", "results", "shadow_answers", "stale",
                                  "duplicates")}

    send(0, 0)
    send(0, 1)
    first = expect_result(0, 0)
    assert expect_result(1, 0) == first
    # Worker 1 "lost" round 0's result and sends its packet again.
    w1.send(sent[0, 1])
    assert expect_result(1, 0) == first
    assert counters() == dict(contributions=2, results=1, shadow_answers=1, stale=0, duplicates=0)
    # Worker 0 moves on to round 1 (the other set); round 0 is still answered.
    send(1, 0)
    w1.send(sent[0, 1])
    assert expect_result(1, 0) == first
    # A packet for round 2 before round 1 is complete must not take round 0's set.
    w0.contribute(0, 2, vals[2][0])
    w0.expect_silence()
    w1.send(sent[0, 1])
    assert expect_result(1, 0) == first
    assert counters() == dict(contributions=3, results=1, shadow_answers=3, stale=1, duplicates=0)
    send(1, 1)
    expect_result(0, 1)
    expect_result(1, 1)
    # Round 2 overwrites set 0: round 0 is stale from then on, round 1 still answered.
    send(2, 0)
    w0.send(sent[2, 0])  # a duplicate of the open round
    w1.send(sent[0, 1])
    w1.contribute(0, 6, vals[3][1])  # a round from the future
    w1.expect_silence()
    w1.send(sent[1, 1])
    expect_result(1, 1)
    assert counters() == dict(contributions=5, results=2, shadow_answers=4, stale=3, duplicates=1)
    send(2, 1)
    expect_result(0, 2)
    expect_result(1, 2)
    w0.expect_silence()
    w1.expect_silence()
    assert counters() == dict(contributions=6, results=3, shadow_answers=4, stale=3, duplicates=1)


def test_the_round_before_a_fresh_slots_first_is_not_answered_with_a_made_up_sum(
        serve, workers_of):
    """A slot's first packet fixes its round (a fresh job, an evicted one, a
    restarted aggregator); the round before it was never summed here, so a
    retransmission for it can get no Result, and nothing that is not a packet."""
    agg = serve(2, packet_elems=4)
    w0, w1 = workers_of(agg, 2)
    w0.contribute(0, 5, [1, 2])
    w1.contribute(0, 4, [3, 4])  # w1 lost round 4's sum, the aggregator never had it
    w1.expect_silence()
    assert agg.stats()["shadow_answers"] == 0
    w1.contribute(0, 5, [10, 20])
    for w in (w0, w1):
        r = w.receive()
        assert r["type"] == RESULT and r["round"] == 5 and r["authentic"], r
        assert values_of(r).tolist() == [11, 22]


# --- Error replies -------------------------------------------------------------------------

def test_a_packet_with_another_worker_count_is_refused(serve, workers_of):
    agg = serve(2)
    (w,) = workers_of(agg, 3)[:1]
    p = w.contribute(0, 0, [1, 2])
    assert_error(w.receive(), WRONG_WORKERS, _C.decode_packet(p))
    stats = agg.stats()
    assert (stats["refused"], stats["jobs_opened"], stats["contributions"]) == (1, 0, 0)
    # With workers=0 the first packet fixes the job's count.
    agg = serve(0)
    two, three = Worker(agg.port, 0, 2, job=9), Worker(agg.port, 1, 3, job=9)
    try:
        two.contribute(0, 0, [1])
        two.expect_silence()
        p = three.contribute(0, 0, [1])
        assert_error(three.receive(), WRONG_WORKERS, _C.decode_packet(p))
        assert (agg.stats()["jobs_opened"], agg.stats()["contributions"]) == (1, 1)
    finally:
        two.close()
        three.close()


def test_a_slot_beyond_the_table_is_refused(serve, workers_of):
    agg = serve(2, slots=4)
    w, _ = workers_of(agg, 2)
    p = w.contribute(4, 1, [1, 2, 3])
    assert_error(w.receive(), SLOT_OUT_OF_RANGE, _C.decode_packet(p))
    assert agg.stats()["jobs_opened"] == 0
    w.contribute(3, 1, [1, 2, 3])  # the last slot is fine
    w.expect_silence()
    stats = agg.stats()
    assert (stats["contributions"], stats["refused"], stats["jobs_opened"]) == (1, 2, 1)


def test_more_elements_than_a_packet_holds_is_refused(serve, workers_of):
    agg = serve(2, packet_elems=16)
    w, _ = workers_of(agg, 2)
    p = w.contribute(0, 0, np.arange(17))
    assert_error(w.receive(), TOO_MANY_ELEMENTS, _C.decode_packet(p))
    w.contribute(0, 0, np.arange(16))
    w.expect_silence()
    stats = agg.stats()
    assert (stats["contributions"], stats["refused"], stats["malformed"]) == (1, 2, 0)


def test_a_job_beyond_the_table_is_refused(serve, workers_of):
    agg = serve(2, jobs=1, packet_elems=4)
    a0, a1 = workers_of(agg, 2, job=1)
    (b0,) = workers_of(agg, 2, job=2)[:1]
    a0.contribute(0, 0, [1, 2])
    a0.expect_silence()
    p = b0.contribute(0, 0, [3, 4])
    assert_error(b0.receive(), TOO_MANY_JOBS, _C.decode_packet(p))
    a1.contribute(0, 0, [10, 20])  # the job that got the entry still completes
    for w in (a0, a1):
        np.testing.assert_array_equal(values_of(w.receive()), [11, 22])
    stats = agg.stats()
    assert (stats["jobs_opened"], stats["jobs_active"], stats["results"]) == (1, 1, 1)


@pytest.mark.parametrize("field, other", [("total", 1001), ("offset", 8), ("call", 4),
                                          ("exponent", -3), ("count", None)])
def test_workers_that_disagree_on_a_round_both_get_an_error(serve, workers_of, field, other):
    agg = serve(2, packet_elems=8)
    w0, w1 = workers_of(agg, 2, job=77)
    fields = {"total": 1000, "offset": 4, "call": 3, "exponent": -2}
    a, b = [1, 2, 3, 4], [10, 20, 30, 40]
    w0.contribute(2, 5, a, **fields)
    w0.expect_silence()
    if field == "count":
        p = w1.contribute(2, 5, b + [50], **fields)
    else:
        p = w1.contribute(2, 5, b, **{**fields, field: other})
    for w in (w0, w1):
        assert_error(w.receive(), INCONSISTENT, _C.decode_packet(p))
        w.expect_silence()  # no result
    stats = agg.stats()
    assert (stats["contributions"], stats["results"]) == (1, 0)
    # The refused payload was not added: the agreeing packet completes the round.
    w1.contribute(2, 5, b, **fields)
    for w in (w0, w1):
        r = w.receive()
        assert r["type"] == RESULT, r
        np.testing.assert_array_equal(values_of(r), [11, 22, 33, 44])


# --- integrity -----------------------------------------------------------------------------

@pytest.mark.parametrize("where", [HEADER + 5, 8, 16, 40, 6, 60],
                         ids=["payload", "job", "round", "total", "flags", "mac"])
def test_a_corrupted_packet_is_dropped_as_bad_mac(serve, workers_of, where):
    agg = serve(2, packet_elems=8)
    w0, w1 = workers_of(agg, 2)
    good = w0.packet(0, 0, [1, 2, 3, 4])
    bad = bytearray(good)
    bad[where] ^= 0x01
    w0.send(bytes(bad))
    w0.expect_rejected(bytes(bad))
    w0.expect_silence()
    stats = agg.stats()
    assert (stats["bad_mac"], stats["malformed"], stats["contributions"]) == (1, 0, 0)
    assert stats["rejected_notices"] == 1
    w0.send(good)
    w1.contribute(0, 0, [0, 0, 0, 0])
    np.testing.assert_array_equal(values_of(w0.receive()), [1, 2, 3, 4])



@pytest.mark.parametrize("count", [3, 8, 21, 4096])
@pytest.mark.parametrize("bad_rank", [0, 1, 2], ids=["first", "added", "completing"])
@pytest.mark.parametrize("where", ["payload", "total"])
def test_a_corrupted_contribution_leaves_the_sum_exact(serve, workers_of, count, bad_rank, where):
    """Unkeyed packets are checked in the pass that copies or adds them;
    one that fails is taken back out (and a round it would have completed
    is neither completed nor signed): the sum stays exact, for every place
    in the round and for payloads with and without a ragged tail."""
    agg = serve(3, packet_elems=4096)
    ws = workers_of(agg, 3)
    rng = np.random.default_rng(count * 7 + bad_rank)
    vals = [rng.integers(-(2**29), 2**29, count) for _ in ws]
    for r, w in enumerate(ws):
        if r == bad_rank:
            bad = bytearray(w.packet(0, 0, vals[r]))
            bad[HEADER + 4 * (count // 2) if where == "payload" else 40] ^= 0x10
            w.send(bytes(bad))
            w.expect_rejected(bytes(bad))
            w.expect_silence()
        w.contribute(0, 0, vals[r])
    want = np.sum(vals, axis=0)
    for w in ws:
        reply = w.receive()
        assert reply["type"] == RESULT and reply["authentic"], reply
        np.testing.assert_array_equal(values_of(reply), want)
    stats = agg.stats()
    assert (stats["bad_mac"], stats["contributions"], stats["refused"]) == (1, 3, 1)

MALFORMED = {
    "empty": lambda w: b"",
    "short": lambda w: b"RFAG" + bytes(6),
    "header less a byte": lambda w: w.packet(0, 0)[:HEADER - 1],
    "truncated payload": lambda w: w.packet(0, 0, [1, 2, 3])[:-4],
    "truncated mid-word": lambda w: w.packet(0, 0, [1, 2, 3])[:-1],
    "extended": lambda w: w.packet(0, 0, [1, 2, 3]) + bytes(4),
    "count beyond the datagram": lambda w: w.packet(0, 0, [1, 2, 3], count=4),
    "wrong magic": lambda w: w.packet(0, 0, [1], magic=MAGIC ^ 0x100),
    "wrong version": lambda w: w.packet(0, 0, [1], version=2),
    "result type": lambda w: w.packet(0, 0, [1], type=RESULT),
    "unknown type": lambda w: w.packet(0, 0, [1], type=9),
    "no workers": lambda w: w.packet(0, 0, [1], workers=0),
    "65 workers": lambda w: w.packet(0, 0, [1], workers=65, sender=3),
    "sender beyond workers": lambda w: w.packet(0, 0, [1], sender=2),
    "reserved set": lambda w: w.packet(0, 0, [1], reserved=1),
    "shadow bit of another round": lambda w: w.packet(0, 0, [1], slot=SHADOW),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_datagram_is_counted_and_not_answered(serve, workers_of, name):
    agg = serve(2, packet_elems=8)
    w, _ = workers_of(agg, 2)
    w.send(MALFORMED[name](w))
    w.expect_silence()
    stats = agg.stats()
    assert stats["malformed"] == 1
    assert (stats["bad_mac"], stats["contributions"], stats["refused"]) == (0, 0, 1)  # the probe
    assert stats["packets_received"] == 2


def test_with_a_token_only_packets_signed_with_it_count(serve, workers_of):
    agg = serve(2, token="s3cret", packet_elems=8)
    w0, w1 = workers_of(agg, 2, token="s3cret")
    a, b = [3, -4, 5], [-3, 4, 6]
    forged = [w0.packet(0, 0, a, token=""),  # the unkeyed checksum
              w0.packet(0, 0, a, token="other"),  # another job's key
              w0.packet(0, 0, a, sign=False, flags=FLAG_KEYED)]  # claims a MAC, has none
    for p in forged:
        w0.send(p)
    for p in forged:
        w0.expect_rejected(p)
    w0.expect_silence()
    stats = agg.stats()
    assert (stats["bad_mac"], stats["contributions"], stats["malformed"]) == (3, 0, 0)
    w0.contribute(0, 0, a)
    w1.contribute(0, 0, b)
    for w in (w0, w1):
        r = w.receive()
        assert r["type"] == RESULT and r["authentic"] and r["flags"] & FLAG_KEYED, r
        np.testing.assert_array_equal(values_of(r), [0, 0, 11])
        for token in ("", "other"):
            assert not _C.decode_packet(r["bytes"], token=token)["authentic"], token
    # The aggregator's own Error replies are keyed too.
    w0.expect_silence()
    assert agg.stats()["results"] == 1


def test_rejected_notices_are_rationed_per_source_address(serve, workers_of):
    """A worker with the wrong token hears that its packets are rejected, but
    a flood of forged packets gets at most a few header-sized notices a
    second per source address: the aggregator is no amplifier."""
    agg = serve(2, token="s3cret", packet_elems=64)
    flooder, other = workers_of(agg, 2, token="wrong")
    forged = flooder.packet(0, 0, list(range(64)))
    started = time.monotonic()
    for _ in range(50):
        flooder.send(forged)
    flooder.send(flooder.packet(PROBE_SLOT, 0, token="s3cret"))  # answered last
    notices = 0
    while (reply := flooder.receive())["type"] == REJECTED:
        assert len(reply["bytes"]) == HEADER < len(forged), reply
        notices += 1
    assert reply["type"] == ERROR and reply["slot_index"] == PROBE_SLOT, reply
    # The budget is per second: allow for every second the flood took.
    seconds = int(time.monotonic() - started) + 1
    assert 1 <= notices <= NOTICES_PER_ADDRESS * seconds, notices
    # Another address has a budget of its own.
    other.send(forged)
    other.expect_rejected(forged)
    stats = agg.stats()
    assert stats["bad_mac"] == 51 and stats["rejected_notices"] == notices + 1, stats
    assert stats["contributions"] == 0


@pytest.mark.parametrize("what", ["short", "wrong magic", "truncated payload"])
def test_a_malformed_datagram_gets_no_notice(serve, workers_of, what):
    agg = serve(2, token="s3cret", packet_elems=8)
    w, _ = workers_of(agg, 2, token="s3cret")
    w.send(MALFORMED[what](w))
    w.expect_silence()
    assert agg.stats()["rejected_notices"] == 0


def test_listening_beyond_loopback_needs_a_token():
    with pytest.raises(ringflow.InvalidArgument, match="token"):
        _C.Aggregator(2, host="0.0.0.0")
    with pytest.raises(ringflow.InvalidArgument, match="token"):
        ringflow.Aggregator(2, host="0.0.0.0", token="")
    agg = _C.Aggregator(2, host="0.0.0.0", token="s3cret")  # binds, is never started
    assert agg.port > 0
    del agg


# --- the checksum, against an independent model of packet_auth.cc's ------------------------

M64 = (1 << 64) - 1
K1, K2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9


def checksum_model(data: bytes) -> int:
    """Fletcher-style over little-endian u64 words in 4 lanes (word i in lane
    i % 4), the tail zero-padded to a word, then the final mix."""
    padded = data + bytes(-len(data) % 8)
    a, b = [0] * 4, [0] * 4
    for i, word in enumerate(np.frombuffer(padded, dtype="<u8").tolist()):
        lane = i % 4
        a[lane] = (a[lane] + word) & M64
        b[lane] = (b[lane] + a[lane]) & M64
    h = 0
    for lane in range(4):
        h = ((h ^ a[lane]) * K1) & M64
        h = ((h ^ b[lane]) * K1) & M64
    h ^= len(data)
    h ^= h >> 33
    h = (h * K2) & M64
    return h ^ (h >> 29)


@pytest.mark.parametrize("payload_bytes", [0, 3, 4, 8, 12, 24, 35, 40, 61, 4 * 1001,
                                           4 * 16352, 4 * 16352 + 3])
def test_the_checksum_matches_an_independent_model(payload_bytes):
    rng = np.random.default_rng(payload_bytes)
    header = rng.integers(0, 256, HEADER, dtype=np.uint8).tobytes()
    payload = rng.integers(0, 256, payload_bytes, dtype=np.uint8).tobytes()
    assert _C.packet_checksum(header, payload) == checksum_model(header + payload)
    if payload_bytes >= 16:  # the position of every word counts, not only its value
        swapped = payload[8:16] + payload[:8] + payload[16:]
        if swapped != payload:
            assert _C.packet_checksum(header, swapped) != _C.packet_checksum(header, payload)


def test_the_unkeyed_mac_is_the_checksum_of_the_header_without_mac_and_the_payload():
    rng = np.random.default_rng(3)
    for count in (0, 1, 2, 7, 100):
        fields = {"job": 0xABCDEF01, "slot_index": 5, "round": 9, "call": 0x12345678,
                  "sender": 3, "workers": 4, "offset": 2**40 + 1, "total": 2**41,
                  "exponent": -17, "next_exponent": 12}
        payload = rng.integers(-2**31, 2**31, count).astype("<i4").tobytes()
        packet = _C.encode_packet(fields, payload)
        got = dict(zip(FIELDS, LAYOUT.unpack(packet[:HEADER])))
        want = {k: v for k, v in fields.items() if k != "slot_index"}
        want.update(magic=MAGIC, version=VERSION, type=DATA, flags=0, slot=5 | SHADOW,
                    count=count, reserved=0, mac=got["mac"])
        assert got == want
        assert packet[HEADER:] == payload
        unsigned = packet[:HEADER - 8] + bytes(8)
        assert got["mac"] == checksum_model(unsigned + payload)
        assert got["mac"] == _C.decode_packet(packet)["mac"]
        keyed = _C.encode_packet(fields, payload, token="k")
        assert LAYOUT.unpack(keyed[:HEADER])[3] == FLAG_KEYED
        assert _C.decode_packet(keyed, token="k")["mac"] != checksum_model(unsigned + payload)


def test_packets_built_from_the_documented_layout_are_summed(serve):
    """Everything from packet.h alone: struct layout and checksum model."""
    agg = serve(2, packet_elems=8)

    def build(sender, values):
        payload = i32(values).tobytes()
        h = dict(magic=MAGIC, version=VERSION, type=DATA, flags=0, job=42, slot=1 | SHADOW,
                 round=3, call=1, sender=sender, workers=2, count=len(values), offset=0,
                 total=len(values), exponent=0, next_exponent=NO_EXPONENT, reserved=0, mac=0)
        h["mac"] = checksum_model(LAYOUT.pack(*h.values()) + payload)
        return LAYOUT.pack(*h.values()) + payload

    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for rank, s in enumerate(socks):
            s.bind((HOST, 0))
            s.settimeout(RECV_TIMEOUT)
            s.sendto(build(rank, [rank + 1, -rank, 2**29]), (HOST, agg.port))
        for s in socks:
            data = s.recv(1 << 16)
            h = dict(zip(FIELDS, LAYOUT.unpack(data[:HEADER])))
            assert (h["type"], h["round"], h["slot"], h["sender"]) == (RESULT, 3, 1 | SHADOW,
                                                                       NO_WORKER), h
            assert h["mac"] == checksum_model(data[:HEADER - 8] + bytes(8) + data[HEADER:])
            assert np.frombuffer(data[HEADER:], "<i4").tolist() == [3, -1, 2**30]
    finally:
        for s in socks:
            s.close()


# --- bounded memory ------------------------------------------------------------------------

def test_the_job_table_and_its_memory_are_bounded(serve):
    slots, elems = 4, 32
    agg = serve(2, jobs=2, slots=slots, packet_elems=elems)
    w = Worker(agg.port, 0, 2)
    try:
        refused = 0
        for job in range(1, 51):
            w.job = job
            w.contribute(0, 0, [job])
            if job > 2:
                assert w.receive()["count"] == TOO_MANY_JOBS
                refused += 1
        w.job = 1
        w.expect_silence()  # jobs 1 and 2 were taken, silently
    finally:
        w.close()
    stats = agg.stats()
    assert (stats["jobs_opened"], stats["jobs_active"]) == (2, 2)
    assert stats["refused"] == refused + 1 == 49
    assert stats["memory_bytes"] == 2 * memory_per_job(slots, elems)


def test_idle_jobs_are_evicted_and_their_entry_reused(serve, workers_of):
    slots, elems = 2, 8
    agg = serve(2, jobs=1, slots=slots, packet_elems=elems, job_idle_s=0.5)
    (a0,) = workers_of(agg, 2, job=1)[:1]
    b0, b1 = workers_of(agg, 2, job=2)
    a0.contribute(0, 0, [1])
    a0.expect_silence()
    p = b0.contribute(0, 0, [2])
    assert_error(b0.receive(), TOO_MANY_JOBS, _C.decode_packet(p))
    deadline = time.monotonic() + 15
    while agg.stats()["jobs_evicted"] == 0:
        assert time.monotonic() < deadline, f"no eviction: {agg.stats()}"
        time.sleep(0.1)
    stats = agg.stats()
    assert (stats["jobs_evicted"], stats["jobs_active"], stats["memory_bytes"]) == (1, 0, 0)
    b0.contribute(0, 0, [2])
    b1.contribute(0, 0, [40])
    for w in (b0, b1):
        r = w.receive()
        assert r["type"] == RESULT and r["job"] == 2, r
        assert values_of(r).tolist() == [42]
    stats = agg.stats()
    assert (stats["jobs_opened"], stats["jobs_active"]) == (2, 1)
    assert stats["memory_bytes"] == memory_per_job(slots, elems)


def test_a_full_table_names_its_limits_and_the_flags_that_change_them(serve, workers_of):
    agg = serve(2, jobs=1, packet_elems=8, job_idle_s=7.5)
    (a0,) = workers_of(agg, 2, job=1)[:1]
    (b0,) = workers_of(agg, 2, job=2)[:1]
    a0.contribute(0, 0, [1])
    p = b0.contribute(0, 0, [2])
    reply = b0.receive()
    assert_error(reply, TOO_MANY_JOBS, _C.decode_packet(p))
    assert (reply["offset"], reply["total"]) == (1, 7500), reply  # --jobs, --job-idle-s in ms
    for phrase in ("--jobs 1", "--job-idle-s", "7.5 s", "shut down"):
        assert phrase in reply["error"], (phrase, reply["error"])


def test_a_job_every_worker_said_goodbye_to_frees_its_entry_at_once(serve, workers_of):
    slots, elems = 2, 8
    agg = serve(2, jobs=1, slots=slots, packet_elems=elems, job_idle_s=3600)
    a0, a1 = workers_of(agg, 2, job=1)
    b0, b1 = workers_of(agg, 2, job=2)
    a0.contribute(0, 0, [1])
    a1.contribute(0, 0, [2])
    for w in (a0, a1):
        assert values_of(w.receive()).tolist() == [3]
    a0.goodbye()
    a0.goodbye()  # a copy, as UDP may deliver one
    a0.expect_silence()
    assert agg.stats()["jobs_active"] == 1, "freed before every worker said goodbye"
    p = b0.contribute(0, 0, [5])
    assert_error(b0.receive(), TOO_MANY_JOBS, _C.decode_packet(p))
    a1.goodbye()
    a1.expect_silence()
    stats = agg.stats()
    assert (stats["jobs_closed"], stats["jobs_active"], stats["memory_bytes"]) == (1, 0, 0), stats
    assert stats["jobs_evicted"] == 0
    # A late packet of the closed job opens nothing; the next job gets the entry.
    a0.contribute(1, 0, [1])
    a0.expect_silence()
    b0.contribute(0, 0, [5])
    b1.contribute(0, 0, [37])
    for w in (b0, b1):
        r = w.receive()
        assert r["type"] == RESULT and values_of(r).tolist() == [42], r
    stats = agg.stats()
    assert (stats["jobs_opened"], stats["jobs_active"]) == (2, 1), stats
    assert stats["memory_bytes"] == memory_per_job(slots, elems)


def test_a_goodbye_without_the_token_frees_nothing(serve, workers_of):
    agg = serve(2, jobs=1, packet_elems=8, token="s3cret", job_idle_s=3600)
    a0, a1 = workers_of(agg, 2, job=1, token="s3cret")
    a0.contribute(0, 0, [1])
    a0.expect_silence()
    for w in (a0, a1):
        forged = w.packet(0, 0, type=GOODBYE, token="other")
        w.send(forged)
        w.expect_rejected(forged)
    a1.send(a1.packet(0, 0, type=GOODBYE, count=1, values=[1]))  # goodbyes carry nothing
    a1.expect_silence()
    stats = agg.stats()
    assert (stats["jobs_active"], stats["jobs_closed"], stats["malformed"]) == (1, 0, 1), stats
    # Nor does a goodbye open a job.
    (c0,) = workers_of(agg, 2, job=3, token="s3cret")[:1]
    c0.goodbye()
    c0.expect_silence()
    assert agg.stats()["jobs_opened"] == 1


# --- the command ---------------------------------------------------------------------------

def test_the_aggregator_command_serves_and_prints_its_counters_on_sigterm(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGFLOW_AGG")}
    # This interpreter's path: the installed package in CI, the checkout here.
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    stderr = open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "ringflow.cli", "aggregator", "--port", "0",
                             "--workers", "2"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)
    lines: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    ws = []
    try:
        first = lines.get(timeout=60)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", first or "")
        assert m, (first, (tmp_path / "stderr").read_text())
        port = int(m.group(1))
        ws = [Worker(port, r, 2, job=5) for r in range(2)]
        ws[0].contribute(0, 0, [7, -8])
        ws[1].contribute(0, 0, [1, 10])
        for w in ws:
            r = w.receive()  # so the service, and its signal handlers, are up
            assert r["type"] == RESULT and values_of(r).tolist() == [8, 2], r
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "stderr").read_text()
        rest = []
        while (line := lines.get(timeout=10)) is not None:
            rest.append(line)
        assert rest, "nothing printed at exit"
        counters = json.loads(rest[-1])
        assert (counters["results"], counters["contributions"], counters["elements"]) == (1, 2, 2)
        assert counters["packets_received"] == counters["packets_sent"] == 2
    finally:
        for w in ws:
            w.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()


def test_the_command_refuses_a_host_beyond_loopback_without_a_token_in_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGFLOW_AGG")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    proc = subprocess.run([sys.executable, "-m", "ringflow.cli", "aggregator", "--host", "0.0.0.0",
                           "--port", "0", "--workers", "2"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "RINGFLOW_AGG_TOKEN" in lines[0] and "0.0.0.0" in lines[0], lines[0]
    assert proc.stdout == "", proc.stdout
