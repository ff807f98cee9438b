"""An MLP reference job: scikit-learn's handwritten digits as 64 pixels.

Two hidden layers of 256 (about 83k parameters, so the gradients are worth
compressing), the same seeded 80/20 split as the GRU job.
"""

from __future__ import annotations

import torch

from .base import Job
from .gru import load_digits_sequences

TARGET_ACCURACY = 0.93


def build(*, seed: int = 0, hidden: int = 256, lr: float = 0.002, batch_size: int = 64,
          data_seed: int = 0) -> Job:
    """The job with its model initialised from `seed` (equal on every rank)."""
    if batch_size <= 0 or hidden <= 0 or lr <= 0:
        raise ValueError(f"batch_size, hidden and lr must be positive (got {batch_size}, {hidden}, {lr})")
    (xtr, ytr), (xte, yte) = load_digits_sequences(data_seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 10))
    return Job(
        name="mlp-digits",
        model=model,
        make_optimizer=lambda params: torch.optim.Adam(params, lr=lr),
        loss_fn=torch.nn.functional.cross_entropy,
        train=(xtr.reshape(len(xtr), 64), ytr),
        test=(xte.reshape(len(xte), 64), yte),
        batch_size=batch_size,
        config={"job": "ringflow.jobs.mlp:build", "seed": seed, "hidden": hidden, "lr": lr,
                "batch_size": batch_size, "data_seed": data_seed},
        target_accuracy=TARGET_ACCURACY,
    )
