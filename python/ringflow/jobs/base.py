"""What a reference job hands a trainer: model, optimizer factory, data, loss, evaluation."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Job:
    name: str
    model: torch.nn.Module
    make_optimizer: Callable[[object], torch.optim.Optimizer]   # params -> optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    train: tuple[torch.Tensor, torch.Tensor]                    # (inputs, targets)
    test: tuple[torch.Tensor, torch.Tensor]                     # held-out split
    batch_size: int                                             # global batch, all ranks together
    config: dict = field(default_factory=dict)
    target_accuracy: float = 0.0     # what the job reaches with its default config (tested)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None) -> dict:
        """Held-out accuracy and loss."""
        model = model or self.model
        was = model.training
        model.eval()
        x, y = self.test
        out = model(x)
        model.train(was)
        return {"accuracy": (out.argmax(1) == y).double().mean().item(),
                "loss": self.loss_fn(out, y).item()}


def load_entry_point(spec: str) -> Callable[..., Job]:
    """'package.module:function' -> the function (e.g. 'ringflow.jobs.gru:build')."""
    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not fn:
        raise ValueError(f"entry point {spec!r} must look like 'package.module:function'")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load entry point {spec!r}: {e}") from None
