"""Tail averaging: the exponential moving average of a replica's model over
its last steps, which close() makes the final model.

Asynchronous replicas step on small batches that nobody waits for, so their
models swing more from step to step than a synchronous model does; the
average over the last steps is the better estimate of where they are
headed (what SGP and AD-PSGD evaluate; Polyak averaging).  Measured on the
GRU job: bench/RESULTS.md, "MALT, fourth round".

The average starts at zero and is divided by 1 - beta^n (as Adam corrects
its moments), so the model before the first step carries no weight and a
run shorter than the tail averages all its steps.
"""

from __future__ import annotations

import torch


class TailAverage:
    def __init__(self, like: torch.Tensor, steps: float):
        if not (steps == 0 or steps >= 1):
            raise ValueError(f"tail_average must be 0 (off) or at least 1 step, got {steps}")
        self.beta = 1.0 - 1.0 / steps if steps else 0.0
        self.count = 0
        self._sum = torch.zeros_like(like) if self.beta else None

    def track(self, model: torch.Tensor) -> None:
        """Takes in the model as it is after a step."""
        if self._sum is not None:
            self._sum.lerp_(model, 1.0 - self.beta)
            self.count += 1

    def apply(self, model: torch.Tensor) -> None:
        """Replaces the model with the average (once a step was tracked)."""
        if self._sum is not None and self.count:
            torch.div(self._sum, 1.0 - self.beta ** self.count, out=model)
