"""The Halton send graph: to which k of the N ranks each rank pushes.

Rank at position p among the N live ranks (sorted) sends to positions
(p + d) mod N for the k offsets d = round(N ** h_j), h_j the base-2 Halton
(van der Corput) sequence 0, 1/2, 1/4, 3/4, 1/8, ... with duplicates (and 0)
skipped.  h_0 = 0 gives d = 1, so the graph always contains the ring and is
connected for any k >= 1; the other offsets spread geometrically between 1
and N, like Chord's fingers, so an update reaches every rank in few hops.

Balance: the graph is circulant, so every rank sends exactly k updates and
receives exactly k per round.  Reach: with the default k = ceil(log2 N)
every rank reaches every other within ceil(log2 N) hops (checked by BFS for
every N up to 512 in tests/test_malt_graph.py); with k = 1 it is the ring
(N - 1 hops).  Pure functions of (N, k), as MALT-2's graphs are.
"""

from __future__ import annotations

import math


def default_k(n: int) -> int:
    """ceil(log2 N), at least 1 (and at most N - 1)."""
    if n < 1:
        raise ValueError(f"a send graph needs at least one rank, got {n}")
    return max(1, min(n - 1, math.ceil(math.log2(n)))) if n > 1 else 0


def van_der_corput(j: int) -> float:
    """The j-th element of the base-2 Halton sequence (0, 1/2, 1/4, 3/4, ...)."""
    x, scale = 0.0, 1.0
    while j:
        scale /= 2
        x += scale * (j & 1)
        j >>= 1
    return x


def halton_offsets(n: int, k: int | None = None) -> list[int]:
    """The k distinct offsets in [1, n) a rank adds to its position to find its targets."""
    if k is None:
        k = default_k(n)
    if n < 1 or k < 0:
        raise ValueError(f"need n >= 1 and k >= 0, got n={n}, k={k}")
    k = min(k, n - 1)
    out: list[int] = []
    j = 0
    # The sequence is dense in [0, 1), so distinct offsets keep coming; the
    # bound only guards the loop (fill-in below covers any gap).
    while len(out) < k and j < 64 * n:
        d = 1 if j == 0 else round(n ** van_der_corput(j)) % n
        j += 1
        if d and d not in out:
            out.append(d)
    d = 1
    while len(out) < k:
        if d not in out:
            out.append(d)
        d += 1
    return out


def send_targets(me: int, live: list[int], k: int | None = None) -> list[int]:
    """The ranks `me` pushes to, given the ranks currently alive (me among them)."""
    ranks = sorted(set(live))
    if me not in ranks:
        raise ValueError(f"rank {me} is not among the live ranks {ranks}")
    n = len(ranks)
    p = ranks.index(me)
    return [ranks[(p + d) % n] for d in halton_offsets(n, default_k(n) if k is None else k)]
