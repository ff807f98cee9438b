"""The Halton send graph (python/ringflow/malt/graph.py): its reach, its
balance, and the staleness policy, checked against plain BFS and counting."""

from __future__ import annotations

import math
from collections import Counter, deque
from types import SimpleNamespace

import pytest

from ringflow.malt import Staleness, choose, default_k, halton_offsets, send_targets


def _hops(n: int, k: int | None, sources=None) -> int:
    """The most hops a rank of `sources` (default: all) needs to reach any other (BFS)."""
    ranks = list(range(n))
    edges = {r: send_targets(r, ranks, k) for r in ranks}
    worst = 0
    for src in ranks if sources is None else sources:
        dist = {src: 0}
        todo = deque([src])
        while todo:
            u = todo.popleft()
            for v in edges[u]:
                if v not in dist:
                    dist[v] = dist[u] + 1
                    todo.append(v)
        assert len(dist) == n, f"n={n}, k={k}: rank {src} reaches only {sorted(dist)}"
        worst = max(worst, max(dist.values()))
    return worst


def test_default_graph_reaches_everyone_within_log2_n_hops():
    for n in range(2, 65):
        assert default_k(n) == min(n - 1, math.ceil(math.log2(n)))
        assert _hops(n, None) <= math.ceil(math.log2(n)), n
    # The graph is circulant, so every rank sees the same distances: BFS
    # from rank 0 alone covers the larger worlds.
    for n in range(65, 513):
        assert _hops(n, None, sources=[0]) <= math.ceil(math.log2(n)), n


@pytest.mark.parametrize("n,k", [(5, 1), (8, 2), (16, 3), (33, 2), (100, 5)])
def test_any_k_is_connected(n, k):
    # The offset 1 (h_0 = 0) is always there: k = 1 is the ring.
    assert _hops(n, k) <= (n - 1 if k == 1 else n)


@pytest.mark.parametrize("n,k", [(4, None), (7, 3), (16, None), (50, 4)])
def test_every_rank_sends_and_receives_k(n, k):
    ranks = list(range(n))
    want = default_k(n) if k is None else k
    sends = {r: send_targets(r, ranks, k) for r in ranks}
    received = Counter(t for ts in sends.values() for t in ts)
    assert all(len(set(ts)) == len(ts) == want and r not in ts for r, ts in sends.items())
    assert set(received.values()) == {want}


def test_offsets_follow_the_halton_sequence():
    # round(N ** h) for h = 0, 1/2, 1/4, 3/4 with N = 16: 1, 4, 2, 8.
    assert halton_offsets(16, 4) == [1, 4, 2, 8]
    assert halton_offsets(4) == [1, 2]


def test_departed_ranks_leave_the_graph():
    live = [0, 1, 3, 4, 6]  # 2 and 5 departed
    for r in live:
        ts = send_targets(r, live)
        assert set(ts) <= set(live) - {r} and len(ts) == default_k(5)
    with pytest.raises(ValueError, match="not among the live"):
        send_targets(2, live)


def test_single_rank_sends_nowhere():
    assert send_targets(0, [0]) == []


def _arr(sender, slot, seq, step, count=1):
    return SimpleNamespace(sender=sender, slot=slot, seq=seq, step=step, count=count)


def test_staleness_weights_and_bound():
    s = Staleness(horizon=2, max_staleness=10)
    assert s.weight(10, 10) == 1.0
    assert s.weight(10, 12) == 1.0           # a sender ahead is not stale
    assert s.weight(10, 8) == pytest.approx(1 / 2)
    assert s.weight(20, 9) == 0.0            # 11 steps old: past the bound
    with pytest.raises(ValueError, match="horizon must be positive"):
        Staleness(horizon=0)


def test_choose_keeps_the_newest_snapshot_per_sender():
    arrivals = [_arr(0, 0, 5, 9), _arr(0, 1, 6, 10), _arr(1, 2, 3, 10)]
    takes = choose(arrivals, 10, Staleness(), newest_only=True)
    assert takes == [(0, 0, 5, 0.0), (0, 1, 6, 1.0), (1, 2, 3, 1.0)]
    # Gradients: every unmerged update counts.
    takes = choose(arrivals, 10, Staleness(horizon=1), newest_only=False)
    assert [w for *_, w in takes] == [0.5, 1.0, 1.0]


def test_choose_in_replay_takes_exactly_the_step():
    arrivals = [_arr(0, 0, 1, 4), _arr(0, 1, 2, 5), _arr(1, 0, 7, 6)]
    takes = choose(arrivals, 5, Staleness(), newest_only=True, replay_step=5)
    # step 4 is discarded, step 6 stays for its own merge
    assert takes == [(0, 0, 1, 0.0), (0, 1, 2, 1.0)]
