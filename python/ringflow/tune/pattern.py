"""A transmission pattern (mechanism 9) and the link measurements it is
judged by: plain, frozen data that the cost model reads and the search
rewrites, with a JSON form for the cache and the broadcast."""

from __future__ import annotations

from dataclasses import dataclass, field

# The allreduces a pattern may name per message-size bucket (tuned.cc runs them).
ALGORITHMS = ("ring", "hierarchical", "shm", "recursive_doubling", "aggregate")
PIECE_SIZES = (64 << 10, 256 << 10, 1 << 20, 4 << 20)
# Size buckets the evaluation sums over: latency-bound to bandwidth-bound.
BUCKETS = (4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20)


@dataclass(frozen=True)
class Links:
    """Measured (or synthetic) links between every pair of ranks.

    latency_s[a][b], bandwidth[a][b] (bytes/s): a sending to b, measured
    with no other pair on its link.  hosts[r] names rank r's host: traffic
    between two hosts shares one link (as fast as its best rank pair), and
    traffic inside a host shares the host's CPUs and memory: cpus[r] is how
    many CPUs rank r's process may use (None: one pair's copy at a time).
    """

    hosts: tuple[str, ...]
    latency_s: tuple[tuple[float, ...], ...]
    bandwidth: tuple[tuple[float, ...], ...]
    cpus: tuple[int, ...] | None = None

    @property
    def size(self) -> int:
        return len(self.hosts)

    def check(self) -> None:
        n = self.size
        for name, m in (("latency_s", self.latency_s), ("bandwidth", self.bandwidth)):
            if len(m) != n or any(len(row) != n for row in m):
                raise ValueError(f"links: {name} must be {n}x{n} for {n} hosts entries")
        for a in range(n):
            for b in range(n):
                if a != b and not (self.bandwidth[a][b] > 0 and self.latency_s[a][b] >= 0):
                    raise ValueError(f"links: rank {a} -> {b} has bandwidth {self.bandwidth[a][b]} "
                                     f"and latency {self.latency_s[a][b]}")

    def to_json(self) -> dict:
        return {"hosts": list(self.hosts), "latency_s": [list(r) for r in self.latency_s],
                "bandwidth": [list(r) for r in self.bandwidth],
                "cpus": None if self.cpus is None else list(self.cpus)}

    @staticmethod
    def from_json(d: dict) -> "Links":
        cpus = d.get("cpus")
        links = Links(tuple(d["hosts"]), tuple(tuple(map(float, r)) for r in d["latency_s"]),
                      tuple(tuple(map(float, r)) for r in d["bandwidth"]),
                      None if cpus is None else tuple(int(c) for c in cpus))
        links.check()
        return links


@dataclass(frozen=True)
class Pattern:
    """order[i]: the rank at ring position i.  groups[r]: rank r's lower-order
    group label (None: no layout).  algorithms: ((min_bytes, name), ...)
    ascending, the last at or below a size wins.  piece_bytes: the ring's
    pipelining piece."""

    order: tuple[int, ...]
    groups: tuple[int, ...] | None = None
    piece_bytes: int = 256 << 10
    algorithms: tuple[tuple[int, str], ...] = field(default=((0, "ring"),))
    deterministic: bool = False

    def check(self, size: int) -> None:
        if sorted(self.order) != list(range(size)):
            raise ValueError(f"pattern: ring order {list(self.order)} is not a permutation of "
                             f"{size} ranks")
        if self.groups is not None and len(self.groups) != size:
            raise ValueError(f"pattern: {len(self.groups)} group labels for {size} ranks")
        for _, name in self.algorithms:
            if name not in ALGORITHMS:
                raise ValueError(f"pattern: unknown algorithm {name!r} (one of {ALGORITHMS})")
        sizes = [b for b, _ in self.algorithms]
        if sizes != sorted(set(sizes)):
            raise ValueError(f"pattern: algorithm sizes {sizes} are not strictly ascending")

    def algorithm_for(self, nbytes: int) -> str:
        chosen = "ring"
        for min_bytes, name in self.algorithms:
            if min_bytes <= nbytes:
                chosen = name
        return chosen

    def ending_below(self, cut: int) -> "Pattern":
        """The pattern with the rule that runs at `cut` bytes ending below
        it: from `cut` up to the rule after it, that rule's algorithm runs
        (the ring when none follows)."""
        rules = list(self.algorithms)
        j = max((i for i, (b, _) in enumerate(rules) if b <= cut), default=0)
        following = rules[j + 1][1] if j + 1 < len(rules) else "ring"
        kept = rules[:j] + ([rules[j]] if rules[j][0] < cut else [])
        merged: list[tuple[int, str]] = []
        for rule in kept + [(cut, following)] + rules[j + 2:]:
            if not merged or merged[-1][1] != rule[1]:
                merged.append(rule)
        return Pattern(self.order, self.groups, self.piece_bytes, tuple(merged), self.deterministic)

    def key(self) -> tuple:
        """What makes two patterns the same to the search (a ring and its
        rotation or reversal are different schedules, so no canonical form)."""
        return (self.order, canonical_groups(self.groups), self.piece_bytes)

    def to_json(self) -> dict:
        return {"order": list(self.order),
                "groups": None if self.groups is None else list(self.groups),
                "piece_bytes": self.piece_bytes,
                "algorithms": [[b, a] for b, a in self.algorithms],
                "deterministic": self.deterministic}

    @staticmethod
    def from_json(d: dict) -> "Pattern":
        return Pattern(order=tuple(int(r) for r in d["order"]),
                       groups=None if d.get("groups") is None else tuple(int(g) for g in d["groups"]),
                       piece_bytes=int(d["piece_bytes"]),
                       algorithms=tuple((int(b), str(a)) for b, a in d["algorithms"]),
                       deterministic=bool(d.get("deterministic", False)))


def canonical_groups(groups):
    """Labels renumbered by first appearance: the same partition, one spelling."""
    if groups is None:
        return None
    ids: dict[int, int] = {}
    return tuple(ids.setdefault(g, len(ids)) for g in groups)


def groups_by_host(hosts) -> tuple[int, ...]:
    ids: dict[str, int] = {}
    return tuple(ids.setdefault(h, len(ids)) for h in hosts)
