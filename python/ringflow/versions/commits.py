"""Commits: immutable JSON records whose id is the sha256 of their canonical bytes."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

from .errors import CorruptObjectError, MissingObjectError
from .files import fanout_path, publish, write_tmp


@dataclass(frozen=True)
class Commit:
    parent: str | None
    step: int
    time: float                       # wall time (seconds since the epoch) of the snapshot
    message: str
    metrics: dict
    manifest: dict                    # tensor name -> object id (model, optimizer, RNG states)
    tree: dict                        # nesting of the committed state (see tree.py)
    rng: dict | None = None           # tree of the RNG states; tensors are in the manifest
    cursor: dict = field(default_factory=dict)   # data cursor: epoch, position, shuffle seed
    config: dict = field(default_factory=dict)   # the job's config
    extra: dict = field(default_factory=dict)    # trainer state (e.g. the guard's moving average)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @property
    def id(self) -> str:
        return hashlib.sha256(self.encode()).hexdigest()

    def summary(self, cid: str) -> dict:
        return {"id": cid, "parent": self.parent, "step": self.step, "time": self.time,
                "metrics": self.metrics, "message": self.message, "cursor": self.cursor,
                "tensors": len(self.manifest)}


class CommitStore:
    """commits/<first two hex digits>/<rest of the id>."""

    def __init__(self, root: str):
        self.root = os.path.join(root, "commits")

    def path(self, cid: str) -> str:
        return fanout_path(self.root, cid, "a commit id")

    def write_tmp(self, commit: Commit) -> tuple[str, str | None]:
        cid = commit.id
        if os.path.exists(self.path(cid)):
            return cid, None
        return cid, write_tmp(self.path(cid), [commit.encode()])

    def publish(self, tmp: str, cid: str) -> None:
        publish(tmp, self.path(cid))

    def read(self, cid: str) -> Commit:
        p = self.path(cid)
        try:
            with open(p, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise MissingObjectError(f"commit {cid} is missing ({p})") from None
        got = hashlib.sha256(data).hexdigest()
        if got != cid:
            raise CorruptObjectError(f"commit {cid} is corrupt or truncated ({len(data)} bytes; "
                                     f"content hashes to {got}) ({p})")
        try:
            return Commit(**json.loads(data))
        except (ValueError, TypeError) as e:
            raise CorruptObjectError(f"commit {cid} cannot be parsed ({p}): {e}") from None

    def all_ids(self):
        if not os.path.isdir(self.root):
            return
        for d in sorted(os.listdir(self.root)):
            sub = os.path.join(self.root, d)
            if len(d) == 2 and os.path.isdir(sub):
                for name in sorted(os.listdir(sub)):
                    yield d + name, os.path.join(sub, name)
