"""Refs: HEAD, branches (refs/heads), tags (refs/tags), and saved lines (refs/abandoned).

A ref is a small file holding a commit id, replaced atomically (tmp, fsync,
rename), and always moved after the commit it names is durable, so HEAD
is on a complete commit at every instant.  HEAD holds "ref: refs/heads/X"
(on a branch) or a commit id (detached).
"""

from __future__ import annotations

import os
import re

from .errors import StoreError
from .files import atomic_write

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
KINDS = ("heads", "tags", "abandoned")


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise StoreError(f"bad ref name {name!r}: use letters, digits, '.', '_', '-'")
    return name


class Refs:
    def __init__(self, root: str):
        self.root = root

    def _path(self, ref: str) -> str:
        return os.path.join(self.root, ref)

    def read(self, ref: str) -> str | None:
        try:
            with open(self._path(ref)) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def write(self, ref: str, value: str) -> None:
        atomic_write(self._path(ref), [(value + "\n").encode()])

    def head_ref(self) -> str | None:
        """The branch HEAD is on ("refs/heads/main"), or None when detached."""
        v = self.read("HEAD")
        if v and v.startswith("ref: "):
            return v[5:]
        return None

    def head(self) -> str | None:
        """The commit id HEAD points to (None in an empty store)."""
        v = self.read("HEAD")
        if v is None:
            return None
        if v.startswith("ref: "):
            return self.read(v[5:])
        return v

    def move_head(self, cid: str) -> None:
        """Moves the current branch (or detached HEAD) to `cid`: the last step of a commit."""
        branch = self.head_ref()
        self.write(branch if branch else "HEAD", cid)

    def set(self, kind: str, name: str, cid: str) -> str:
        ref = f"refs/{kind}/{check_name(name)}"
        self.write(ref, cid)
        return ref

    def all(self) -> dict[str, str]:
        """Every ref (HEAD included) -> the commit id it names."""
        out = {}
        h = self.head()
        if h:
            out["HEAD"] = h
        for kind in KINDS:
            d = os.path.join(self.root, "refs", kind)
            if os.path.isdir(d):
                for name in sorted(os.listdir(d)):
                    if ".tmp-" not in name:
                        v = self.read(f"refs/{kind}/{name}")
                        if v:
                            out[f"refs/{kind}/{name}"] = v
        return out
