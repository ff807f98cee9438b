"""Errors of the version store; each message names the object or ref at fault."""

from __future__ import annotations


class StoreError(RuntimeError):
    """Anything wrong with a version store (bad path, missing ref, bad input)."""


class CorruptObjectError(StoreError):
    """An object or commit whose bytes do not match its id, or that cannot be parsed."""


class MissingObjectError(StoreError):
    """A commit or tensor named by a ref or a manifest is not in the store."""


class DivergenceError(RuntimeError):
    """Training kept diverging after the allowed number of rollbacks (raised on every rank)."""
