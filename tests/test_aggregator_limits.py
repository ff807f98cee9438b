"""The packet aggregator's checksum against an independent model, its
bounded job table (eviction, goodbyes that free a job's entry, the message
of a full table), and the `ringflow aggregator` command."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ringflow import _C

from aggregator_harness import (  # noqa: F401 - pytest finds the fixtures by name
    DATA, FIELDS, FLAG_KEYED, GOODBYE, HEADER, HOST, LAYOUT, MAGIC, NO_EXPONENT, NO_WORKER,
    RECV_TIMEOUT, REPO, RESULT, SHADOW, TOO_MANY_JOBS, VERSION, Worker, assert_error, i32,
    memory_per_job, serve, values_of, workers_of,
)


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
    def mix(x):
        return ((x ^ (x >> 32)) * K1) & M64

    h = 0
    for lane in range(4):
        h = mix(h ^ a[lane])
        h = mix(h ^ b[lane])
    h ^= len(data)
    h ^= h >> 33
    h = (h * K2) & M64
    return h ^ (h >> 29)


@pytest.mark.parametrize("payload_bytes", [0, 3, 4, 8, 12, 24, 35, 40, 61, 4 * 1001,
                                           4 * 16352, 4 * 16352 + 3])
def test_the_checksum_matches_an_independent_model(payload_bytes, simd_level):
    rng = np.random.default_rng(payload_bytes)
    header = rng.integers(0, 256, HEADER, dtype=np.uint8).tobytes()
    payload = rng.integers(0, 256, payload_bytes, dtype=np.uint8).tobytes()
    assert _C.packet_checksum(header, payload) == checksum_model(header + payload)
    if payload_bytes >= 16:  # the position of every word counts, not only its value
        swapped = payload[8:16] + payload[:8] + payload[16:]
        if swapped != payload:
            assert _C.packet_checksum(header, swapped) != _C.packet_checksum(header, payload)


def test_the_checksum_catches_every_single_bit_error():
    """Workers check a result's checksum only after dequantising it into the
    tensor (client.cc), so a missed flip would be a wrong sum; the checksum
    once missed flips of a word's top bits (they cancelled in the final mix)."""
    rng = np.random.default_rng(7)
    payload = rng.integers(-2**31, 2**31, 257).astype("<i4").tobytes()
    packet = _C.encode_packet({"type": RESULT, "count": 257, "workers": 2}, payload)
    assert _C.decode_packet(packet)["authentic"]
    missed = []
    for byte in range(len(packet)):
        for bit in range(8):
            bad = bytearray(packet)
            bad[byte] ^= 1 << bit
            if _C.decode_packet(bytes(bad))["authentic"]:
                missed.append((byte, bit))
    assert not missed, f"{len(missed)} single-bit errors pass, e.g. (byte, bit) {missed[:5]}"


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
