"""A snapshot copied while the loop computes its next step (snapshot="overlap").

A training step reads its parameters in the forward and backward passes and
writes them only in the optimizer's step.  So the copy of the state need not
hold the loop: `submit` only takes references, a thread copies them while the
next forward and backward run, and the loop waits for the copy only before
it next writes the state -- at the optimizer's step (`attach(optimizer)`
registers that wait as a step pre-hook) or wherever it calls
`wait_snapshot()`.  This is CheckFreq's split of a checkpoint into a snapshot
pipelined with the next iteration and a persist step (Mohan et al., FAST '21).

Torn copies are impossible to miss: every tensor's version counter (bumped by
every in-place write, autograd or not) is read when it is referenced and again
after its copy; a tensor written in between fails the commit with a
StoreError naming it, instead of committing a state that never existed.
A module's buffers (running statistics that its forward updates in place)
are copied at `submit`, before the loop can run another forward.
"""

from __future__ import annotations

import torch

from .errors import StoreError


def references(state):
    """The state's tree with every tensor detached but not copied, and the
    (name, tensor, version) of each, to check after the copy."""
    checks = []

    def walk(node, path):
        if isinstance(node, torch.nn.Module):
            buffers = {n for n, _ in node.named_buffers()}
            return {k: v.detach().clone() if k in buffers else walk(v, _join(path, k))
                    for k, v in node.state_dict().items()}
        if isinstance(node, torch.Tensor):
            t = node.detach()
            checks.append((path, t, t._version))
            return t
        if isinstance(node, dict):
            return {k: walk(v, _join(path, k)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(walk(v, _join(path, i)) for i, v in enumerate(node))
        return node

    return walk(state, ""), checks


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def check_unchanged(checks) -> None:
    """Raises StoreError naming the first tensor written since it was referenced."""
    for name, t, version in checks:
        if t._version != version:
            raise StoreError(
                f"tensor {name!r} was written while its snapshot was being copied, so this "
                f"commit would not be a state that existed; wait for the copy before updating "
                f"the state (BackgroundCommitter.attach(optimizer) or wait_snapshot())")
