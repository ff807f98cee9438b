"""Flattening a nested state (dicts, lists, tuples, tensors, plain values) to named tensors.

A commit keeps the structure as JSON (the "tree") and the tensors as a flat
manifest name -> object id, so a diff compares tensors by name and a
checkout rebuilds exactly the nesting that was committed.  Keys keep their
type (optimizer state uses int keys) because a dict is stored as a list of
[key, node] pairs, and JSON keeps ints and strings apart inside lists.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .errors import StoreError

_PLAIN = (bool, int, float, str, type(None))


def _name(prefix: str, key) -> str:
    return f"{prefix}/{key}" if prefix else str(key)


def flatten(state: Any, prefix: str = "") -> tuple[dict, dict[str, torch.Tensor]]:
    """(tree JSON, {name: tensor}); raises StoreError naming any leaf it cannot store."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node, name):
        if isinstance(node, torch.nn.Module):
            node = node.state_dict()
        if isinstance(node, torch.Tensor):
            if name in tensors:
                raise StoreError(f"two tensors would be stored under the name {name!r}")
            tensors[name] = node
            return {"t": "tensor", "name": name}
        if isinstance(node, dict):
            items = []
            for k, v in node.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise StoreError(f"key {k!r} under {name or 'the root'!r} is neither str nor int")
                items.append([k, walk(v, _name(name, k))])
            return {"t": "dict", "items": items}
        if isinstance(node, (list, tuple)):
            kind = "list" if isinstance(node, list) else "tuple"
            return {"t": kind, "items": [walk(v, _name(name, i)) for i, v in enumerate(node)]}
        if isinstance(node, _PLAIN):
            if isinstance(node, float) and not math.isfinite(node):
                return {"t": "float", "v": repr(node)}  # JSON has no nan/inf
            return {"t": "value", "v": node}
        raise StoreError(f"{name or 'the state'!r} is a {type(node).__name__}; a commit holds "
                         "tensors, dicts, lists, tuples, and str/int/float/bool/None values")

    return walk(state, prefix), tensors


def unflatten(tree: dict, load: Callable[[str], torch.Tensor]) -> Any:
    """Rebuilds the nesting; `load(name)` gives each tensor."""
    t = tree["t"]
    if t == "tensor":
        return load(tree["name"])
    if t == "dict":
        return {k: unflatten(v, load) for k, v in tree["items"]}
    if t == "list":
        return [unflatten(v, load) for v in tree["items"]]
    if t == "tuple":
        return tuple(unflatten(v, load) for v in tree["items"])
    if t == "value":
        return tree["v"]
    if t == "float":
        return float(tree["v"])
    raise StoreError(f"unknown node kind {t!r} in a commit's tree")


def clean_json(value: Any, what: str) -> Any:
    """Checks that metrics/config/cursor are JSON values; nan/inf become strings."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {str(k): clean_json(v, f"{what}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v, f"{what}[{i}]") for i, v in enumerate(value)]
    raise StoreError(f"{what} is a {type(value).__name__}; it must be a JSON value")
