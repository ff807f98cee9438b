"""The cost model: a pattern's predicted allreduce time from the links.

Each algorithm is a sequence of phases; in a phase some rings run side by
side, every hop of every ring sending its share per step.  Hops between two
hosts share that host pair's link (one direction each way); hops inside a
host share its copying capacity (one pair's bandwidth per two CPUs: a copy
keeps a sender and a receiver busy).  A step lasts as long as its slowest hop: latency, the bytes
all hops on its link carry over the link's bandwidth, the per-piece cost of
its pieces and, when it reduces, reducing its last piece (the other pieces'
reductions overlap the transfer; recursive doubling reduces its whole
message after each swap).  Every call pays `call_s` once and every hop's
latency counts `latency_scale` times, both fitted from the ring's own small
calls (tuner.calibrate_latency).  The arena and the aggregator are not
rings of measured links: each is a line fitted from two of its own calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .pattern import BUCKETS, PIECE_SIZES, Links, Pattern


@dataclass(frozen=True)
class Overheads:
    """Costs beside the links': seconds per piece sent, and the reduction's
    bandwidth (bytes/s) for the last piece of a step."""

    piece_s: float = 20e-6
    reduce_bandwidth: float = 4e9
    # The same-host arena, fitted from two of its allreduces where it runs
    # (tuner.calibrate_arena): its protocol is not a ring of links.
    shm_fixed_s: float = 0.0
    shm_per_byte_s: float = 0.0
    # The aggregator services of RINGFLOW_AGGREGATOR, fitted the same way
    # where one is configured (tuner.calibrate_aggregator); 0: not a candidate.
    agg_fixed_s: float = 0.0
    agg_per_byte_s: float = 0.0
    # Seconds each call costs beside its messages (submit, wake-ups, wait),
    # and the factor between a hop's latency inside a call and the pair's
    # measured one (tuner.calibrate_latency).
    call_s: float = 0.0
    latency_scale: float = 1.0


class CostModel:
    def __init__(self, links: Links, overheads: Overheads | None = None, shm: bool | None = None):
        links.check()
        self.links = links
        self.over = overheads or Overheads()
        n = links.size
        self.n = n
        self.hosts = links.hosts
        # Capacity per link key: a host pair's link (per direction) is as fast
        # as its best rank pair; a host's copying, as its best pair times the
        # pairs its CPUs can run at once.
        self._key = [[None] * n for _ in range(n)]
        cap: dict = {}
        for a in range(n):
            for b in range(n):
                if a == b:
                    continue
                ha, hb = self.hosts[a], self.hosts[b]
                k = ("inside", ha) if ha == hb else ("between", ha, hb)
                self._key[a][b] = k
                cap[k] = max(cap.get(k, 0.0), links.bandwidth[a][b])
        for a in range(n):
            k = ("inside", self.hosts[a])
            if k in cap and links.cpus is not None:
                cap[k] = cap[k] * max(1, links.cpus[a] // 2)
        self._cap = cap
        self._phases: dict = {}  # (algorithm, order, groups) -> its phases
        self._nbytes = np.array(BUCKETS, dtype=float)[:, None]
        self._piece = np.array(PIECE_SIZES, dtype=float)[None, :]
        launcher = self._table(Pattern(tuple(range(n))), "ring")
        default = PIECE_SIZES.index(256 << 10)
        self._reference = np.maximum(launcher[:, default], 1e-9)
        one_host = len(set(self.hosts)) == 1 and n > 1
        self.shm = one_host if shm is None else shm and one_host

    # -- phases -----------------------------------------------------------------
    def _phase(self, rings, fractions):
        """rings: member lists running side by side, ring i taking len-1 steps
        in which each hop sends fractions[i] of the message.  Returns the
        phase as segments (steps, hops), a hop being (latency, seconds per
        byte of message on its shared link, fraction it sends): the same for
        every message size and piece size, so computed once per pattern."""
        segments, done = [], 0
        active = [i for i, m in enumerate(rings) if len(m) > 1]
        lat = self.links.latency_s
        while active:
            steps = min(len(rings[i]) - 1 for i in active) - done
            load: dict = {}
            hops = []
            for i in active:
                m, f = rings[i], fractions[i]
                for j in range(len(m)):
                    x, y = m[j], m[(j + 1) % len(m)]
                    k = self._key[x][y]
                    load[k] = load.get(k, 0.0) + f
                    hops.append((lat[x][y], k, f))
            segments.append((steps, [(l, load[k] / self._cap[k], f) for l, k, f in hops]))
            done += steps
            active = [i for i in active if len(rings[i]) - 1 > done]
        return segments

    def _swaps(self, pairs):
        """One step in which each (x, y) of `pairs` sends x's whole message
        to y, all at once: a segment as _phase makes them."""
        load: dict = {}
        for x, y in pairs:
            load[self._key[x][y]] = load.get(self._key[x][y], 0.0) + 1.0
        lat = self.links.latency_s
        return [(1, [(lat[x][y], load[self._key[x][y]] / self._cap[self._key[x][y]], 1.0)
                     for x, y in pairs])]

    def _run(self, segments, reduces: str | None) -> np.ndarray:
        """The phase's seconds for every (bucket, piece size); `reduces`:
        None, "piece" (the last piece's reduction shows) or "whole"."""
        nb, piece = self._nbytes, self._piece
        total = np.zeros((len(BUCKETS), len(PIECE_SIZES)))
        for steps, hops in segments:
            lat, per_byte, frac = (np.array(col)[:, None, None] for col in zip(*hops))
            b = nb * frac
            t = lat * self.over.latency_scale + nb * per_byte + np.ceil(b / piece) * self.over.piece_s
            if reduces == "piece":
                t = t + np.minimum(piece, b) / self.over.reduce_bandwidth
            elif reduces == "whole":
                t = t + b / self.over.reduce_bandwidth
            total += steps * t.max(axis=0)
        return total

    def _ring_phases(self, order):
        key = ("ring", tuple(order))
        if key not in self._phases:
            k = len(order)
            seg = self._phase([list(order)], [1.0 / k])
            self._phases[key] = [(seg, "piece"), (seg, None)]
        return self._phases[key]

    def _doubling_phases(self, order):
        """Recursive doubling over ring positions (recursive_doubling.cc):
        the first 2*rem positions fold pairwise, log2(p) rounds of swaps
        between positions v and v xor 2^k, the folded ones get the result."""
        key = ("recursive_doubling", tuple(order))
        if key not in self._phases:
            n = len(order)
            p = 1 << (n.bit_length() - 1)
            rem = n - p

            def at(v):  # the rank at virtual position v of the rounds
                return order[2 * v + 1 if v < rem else v + rem]

            fold = [(order[2 * i], order[2 * i + 1]) for i in range(rem)]
            phases = [(self._swaps(fold), "whole")] if fold else []
            mask = 1
            while mask < p:
                phases.append((self._swaps([(at(v), at(v ^ mask)) for v in range(p)]), "whole"))
                mask <<= 1
            if fold:
                phases.append((self._swaps([(y, x) for x, y in fold]), None))
            self._phases[key] = phases
        return self._phases[key]

    def _hierarchical_phases(self, order, groups):
        key = ("hierarchical", tuple(order), tuple(groups))
        if key not in self._phases:
            lowers, highers = self.lower_and_higher(order, groups)
            shards = len(highers)
            low = self._phase(lowers, [1.0 / len(m) for m in lowers])
            high = self._phase(highers, [1.0 / shards / len(highers[0])] * shards)
            self._phases[key] = [(low, "piece"), (high, "piece"), (high, None), (low, None)]
        return self._phases[key]

    def _table(self, pattern: Pattern, algorithm: str) -> np.ndarray:
        """Seconds of `algorithm` under the pattern, for every (bucket, piece)."""
        if algorithm == "shm":
            return self._line(self.shm_time)
        if algorithm == "aggregate":
            return self._line(lambda b: self.over.agg_fixed_s + self.over.agg_per_byte_s * b)
        if self.n < 2:
            return np.zeros((len(BUCKETS), len(PIECE_SIZES)))
        if algorithm == "ring":
            phases = self._ring_phases(pattern.order)
        elif algorithm == "hierarchical":
            phases = self._hierarchical_phases(pattern.order, pattern.groups)
        elif algorithm == "recursive_doubling":
            phases = self._doubling_phases(pattern.order)
        else:
            raise ValueError(f"cost model: no model for algorithm {algorithm!r}")
        return self.over.call_s + sum(self._run(seg, red) for seg, red in phases)

    def _line(self, seconds_of) -> np.ndarray:
        """A fitted algorithm's table: the same for every piece size."""
        return np.repeat(np.array([[seconds_of(b)] for b in BUCKETS]), len(PIECE_SIZES), 1)

    def lower_and_higher(self, order, groups):
        """The hierarchical rings tuned.cc builds: each group's ranks in ring
        order; the k-th of every group (groups by label) form higher ring k."""
        by_label: dict[int, list[int]] = {}
        for r in order:
            by_label.setdefault(groups[r], []).append(r)
        lowers = [by_label[g] for g in sorted(by_label)]
        shards = min(len(m) for m in lowers)
        highers = [[m[k] for m in lowers] for k in range(shards)]
        return lowers, highers

    def shm_time(self, nbytes: int) -> float:
        if self.over.shm_per_byte_s > 0:
            return self.over.shm_fixed_s + self.over.shm_per_byte_s * nbytes
        # Uncalibrated: about three passes through memory at the pairs' bandwidth.
        n = self.n
        pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
        lat = sum(self.links.latency_s[a][b] for a, b in pairs) / len(pairs)
        bw = sum(self.links.bandwidth[a][b] for a, b in pairs) / len(pairs)
        return 2 * lat + 3 * nbytes / bw

    # -- patterns ---------------------------------------------------------------
    def candidates(self, pattern: Pattern) -> list[str]:
        names = ["ring", "recursive_doubling"]
        if pattern.groups is not None and 1 < len(set(pattern.groups)) < self.n:
            names.append("hierarchical")
        if self.shm:
            names.append("shm")
        if self.over.agg_per_byte_s > 0:
            names.append("aggregate")
        return names

    def predict(self, pattern: Pattern, nbytes: int) -> float:
        """Seconds of the allreduce the pattern runs at a bucket's size."""
        if nbytes not in BUCKETS or pattern.piece_bytes not in PIECE_SIZES:
            raise ValueError(f"cost model: predictions are for sizes {BUCKETS} and pieces "
                             f"{PIECE_SIZES}, not {nbytes} and {pattern.piece_bytes}")
        table = self._table(pattern, pattern.algorithm_for(nbytes))
        return float(table[BUCKETS.index(nbytes), PIECE_SIZES.index(pattern.piece_bytes)])

    def complete(self, pattern: Pattern) -> tuple[float, Pattern]:
        """The pattern with its best piece size and best algorithm per bucket,
        and its evaluation: the sum over buckets of its time relative to the
        launcher's flat ring, so every bucket counts, not only the largest."""
        names = self.candidates(pattern)
        tables = np.stack([self._table(pattern, a) for a in names])  # (algo, bucket, piece)
        best = tables.min(axis=0) / self._reference[:, None]
        piece = int(best.sum(axis=0).argmin())
        score = float(best[:, piece].sum())
        rules: list[tuple[int, str]] = []
        for i, b in enumerate(BUCKETS):
            name = names[int(tables[:, i, piece].argmin())]
            if not rules or rules[-1][1] != name:
                rules.append((0 if not rules else rule_boundary(i), name))
        return score, Pattern(pattern.order, pattern.groups, PIECE_SIZES[piece], tuple(rules),
                              pattern.deterministic)


def rule_boundary(i: int) -> int:
    """The rule for bucket i starts half way (geometrically) from the one below."""
    return int(math.sqrt(BUCKETS[i - 1] * BUCKETS[i]))
