"""A small MLP for tabular data: `x` (N records of any shape, flattened) and `y` (N labels).

The classes are the distinct values of `y`, in sorted order.  A fixed,
seeded 80/20 split holds out a test set (datasets under 10 records train
on everything and are tested on it).  Without `data` it trains on
scikit-learn's handwritten digits as 64 pixels (the GRU job's data), the
reference MLP the compression benchmark uses.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Job
from .gru import load_digits_arrays

TARGET_ACCURACY = 0.93  # on the digits, with the defaults


class MLP(torch.nn.Module):
    def __init__(self, inputs: int, hidden: int, classes: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(*, data: dict | None = None, seed: int = 0, lr: float = 0.01, batch_size: int = 32,
          hidden: int = 32, test_fraction: float = 0.2) -> Job:
    digits = data is None
    if digits:
        pixels, labels = load_digits_arrays()
        data = {"x": pixels / 16.0, "y": labels}
    if "x" not in data or "y" not in data:
        raise ValueError(f"the MLP job needs arrays 'x' and 'y', the data has {sorted(data)}")
    x = np.asarray(data["x"])
    y = np.asarray(data["y"])
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"the MLP job needs as many x as y records (> 0), got {len(x)} and {len(y)}")
    if batch_size <= 0 or hidden <= 0 or lr <= 0:
        raise ValueError(f"batch_size, hidden and lr must be positive (got {batch_size}, {hidden}, {lr})")
    classes, labels = np.unique(y, return_inverse=True)
    xs = torch.tensor(x.reshape(len(x), -1), dtype=torch.float32)
    ys = torch.tensor(labels, dtype=torch.int64)
    perm = torch.randperm(len(ys), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(ys) * test_fraction)) if len(ys) >= 10 else 0
    te, tr = (perm[:n_test], perm[n_test:]) if n_test else (perm, perm)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MLP(xs.shape[1], hidden, len(classes))
    return Job(name="mlp", model=model,
               make_optimizer=lambda params: torch.optim.Adam(params, lr=lr),
               loss_fn=torch.nn.functional.cross_entropy,
               train=(xs[tr], ys[tr]), test=(xs[te], ys[te]), batch_size=batch_size,
               target_accuracy=TARGET_ACCURACY if digits else 0.0,
               config={"job": "ringflow.jobs.mlp:build", "seed": seed, "lr": lr,
                       "batch_size": batch_size, "hidden": hidden,
                       "classes": [c.item() for c in classes]})
