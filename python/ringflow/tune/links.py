"""Measuring every rank pair's latency and bandwidth (mechanism 9's input).

Pairs are measured in parallel rounds: in a round each rank is in at most
one pair, and at most one pair crosses any one pair of hosts (two pairs
sharing a host link would each see half of it).  Every rank computes the
same rounds from the host list; before each round rank 0 says whether the
time bound still allows it, so every rank stops at the same round.  Pairs
left unmeasured take the figures of a measured pair on the same link, or
the slowest measured link.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .._dtypes import REDUCE_OP_CODE, numpy_dtype_code
from .pattern import Links

_U8 = numpy_dtype_code(np.uint8)
_I64 = numpy_dtype_code(np.int64)
_F64 = numpy_dtype_code(np.float64)
_TAG = 0x7E57  # the tuner's p2p messages, apart from users' tags


def link_of(hosts, a: int, b: int):
    """What pairs (a, b) share: a host pair's link, or nothing (same host)."""
    ha, hb = hosts[a], hosts[b]
    return ("pair", a, b) if ha == hb else ("hosts",) + tuple(sorted((ha, hb)))


def plan_rounds(hosts) -> list[list[tuple[int, int]]]:
    """Every unordered rank pair once, packed first-fit into rounds of
    disjoint ranks and distinct host links, the pairs taken in the
    round-robin (circle) order so that a single host packs n-1 rounds."""
    n = len(hosts)
    m = n + n % 2
    ring = list(range(m))
    pairs = []
    for _ in range(m - 1):
        for i in range(m // 2):
            a, b = ring[i], ring[m - 1 - i]
            if max(a, b) < n:
                pairs.append((min(a, b), max(a, b)))
        ring = [ring[0]] + [ring[-1]] + ring[1:-1]
    rounds: list[tuple[set, set, list]] = []
    for a, b in pairs:
        link = link_of(hosts, a, b)
        for ranks, links, chosen in rounds:
            if a not in ranks and b not in ranks and link not in links:
                break
        else:
            ranks, links, chosen = set(), set(), []
            rounds.append((ranks, links, chosen))
        ranks.update((a, b))
        links.add(link)
        chosen.append((a, b))
    return [chosen for _, _, chosen in rounds]


class _Peer:
    """Blocking sends and receives of numpy buffers with one pair, each with a timeout."""

    def __init__(self, comm, peer: int, timeout: float):
        self.comm, self.peer, self.timeout = comm, peer, timeout

    def _wait(self, work, what):
        if not work.wait(self.timeout):
            raise TimeoutError(f"link measurement: {what} rank {self.peer} took over {self.timeout}s")
        work.wait()

    def send(self, buf: np.ndarray):
        self._wait(self.comm.send(buf.ctypes.data, buf.size, _U8, self.peer, _TAG), "send to")

    def recv(self, buf: np.ndarray):
        self._wait(self.comm.recv(buf.ctypes.data, buf.size, _U8, self.peer, _TAG), "receive from")


def _measure_pair(comm, me: int, peer: int, nbytes: int, reps: int, timeout: float):
    """Both ends run this; the lower rank starts.  Returns (latency_s, my
    bandwidth towards the peer): round trips of 8 bytes, then each side
    sends nbytes and times it to the peer's 8-byte acknowledgement."""
    p = _Peer(comm, peer, timeout)
    small, big = np.zeros(8, np.uint8), np.zeros(nbytes, np.uint8)
    first = me < peer
    rtt = float("inf")
    for _ in range(2 * reps + 1):  # the first round trip warms the path up
        t0 = time.perf_counter()
        if first:
            p.send(small)
            p.recv(small)
        else:
            p.recv(small)
            p.send(small)
        rtt = min(rtt, time.perf_counter() - t0)
    best = float("inf")
    for sender in (first, not first):
        for _ in range(reps):
            if sender:
                t0 = time.perf_counter()
                p.send(big)
                p.recv(small)
                best = min(best, time.perf_counter() - t0)
            else:
                p.recv(big)
                p.send(small)
    # The acknowledgement's round trip is not transfer time; but on a busy
    # host the best small round trip may itself be a slow one, so take off
    # at most half.
    return rtt / 2, nbytes / max(best - rtt, best / 2)


def measure(comm, hosts, nbytes: int = 2 << 20, reps: int = 2, time_bound_s: float = 20.0,
            timeout: float = 30.0) -> tuple[Links, dict]:
    """Measures the links of `comm` (a _C.Comm) whose rank r runs on hosts[r].
    Collective: every rank calls it and gets the same Links, plus a summary
    (rounds planned and run, seconds)."""
    n, me = comm.size, comm.rank
    if len(hosts) != n:
        raise ValueError(f"link measurement: {len(hosts)} hosts for {n} ranks")
    rounds = plan_rounds(hosts)
    lat = np.zeros((n, n))
    bw = np.zeros((n, n))
    flag = np.zeros(1, np.int64)
    t0 = time.perf_counter()
    ran = 0
    for pairs in rounds:
        flag[0] = int(time.perf_counter() - t0 < time_bound_s)
        comm.broadcast(flag.ctypes.data, 1, _I64, 0, True).wait()
        if not flag[0]:
            break
        ran += 1
        for a, b in pairs:
            if me in (a, b):
                peer = b if me == a else a
                latency, bandwidth = _measure_pair(comm, me, peer, nbytes, reps, timeout)
                bw[me, peer] = bandwidth
                if me == a:
                    lat[a, b] = lat[b, a] = latency
    cpus = np.zeros(n)
    cpus[me] = len(os.sched_getaffinity(0))
    # Each entry was measured by one rank: a sum hands everyone all of them.
    both = np.concatenate([lat.ravel(), bw.ravel(), cpus])
    comm.allreduce(both.ctypes.data, both.size, _F64, REDUCE_OP_CODE["sum"], True).wait()
    lat, bw = both[:n * n].reshape(n, n), both[n * n:2 * n * n].reshape(n, n)
    _fill_unmeasured(hosts, lat, bw)
    links = Links(tuple(hosts), tuple(map(tuple, lat.tolist())), tuple(map(tuple, bw.tolist())),
                  tuple(int(c) for c in both[2 * n * n:]))
    return links, {"rounds": len(rounds), "rounds_run": ran, "seconds": time.perf_counter() - t0,
                   "complete": ran == len(rounds)}


def _fill_unmeasured(hosts, lat, bw) -> None:
    n = len(hosts)
    known = [(a, b) for a in range(n) for b in range(n) if a != b and bw[a, b] > 0]
    if not known:
        raise RuntimeError("link measurement: the time bound allowed no round at all")
    for a in range(n):
        for b in range(n):
            if a == b or bw[a, b] > 0:
                continue
            inside = hosts[a] == hosts[b]
            same = ([(x, y) for x, y in known if link_of(hosts, x, y) == link_of(hosts, a, b)
                     and hosts[x] == hosts[a]]
                    or [(x, y) for x, y in known if (hosts[x] == hosts[y]) == inside] or known)
            bw[a, b] = min(bw[x, y] for x, y in same)
            lat[a, b] = lat[b, a] = max(max(lat[x, y] for x, y in same), lat[a, b])
