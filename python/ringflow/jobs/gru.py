"""The GRU reference job: scikit-learn's handwritten digits read row by row.

Each 8x8 image becomes a sequence of 8 steps of 8 pixels; a one-layer GRU
reads it and a linear layer classifies its last hidden state into 10
digits.  The data ships inside scikit-learn (nothing is downloaded).
1797 images: a fixed, seeded 80/20 split gives 1438 for training and 359
held out.  With the defaults it reaches >= TARGET_ACCURACY held-out accuracy.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .base import Job

TARGET_ACCURACY = 0.93


class DigitsGRU(torch.nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.gru = torch.nn.GRU(8, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x)           # h: (1, batch, hidden), the state after the 8th row
        return self.head(h[-1])


def _digits_file() -> str:
    """scikit-learn's own copy of the UCI digits (digits.csv.gz: 64 pixels + label per row).

    Read directly rather than through sklearn.datasets.load_digits, whose
    import costs seconds in every rank; tests check both give the same data.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = spec and spec.submodule_search_locations and os.path.join(
        list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    if not path or not os.path.exists(path):
        raise ImportError("the GRU job reads scikit-learn's digits: pip install scikit-learn "
                          "(or 'ringflow[demo]')")
    return path


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797 x 64 float pixels 0..16, 1797 int labels), as sklearn's load_digits gives them."""
    raw = np.loadtxt(_digits_file(), delimiter=",", dtype=np.float64)
    return raw[:, :-1], raw[:, -1].astype(np.int64)


def load_digits_sequences(seed: int = 0, test_fraction: float = 0.2, arrays=None):
    data, target = load_digits_arrays() if arrays is None else arrays
    x = torch.tensor(data, dtype=torch.float32).reshape(-1, 8, 8) / 16.0
    y = torch.tensor(target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return (x[tr], y[tr]), (x[te], y[te])


def build(*, seed: int = 0, hidden: int = 64, lr: float = 0.01, batch_size: int = 64,
          data_seed: int = 0, data: dict | None = None) -> Job:
    """The job with its model initialised from `seed` (equal on every rank).

    `data` ({'x': N x 64 pixels 0..16, 'y': N labels}, as the training service
    passes a dataset) replaces scikit-learn's copy of the digits.
    """
    if batch_size <= 0 or hidden <= 0 or lr <= 0:
        raise ValueError(f"batch_size, hidden and lr must be positive (got {batch_size}, {hidden}, {lr})")
    arrays = None
    if data is not None:
        if "x" not in data or "y" not in data or np.asarray(data["x"]).reshape(len(data["x"]), -1).shape[1] != 64:
            raise ValueError("the GRU job's data needs 'x' (N x 64 pixels of 8x8 digits) and 'y' (N labels), "
                             f"got {({k: list(np.shape(v)) for k, v in data.items()})}")
        arrays = (np.asarray(data["x"], np.float64).reshape(-1, 64), np.asarray(data["y"], np.int64))
    train, test = load_digits_sequences(data_seed, arrays=arrays)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsGRU(hidden)
    return Job(
        name="gru-digits",
        model=model,
        make_optimizer=lambda params: torch.optim.Adam(params, lr=lr),
        loss_fn=torch.nn.functional.cross_entropy,
        train=train,
        test=test,
        batch_size=batch_size,
        config={"job": "ringflow.jobs.gru:build", "seed": seed, "hidden": hidden, "lr": lr,
                "batch_size": batch_size, "data_seed": data_seed},
        target_accuracy=TARGET_ACCURACY,
    )
