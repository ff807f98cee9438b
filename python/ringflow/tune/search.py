"""Multi-start local search over patterns (mechanism 9, the scheduling
apparatus: generate patterns one after another from given initial
conditions, keep the one whose evaluation converges to an extreme, repeat
from other initial conditions, choose the best converged pattern).

Moves: swap two ring positions, reverse a stretch of the ring (2-opt), and
regroup (move a rank to another or a new group, merge two groups, switch
between no layout and one group per host).  A local search takes the first
improving move in a shuffled neighbourhood and stops when no move improves:
that pattern is converged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

from .pattern import Pattern, canonical_groups, groups_by_host

Evaluate = Callable[[Pattern], tuple[float, Pattern]]


@dataclass(frozen=True)
class Converged:
    score: float
    pattern: Pattern  # completed: piece size and algorithms filled in
    start: Pattern
    moves: int  # improving moves taken from the start


def _with(p: Pattern, order=None, groups="keep") -> Pattern:
    return Pattern(tuple(order) if order is not None else p.order,
                   p.groups if groups == "keep" else groups, p.piece_bytes, p.algorithms,
                   p.deterministic)


def order_moves(p: Pattern) -> Iterator[Pattern]:
    o, n = list(p.order), len(p.order)
    for i in range(n):
        for j in range(i + 1, n):
            s = o[:]
            s[i], s[j] = s[j], s[i]
            yield _with(p, order=s)
            if j - i >= 2:
                yield _with(p, order=o[:i] + o[i:j + 1][::-1] + o[j + 1:])


def regroup_moves(p: Pattern, hosts) -> Iterator[Pattern]:
    by_host = groups_by_host(hosts)
    if p.groups is None:
        yield _with(p, groups=by_host)
        return
    yield _with(p, groups=None)
    if canonical_groups(p.groups) != canonical_groups(by_host):
        yield _with(p, groups=by_host)
    g = list(p.groups)
    labels = sorted(set(g))
    fresh = max(labels) + 1
    for r in range(len(g)):
        for target in labels + [fresh]:
            if target != g[r]:
                moved = g[:]
                moved[r] = target
                yield _with(p, groups=tuple(moved))
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            yield _with(p, groups=tuple(a if x == b else x for x in g))


def local_search(start: Pattern, evaluate: Evaluate, hosts, rng: random.Random,
                 max_moves: int = 10_000) -> Converged:
    score, best = evaluate(start)
    moves = 0
    while moves < max_moves:
        neighbours = list(order_moves(best)) + list(regroup_moves(best, hosts))
        rng.shuffle(neighbours)
        for q in neighbours:
            s, completed = evaluate(q)
            if s < score * (1 - 1e-12):
                score, best, moves = s, completed, moves + 1
                break
        else:
            break  # no move improves: converged
    return Converged(score, best, start, moves)


def starting_patterns(hosts, count: int, rng: random.Random) -> list[Pattern]:
    """`count` different initial conditions: the launcher's order flat and
    grouped by host, ranks sorted by host (flat, grouped, and with each pair
    of hosts merged into one group), then random orders with no layout, the
    host layout, or a random partition."""
    n = len(hosts)
    ident = tuple(range(n))
    host_sorted = tuple(sorted(ident, key=lambda r: (hosts[r], r)))
    by_host = groups_by_host(hosts)
    seeds = [Pattern(ident), Pattern(ident, by_host), Pattern(host_sorted),
             Pattern(host_sorted, by_host)]
    # Two hosts as one lower-order group (a fast pair of hosts may carry a
    # lower ring while the slow links carry only the higher rings' shares).
    names = list(dict.fromkeys(hosts))
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if len(names) > 2:
                seeds.append(Pattern(host_sorted, groups_by_host([a if h == b else h for h in hosts])))
    out, seen = [], set()
    attempts = 0
    while len(out) < count and attempts < 100 * count:
        attempts += 1
        if seeds:
            p = seeds.pop(0)
        else:
            order = list(ident)
            rng.shuffle(order)
            kind = rng.randrange(3)
            groups = (None, by_host, tuple(rng.randrange(max(1, n // 2)) for _ in range(n)))[kind]
            p = Pattern(tuple(order), groups)
        if p.key() not in seen:
            seen.add(p.key())
            out.append(p)
    return out


def multi_start(hosts, evaluate: Evaluate, starts: int = 8, seed: int = 0,
                initial: list[Pattern] | None = None) -> list[Converged]:
    """Local search from each start; the converged patterns, best first,
    one per distinct pattern."""
    rng = random.Random(seed)
    cache: dict = {}

    def cached(p: Pattern):
        k = p.key()
        if k not in cache:
            cache[k] = evaluate(p)
        return cache[k]

    results = []
    for start in initial if initial is not None else starting_patterns(hosts, starts, rng):
        results.append(local_search(start, cached, hosts, rng))
    results.sort(key=lambda c: c.score)
    unique, seen = [], set()
    for c in results:
        if c.pattern.key() not in seen:
            seen.add(c.pattern.key())
            unique.append(c)
    return unique
