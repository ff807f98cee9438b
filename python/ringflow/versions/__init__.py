"""Version control for training state (SPEC mechanism 8).

`Store` is a content-addressed, crash-safe store of commits (model and
optimizer state, data cursor, RNG states, config, metrics) with refs, log,
diff, checkout, rollback, fsck and gc; `BackgroundCommitter` writes commits
off the training loop; `DivergenceGuard` and `VersionedTraining` roll a
data-parallel job back to its last good commit when it diverges.
"""

from .commits import Commit
from .errors import CorruptObjectError, DivergenceError, MissingObjectError, StoreError
from .store import Store
from .writer import BackgroundCommitter, snapshot

__all__ = ["BackgroundCommitter", "Commit", "CorruptObjectError", "DivergenceError",
           "MissingObjectError", "Store", "StoreError", "snapshot"]
