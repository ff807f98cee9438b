"""Asynchronous lockless peer-to-peer averaging (MALT, SPEC mechanism 6).

Queues and the merge are C++ (csrc/malt/); this package is the policy: the
Halton send graph (graph.py), staleness weights (policy.py), finding and
dropping peers (peers.py) and the optimizer wrapper (optimizer.py).
"""

from .graph import default_k, halton_offsets, send_targets
from .optimizer import Optimizer
from .policy import Staleness, choose

__all__ = ["Optimizer", "Staleness", "choose", "default_k", "halton_offsets", "send_targets"]
