"""The gradient collector: sums a step's gradients in calculation order, never arrival order.

Floating-point addition is not associative, so summing as gradients
arrive would make the result depend on timing.  The collector keeps
early arrivals aside and folds part k into the sum only after parts
0..k-1: the sum, the optimizer step and the parameters are then
bit-identical whatever the arrival order or the number of workers.
"""

from __future__ import annotations

import torch


class OrderedCollector:
    def __init__(self, parts: int, numel: int, dtype: torch.dtype):
        self.parts, self.numel, self.dtype = parts, numel, dtype
        self.sum: torch.Tensor | None = None
        self.next = 0
        self.waiting: dict[int, torch.Tensor] = {}

    def check(self, part: int, grad: torch.Tensor) -> None:
        """Raises ValueError naming what is wrong with a gradient (shape, dtype, part)."""
        if not 0 <= part < self.parts:
            raise ValueError(f"gradient for part {part}, the step has parts 0..{self.parts - 1}")
        if grad.dtype != self.dtype or grad.dim() != 1 or grad.numel() != self.numel:
            raise ValueError(f"gradient of part {part} is {str(grad.dtype).removeprefix('torch.')}"
                             f"{list(grad.shape)}; the model needs "
                             f"{str(self.dtype).removeprefix('torch.')}[{self.numel}]")
        if part < self.next or part in self.waiting:
            raise ValueError(f"a second gradient for part {part}")

    def add(self, part: int, grad: torch.Tensor) -> bool:
        """Takes part `part`'s gradient; True once every part of the step is in the sum."""
        self.check(part, grad)
        self.waiting[part] = grad
        while self.next in self.waiting:
            g = self.waiting.pop(self.next)
            self.sum = g.clone() if self.sum is None else self.sum.add_(g)
            self.next += 1
        return self.next == self.parts


def unordered_sum(grads) -> torch.Tensor:
    """Sums gradients in whatever order they come (the baseline the bench compares against)."""
    total = None
    for g in grads:
        total = g.clone() if total is None else total.add_(g)
    return total
