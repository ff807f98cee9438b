"""The schedule tuner (mechanism 9): link measurement (links), patterns
(pattern), the cost model (cost), multi-start local search (search), the
tuning of a live communicator (tuner), the cache (cache), the CSV export
(export) and `ringflow tune` (cli)."""

from .pattern import Links, Pattern
from .tuner import apply, set_deterministic, tune, tune_or_load

__all__ = ["Links", "Pattern", "apply", "set_deterministic", "tune", "tune_or_load"]
