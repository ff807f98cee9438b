"""Which arrived updates a merge takes, and with what weight.

Staleness of an update = the receiver's step minus the step the sender
pushed it at (never below 0).  Its weight is 1 / (1 + staleness / horizon):
an update `horizon` steps behind counts half as much as a fresh one, so a
straggler's old model pulls the fast ranks less while theirs pull it fully.
The horizon is long enough (50 steps by default) that ranks which merely
started a little apart still average fully.  Updates older than
`max_staleness` steps are discarded.

Model snapshots ("params"): only the newest update of each sender counts
(an older one is superseded, so it is discarded unread).  Gradients:
every unmerged update counts.  In replay mode exactly the updates pushed at
`replay_step` are taken, whatever else has arrived.

A replica's final model (pushed by Optimizer.close(), its step marked with
the FINAL bit) is left for the closing merge (finals()), never taken by a
training merge.
"""

from __future__ import annotations

from dataclasses import dataclass

FINAL = 1 << 62  # or-ed into the step of a final model


@dataclass(frozen=True)
class Staleness:
    horizon: float = 50.0             # steps behind at which an update counts half
    max_staleness: int | None = None  # steps; None: no bound

    def __post_init__(self):
        if not self.horizon > 0:
            raise ValueError(f"the staleness horizon must be positive, got {self.horizon}")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {self.max_staleness}")

    def weight(self, my_step: int, sender_step: int) -> float:
        s = max(0, my_step - sender_step)
        if self.max_staleness is not None and s > self.max_staleness:
            return 0.0
        return 1.0 / (1.0 + s / self.horizon)


def choose(arrivals, my_step: int, staleness: Staleness, newest_only: bool,
           replay_step: int | None = None) -> list[tuple[int, int, int, float]]:
    """(sender, slot, seq, weight) for every arrival but the finals; weight 0
    discards it."""
    arrivals = [a for a in arrivals if not a.step & FINAL]
    newest: dict[int, int] = {}
    if newest_only:
        for a in arrivals:
            if replay_step is None or a.step == replay_step:
                newest[a.sender] = max(newest.get(a.sender, 0), a.seq)
    takes = []
    # Sender order fixes the order of the float sums, so a replay repeats bit for bit.
    for a in sorted(arrivals, key=lambda a: (a.sender, a.seq)):
        if replay_step is not None and a.step != replay_step:
            w = 0.0 if a.step < replay_step else None  # a later round waits for its merge
        elif newest_only and newest.get(a.sender) != a.seq:
            w = 0.0
        else:
            w = staleness.weight(my_step, a.step) if replay_step is None else 1.0
        if w is not None:
            takes.append((a.sender, a.slot, a.seq, w))
    return takes


def finals(arrivals) -> list[tuple[int, int, int, float]]:
    """The newest final model of every sender, each at weight 1, in sender order."""
    newest = {}
    for a in arrivals:
        if a.step & FINAL and a.seq > newest.get(a.sender, (0, 0))[0]:
            newest[a.sender] = (a.seq, a.slot)
    return [(s, slot, seq, 1.0) for s, (seq, slot) in sorted(newest.items())]
