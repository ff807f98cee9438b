"""Fake workers for the packet aggregator: raw UDP sockets that speak the
wire format of ringflow/packet.h, the fixtures that start in-process
aggregators, and the packet layout the tests check against."""

from __future__ import annotations

import select
import socket
import struct
import threading
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

class UdpRelay:
    """Stands between workers and an aggregator (RINGFLOW_AGGREGATOR names
    `address`): one socket towards the aggregator per worker, so the
    aggregator still tells the workers apart.  What goes up is forwarded as
    it is; what comes back goes through back(), which a test overrides to
    tamper with it or add to it."""

    def __init__(self, aggregator_port: int):
        self.aggregator = (HOST, aggregator_port)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind((HOST, 0))
        self.address = f"{HOST}:{self.front.getsockname()[1]}"
        self.upstream: dict = {}   # worker address -> its socket towards the aggregator
        self.worker_of: dict = {}  # that socket -> the worker address
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def back(self, data: bytes, worker) -> list[bytes]:
        """The datagrams sent to `worker` for `data` from the aggregator."""
        return [data]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join(10)
        for s in (self.front, *self.upstream.values()):
            s.close()

    def _run(self):
        while not self._done.is_set():
            ready, _, _ = select.select([self.front, *self.upstream.values()], [], [], 0.05)
            for s in ready:
                data, source = s.recvfrom(1 << 17)
                if s is self.front:
                    if source not in self.upstream:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.connect(self.aggregator)
                        self.upstream[source], self.worker_of[up] = up, source
                    self.upstream[source].send(data)
                else:
                    worker = self.worker_of[s]
                    for out in self.back(data, worker):
                        self.front.sendto(out, worker)


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
