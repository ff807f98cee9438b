"""MALT's cross-host streams (csrc/malt/stream_*.cc) over loopback: updates
land in the sender's ring of the receiver's Inbox intact (against numpy),
in order, coalesced ones with their count; strangers are refused; a push
never waits on a receiver that stopped reading (the sender's queue drops the
oldest instead); and a peer is dropped within the stated bounds: at once
when its process is killed or it closes, after depart_after when its beats
stop (SIGSTOP), and back when they resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import ringflow
from ringflow import _C

DROP, COALESCE = _C.MaltFullPolicy.drop_oldest, _C.MaltFullPolicy.coalesce
TOKEN = 12345


def _until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _pair(n=1000, sender=2, policy=DROP, newest_only=False, slots=4, token=TOKEN):
    inbox = _C.MaltInbox(4, n, slots, policy)
    listener = _C.MaltStreamListener(inbox, "127.0.0.1", TOKEN, [sender, 3])
    out = _C.MaltStreamOutbox(f"127.0.0.1:{listener.port}", sender, n, slots, policy, newest_only,
                              token, 10.0)
    return inbox, listener, out


def test_pushes_arrive_whole_in_the_senders_ring_in_order():
    inbox, listener, out = _pair()
    rng = np.random.default_rng(1)
    xs = [torch.from_numpy(rng.standard_normal(1000).astype(np.float32)) for _ in range(3)]
    for i, x in enumerate(xs):
        assert out.push(x.data_ptr(), 10 + i) == i + 1
    assert _until(lambda: len(inbox.arrivals()) == 3)
    arr = sorted(inbox.arrivals(), key=lambda a: a.seq)
    assert [(a.sender, a.step, a.count) for a in arr] == [(2, 10, 1), (2, 11, 1), (2, 12, 1)]
    for a, x in zip(arr, xs):  # self weight 0: the merge copies the update
        dst = torch.zeros(1000)
        assert inbox.merge(dst.data_ptr(), [(a.sender, a.slot, a.seq, 1.0)], 0.0)["merged"] == 1
        np.testing.assert_array_equal(dst.numpy(), x.numpy())
    assert _until(lambda: out.counts()["merged"] == 3)
    assert out.alive(5.0)
    out.close(1.0)
    listener.close()


def test_coalesced_updates_cross_with_their_count():
    inbox, listener, out = _pair(n=256, policy=COALESCE, slots=2)
    xs = [torch.full((256,), float(i)) for i in range(1, 6)]
    for i, x in enumerate(xs):
        out.push(x.data_ptr(), i)
    assert _until(lambda: sum(a.count for a in inbox.arrivals()) == 5)
    total = np.zeros(256)
    for a in inbox.arrivals():  # self weight 0: the merge gives the slot's sum / its count
        dst = torch.zeros(256)
        assert inbox.merge(dst.data_ptr(), [(a.sender, a.slot, a.seq, 1.0)], 0.0)["weight"] == a.count
        total += dst.double().numpy() * a.count
    np.testing.assert_allclose(total, np.full(256, 15.0), rtol=1e-6)
    out.close(1.0)
    listener.close()


@pytest.mark.parametrize("bad", ["token", "count", "sender"])
def test_strangers_are_refused(bad):
    inbox = _C.MaltInbox(4, 100, 2, DROP)
    listener = _C.MaltStreamListener(inbox, "127.0.0.1", TOKEN, [3])
    args = {"token": TOKEN + 1 if bad == "token" else TOKEN, "count": 99 if bad == "count" else 100,
            "sender": 1 if bad == "sender" else 3}
    out = _C.MaltStreamOutbox(f"127.0.0.1:{listener.port}", args["sender"], args["count"], 2, DROP,
                              True, args["token"], 10.0)
    assert _until(lambda: not out.alive(60.0), 5.0), "the listener kept a stranger's stream"
    x = torch.ones(args["count"])
    out.push(x.data_ptr(), 1)  # to a refused peer: still returns
    time.sleep(0.1)
    assert inbox.arrivals() == []
    listener.close()


def test_bad_arguments_are_named():
    inbox = _C.MaltInbox(2, 10, 2, DROP)
    with pytest.raises(ValueError, match="no ring for sender 5"):
        _C.MaltStreamListener(inbox, "127.0.0.1", TOKEN, [5])
    with pytest.raises(ringflow.TimeoutError, match="MALT inbox"):
        _C.MaltStreamOutbox("127.0.0.1:1", 0, 10, 2, DROP, True, TOKEN, 0.2)


def test_closing_the_listener_departs_the_peer_at_once():
    inbox, listener, out = _pair()
    assert out.alive(0.5)
    listener.close()
    assert _until(lambda: not out.alive(60.0), 1.0)


_RECEIVER = """
import sys, time
import ringflow
from ringflow import _C
inbox = _C.MaltInbox(2, int(sys.argv[1]), 2, _C.MaltFullPolicy.drop_oldest)
listener = _C.MaltStreamListener(inbox, "127.0.0.1", int(sys.argv[2]), [0])
print(listener.port, flush=True)
time.sleep(600)
"""


@pytest.fixture
def receiver():
    """A listener in another process, to stop and kill; (process, port)."""
    n = 1 << 20  # 4 MiB updates: a few fill the socket buffers
    proc = subprocess.Popen([sys.executable, "-c", _RECEIVER, str(n), str(TOKEN)],
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc, int(proc.stdout.readline()), n
    finally:
        proc.kill()
        proc.wait()


def test_a_push_never_waits_on_a_stopped_receiver(receiver):
    proc, port, n = receiver
    out = _C.MaltStreamOutbox(f"127.0.0.1:{port}", 0, n, 3, DROP, False, TOKEN, 10.0)
    os.kill(proc.pid, signal.SIGSTOP)
    x = torch.randn(n)
    worst = 0.0
    for step in range(60):  # 240 MiB into a receiver that reads nothing
        t = time.monotonic()
        out.push(x.data_ptr(), step)
        worst = max(worst, time.monotonic() - t)
    counts = out.counts()
    os.kill(proc.pid, signal.SIGCONT)
    # A hang check, not a timing target: one push is a 4 MiB copy.
    assert worst < 1.0, f"a push took {worst:.2f} s"
    assert counts["pushes"] == 60 and counts["dropped"] > 0, counts
    out.close(0.0)


def test_a_silent_peer_departs_after_the_bound_and_a_killed_one_at_once(receiver):
    proc, port, n = receiver
    out = _C.MaltStreamOutbox(f"127.0.0.1:{port}", 0, n, 2, DROP, True, TOKEN, 10.0)
    assert _until(lambda: out.alive(0.3), 2.0)
    os.kill(proc.pid, signal.SIGSTOP)  # beats stop; the stream stays open
    t = time.monotonic()
    assert _until(lambda: not out.alive(0.3), 5.0)
    assert time.monotonic() - t >= 0.2  # not before the bound (beats come every 50 ms)
    os.kill(proc.pid, signal.SIGCONT)
    assert _until(lambda: out.alive(0.3), 5.0), "the peer's beats came back but it stayed departed"
    proc.kill()
    t = time.monotonic()
    # depart_after 60 s: only the stream's end can explain a quick departure.
    assert _until(lambda: not out.alive(60.0), 2.0), "a killed peer still counts as alive"
    out.close(0.0)
