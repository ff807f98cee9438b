"""Which samples each calculation of a step trains on: a pure function of (seed, epoch, step).

Each epoch is a fresh permutation of the job's training samples, seeded by
(seed, epoch).  Step s takes the next `batch_size` samples of its epoch
(the epoch's last step takes what is left, so every sample is used exactly
once per epoch), split into `parts` calculations.  The cursor is the step
number: a job resumed at step s recomputes exactly the same batches.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


class Distribution:
    def __init__(self, samples: int, batch_size: int, seed: int, parts: int):
        if samples < 1 or batch_size < 1 or parts < 1:
            raise ValueError(f"distribution needs samples, batch_size and parts >= 1 "
                             f"(got {samples}, {batch_size}, {parts})")
        self.samples, self.batch_size, self.seed, self.parts = samples, batch_size, seed, parts
        self.steps_per_epoch = -(-samples // batch_size)

    @lru_cache(maxsize=4)
    def permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return rng.permutation(self.samples)

    def cursor(self, step: int) -> dict:
        epoch, position = divmod(step, self.steps_per_epoch)
        return {"step": step, "epoch": epoch, "position": position, "seed": self.seed}

    def calculations(self, step: int) -> list[tuple[int, np.ndarray, float]]:
        """[(epoch, sample ids, weight)] of the step's calculations; weights sum to 1."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        batch = self.permutation(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size]
        pieces = [p for p in np.array_split(batch, min(self.parts, len(batch)))]
        return [(epoch, p, len(p) / len(batch)) for p in pieces]

