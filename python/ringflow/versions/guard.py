"""The divergence guard: one small allreduce per step so every rank takes the same decision.

Each rank checks its own loss and gradient norm for NaN/inf; the ranks then
sum [non-finite loss flags, non-finite gradient flags, loss] in one
allreduce of three float64 numbers.  A
step diverged when any rank saw a non-finite value, or when the ranks' mean
loss exceeds `spike_factor` times its moving average (after `warmup` good
steps).  Every rank computes that from the same reduced numbers, so they
all roll back at the same step; no rank can be left waiting for another.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass
class GuardConfig:
    spike_factor: float = 10.0     # loss above k x its moving average is a spike
    ema_decay: float = 0.9         # moving average of the ranks' mean loss
    warmup: int = 10               # good steps before spikes are looked for
    max_rollbacks: int = 3         # more than this many rollbacks stops the job
    skip: str = "since"            # "since": batches since the commit; "culprit": only the bad one
    lr_scale: float = 1.0          # learning rate multiplied by this on each rollback

    def __post_init__(self):
        if self.skip not in ("since", "culprit"):
            raise ValueError(f"GuardConfig.skip must be 'since' or 'culprit', not {self.skip!r}")
        if not self.spike_factor > 1:
            raise ValueError(f"GuardConfig.spike_factor must be > 1, not {self.spike_factor}")
        if self.max_rollbacks < 0:
            raise ValueError(f"GuardConfig.max_rollbacks must be >= 0, not {self.max_rollbacks}")


@dataclass
class Verdict:
    diverged: bool
    reason: str
    mean_loss: float


class DivergenceGuard:
    def __init__(self, config: GuardConfig, world_size: int, group=None):
        self.config = config
        self.world_size = world_size
        self.group = group
        self.ema: float | None = None
        self.good_steps = 0

    def check(self, loss: float, grad_norm: float) -> Verdict:
        """Collective: every rank must call it at the same step; all get the same verdict."""
        import torch.distributed as dist

        bad_loss = 0.0 if math.isfinite(loss) else 1.0
        bad_grad = 0.0 if math.isfinite(grad_norm) else 1.0
        buf = torch.tensor([bad_loss, bad_grad, loss if not bad_loss else 0.0], dtype=torch.float64)
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(buf, group=self.group)
        n_loss, n_grad = int(buf[0].item()), int(buf[1].item())
        mean = buf[2].item() / self.world_size
        if n_loss or n_grad:
            return Verdict(True, f"non-finite loss on {n_loss} rank(s), non-finite gradient norm "
                                 f"on {n_grad} rank(s)", math.nan)
        c = self.config
        if self.ema is not None and self.good_steps >= c.warmup and mean > c.spike_factor * self.ema:
            return Verdict(True, f"loss spike: mean loss {mean:.4g} > {c.spike_factor} x moving "
                                 f"average {self.ema:.4g}", mean)
        return Verdict(False, "", mean)

    def accept(self, mean_loss: float) -> None:
        """Called after a good step: updates the moving average all ranks share."""
        d = self.config.ema_decay
        self.ema = mean_loss if self.ema is None else d * self.ema + (1 - d) * mean_loss
        self.good_steps += 1

    def state(self) -> dict:
        return {"ema": self.ema, "good_steps": self.good_steps}

    def load(self, state: dict) -> None:
        self.ema = state.get("ema")
        self.good_steps = int(state.get("good_steps", 0))

    def describe(self) -> dict:
        return asdict(self.config)
