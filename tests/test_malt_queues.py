"""MALT's receive queues and merge (csrc/malt/): pushes and merges against
numpy, the full-queue policies, merges that never wait on a writer (one
frozen mid-write in this process, one stopped by SIGSTOP in another), no
torn reads under a live writer, and departures."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ringflow import _C

DROP, COALESCE = _C.MaltFullPolicy.drop_oldest, _C.MaltFullPolicy.coalesce


def _box(n=1000, senders=3, slots=3, policy=DROP):
    inbox = _C.MaltInbox(senders, n, slots, policy)
    outs = [_C.MaltOutbox(inbox.pid, inbox.fd, inbox.bytes, s, n) for s in range(senders)]
    return inbox, outs


def _merge_all(inbox, dst, weight=1.0, self_weight=1.0):
    takes = [(a.sender, a.slot, a.seq, weight) for a in inbox.arrivals()]
    return inbox.merge(dst.data_ptr(), takes, self_weight)


def test_merge_is_the_weighted_average():
    inbox, outs = _box()
    rng = np.random.default_rng(0)
    xs = [torch.from_numpy(rng.standard_normal(1000).astype(np.float32)) for _ in outs]
    for s, (o, x) in enumerate(zip(outs, xs)):
        assert o.push(x.data_ptr(), 10 + s) == 1
    arr = inbox.arrivals()
    assert sorted((a.sender, a.step, a.count) for a in arr) == [(0, 10, 1), (1, 11, 1), (2, 12, 1)]
    dst = torch.from_numpy(rng.standard_normal(1000).astype(np.float32))
    want = dst.double().numpy().copy()
    ws = {a.sender: 0.25 * (a.sender + 1) for a in arr}
    got = inbox.merge(dst.data_ptr(), [(a.sender, a.slot, a.seq, ws[a.sender]) for a in arr], 2.0)
    want = (2.0 * want + sum(ws[s] * xs[s].double().numpy() for s in range(3))) / (2.0 + sum(ws.values()))
    np.testing.assert_allclose(dst.numpy(), want, rtol=1e-5, atol=1e-6)
    assert got["merged"] == 3 and got["weight"] == pytest.approx(1.5)
    assert inbox.arrivals() == [] and inbox.counts(1)["merged"] == 1


def test_full_ring_drops_the_oldest():
    inbox, (o,) = _box(n=64, senders=1, slots=3)
    xs = [torch.full((64,), float(i)) for i in range(1, 6)]  # alive while pushed
    for i, x in enumerate(xs, 1):
        o.push(x.data_ptr(), i)
    assert sorted(a.seq for a in inbox.arrivals()) == [3, 4, 5]
    assert o.counts() == {"pushes": 5, "dropped": 2, "coalesced": 0, "merged": 0}
    newest = max(inbox.arrivals(), key=lambda a: a.seq)
    dst = torch.zeros(64)
    inbox.merge(dst.data_ptr(), [(0, newest.slot, newest.seq, 1.0)], 0.0)
    assert torch.equal(dst, torch.full((64,), 5.0))


def test_full_ring_coalesces_into_the_newest():
    inbox, (o,) = _box(n=64, senders=1, slots=2, policy=COALESCE)
    xs = [torch.randn(64) for _ in range(4)]
    for i, x in enumerate(xs):
        o.push(x.data_ptr(), i)
    arr = sorted(inbox.arrivals(), key=lambda a: a.seq)
    assert [a.count for a in arr] == [1, 3] and o.counts()["coalesced"] == 2
    dst = torch.zeros(64)
    # A merge holds at most slots-1 slots of a ring (one stays free for the
    # producer): the second update waits for the next merge, nothing is lost.
    first = _merge_all(inbox, dst)
    assert (first["merged"], first["skipped"]) == (1, 1)
    second = _merge_all(inbox, dst)
    assert second["merged"] == 1 and second["weight"] == 3.0 and inbox.arrivals() == []
    want = (xs[0] / 2 + xs[1] + xs[2] + xs[3]) / 4
    torch.testing.assert_close(dst, want, rtol=1e-5, atol=1e-6)


def test_a_listed_slot_rewritten_since_is_skipped():
    inbox, (o,) = _box(n=16, senders=1, slots=2)
    x, dst = torch.ones(16), torch.zeros(16)
    o.push(x.data_ptr(), 1)
    stale = inbox.arrivals()
    o.push(x.data_ptr(), 2)
    o.push(x.data_ptr(), 3)  # overwrites the first
    got = inbox.merge(dst.data_ptr(), [(0, a.slot, a.seq, 1.0) for a in stale], 1.0)
    assert got["skipped"] == 1 and got["merged"] == 0


def test_merge_never_waits_on_a_sender_frozen_mid_write():
    inbox, (a, b) = _box(n=4096, senders=2, slots=2)
    three, seven, junk = (torch.full((4096,), v) for v in (3.0, 7.0, -1.0))
    b.push(three.data_ptr(), 1)
    a.push(seven.data_ptr(), 1)
    a._push_half_for_test(junk.data_ptr())  # claims a slot, never publishes
    arr = inbox.arrivals()
    assert sorted((x.sender, x.seq) for x in arr) == [(0, 1), (1, 1)]
    dst = torch.zeros(4096)
    t0 = time.monotonic()
    got = _merge_all(inbox, dst, self_weight=0.0)
    assert time.monotonic() - t0 < 1.0 and got["merged"] == 2
    assert torch.equal(dst, torch.full((4096,), 5.0))


def _pusher(info, n, stop_after):
    pid, fd, nbytes = info
    out = _C.MaltOutbox(pid, fd, nbytes, 0, n)
    # numpy, not torch: a forked child must not enter the parent's OpenMP pool.
    buf = np.empty(n, np.float32)
    end = time.monotonic() + stop_after
    i = 0
    while time.monotonic() < end:
        i += 1
        buf.fill(i)  # every update is uniform: a torn read would show
        out.push(buf.ctypes.data, i)


def test_merges_under_a_live_and_a_stopped_writer_are_whole():
    n = 1 << 20
    inbox = _C.MaltInbox(1, n, 3, DROP)
    child = mp.get_context("fork").Process(target=_pusher, args=((inbox.pid, inbox.fd, inbox.bytes), n, 20))
    child.start()
    try:
        dst = torch.empty(n)
        seen, stopped_merges, i = set(), 0, 0
        deadline = time.monotonic() + 30
        while (len(seen) < 40 or stopped_merges < 5) and time.monotonic() < deadline:
            assert child.is_alive(), "the pushing process died"
            i += 1
            stop = i % 7 == 0 and seen  # most likely mid-copy: 4 MiB per push
            if stop:
                os.kill(child.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            got = _merge_all(inbox, dst, self_weight=0.0)
            assert time.monotonic() - t0 < 1.0
            if stop:
                os.kill(child.pid, signal.SIGCONT)
                stopped_merges += 1
            if got["merged"]:
                assert dst.min() == dst.max(), "a merge read a torn update"
                seen.add(float(dst[0]))
            time.sleep(0.001)
        assert len(seen) >= 40 and stopped_merges >= 5
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.kill()
        child.join(10)


def _owner(conn, n):
    inbox = _C.MaltInbox(1, n, 2, DROP)
    conn.send((inbox.pid, inbox.fd, inbox.bytes))
    if conn.recv() == "close":
        inbox.close()
    time.sleep(60)


@pytest.mark.parametrize("how", ["sigkill", "close"])
def test_a_departed_owner_is_noticed_within_the_bound(how):
    parent, child_end = mp.get_context("fork").Pipe()
    child = mp.get_context("fork").Process(target=_owner, args=(child_end, 256))
    child.start()
    try:
        pid, fd, nbytes = parent.recv()
        out = _C.MaltOutbox(pid, fd, nbytes, 0, 256)
        x = torch.ones(256)
        assert out.alive(0.5)
        out.push(x.data_ptr(), 1)
        if how == "sigkill":
            child.kill()
        else:
            parent.send("close")
        t0 = time.monotonic()
        while out.alive(0.5):
            assert time.monotonic() - t0 < 3.0, "departure not noticed"
            time.sleep(0.01)
        took = time.monotonic() - t0
        assert took < 0.5 + 0.3
        out.push(x.data_ptr(), 2)  # still harmless: the memory stays mapped
    finally:
        child.kill()
        child.join(10)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="2..64 slots"):
        _C.MaltInbox(1, 16, 1, DROP)
    with pytest.raises(ValueError, match="at least one float"):
        _C.MaltInbox(1, 0, 2, DROP)
    inbox = _C.MaltInbox(2, 16, 2, DROP)
    with pytest.raises(ValueError, match="updates of 16 floats, not 8"):
        _C.MaltOutbox(inbox.pid, inbox.fd, _C.MaltInbox(2, 8, 2, DROP).bytes, 0, 8)
    with pytest.raises(ValueError, match="no ring for sender 2"):
        _C.MaltOutbox(inbox.pid, inbox.fd, inbox.bytes, 2, 16)
    with pytest.raises(_C.PeerError, match="cannot open"):
        _C.MaltOutbox(inbox.pid, 99999, inbox.bytes, 0, 16)
    with pytest.raises(ValueError, match="no MALT ring for sender 5"):
        dst = torch.zeros(16)
        inbox.merge(dst.data_ptr(), [(5, 0, 1, 1.0)], 1.0)


def test_the_queues_and_merge_take_no_lock():
    # By construction: the push and merge paths are atomics only.  No
    # mutex, condition variable, futex or semaphore anywhere in csrc/malt.
    src = Path(__file__).resolve().parent.parent / "csrc" / "malt"
    text = "\n".join(p.read_text() for p in sorted(src.glob("*.[ch]*")))
    assert "reading.fetch_or" in text  # the handshake this relies on is there
    found = re.findall(r"\b(mutex|lock_guard|unique_lock|scoped_lock|condition_variable|futex|sem_wait|"
                       r"pthread_mutex\w*|flock)\b", text)
    assert found == []


def test_weighted_sum_kernel_matches_numpy():
    rng = np.random.default_rng(1)
    n = 10007  # not a multiple of the block or the vector width
    out = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    xs = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for _ in range(3)]
    want = 0.5 * out.double().numpy() + sum(w * x.double().numpy() for w, x in zip([0.1, 0.2, 0.3], xs))
    _C.malt_weighted_sum(out.data_ptr(), 0.5, [x.data_ptr() for x in xs], [0.1, 0.2, 0.3], n)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)
