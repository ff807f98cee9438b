"""The packet aggregator at the protocol level, sums and integrity: fake
workers (aggregator_harness.py) check exact sums, exactly-once adding
across duplicates, lost results and stale rounds, the Error replies, packet
integrity and the rationed Rejected notices.

Silence is checked with a probe rather than a timeout: the aggregator
handles one socket's datagrams in order and answers in order, so when a
worker sends a packet and then a probe (a slot index beyond the table,
answered with an Error), the first reply it gets must be the probe's."""

from __future__ import annotations

import time

import numpy as np
import pytest

import ringflow
from ringflow import _C

from aggregator_harness import (  # noqa: F401 - pytest finds the fixtures by name
    ERROR, FLAG_KEYED, HEADER, INCONSISTENT, INT32_MAX, MAGIC, NOTICES_PER_ADDRESS, NO_WORKER,
    PROBE_SLOT, REJECTED, RESULT, SHADOW, SLOT_OUT_OF_RANGE, TOO_MANY_ELEMENTS, TOO_MANY_JOBS,
    WRONG_WORKERS, Worker, assert_error, i32, memory_per_job, serve, values_of, workers_of,
)


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
    flooder, *others = workers_of(agg, 4, token="wrong")
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
    # Every other address has a budget of its own, whatever its address
    # hashes to: the limiter looks at NoticeLimiter::kProbes (4) entries,
    # so the four addresses here always find one free (with one entry each
    # this failed whenever two random ports shared one of 64 entries).
    for other in others:
        other.send(forged)
        other.expect_rejected(forged)
    stats = agg.stats()
    assert stats["bad_mac"] == 50 + len(others), stats
    assert stats["rejected_notices"] == notices + len(others), stats
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
