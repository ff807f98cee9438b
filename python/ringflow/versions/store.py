"""The version store: a directory anyone can copy.

    <dir>/ringflow-store        marker (format version)
    <dir>/objects/ab/cdef...    tensors, content-addressed (objects.py)
    <dir>/commits/ab/cdef...    commits, content-addressed (commits.py)
    <dir>/HEAD, refs/...        refs (refs.py)
    <dir>/events/...            rollbacks, one JSON file each

Write order makes a crash at any instant harmless: objects and the commit
go to synced temporary files, are renamed into place, and only then does
the ref move (atomically).  Nothing is ever modified in place or deleted
except by gc, which only removes what no ref reaches.
"""

from __future__ import annotations

import fcntl
import json
import os
import time as _time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager


from .commits import Commit, CommitStore
from .diff import metric_deltas, tensor_delta
from .errors import StoreError
from .files import atomic_write, fsync_dir, is_tmp
from .objects import ObjectStore
from .refs import Refs, check_name
from .tree import clean_json, flatten, unflatten

FORMAT = 1
# hashlib releases the GIL on large buffers, so two threads hash two tensors at once.
_HASH_THREADS = max(1, min(4, os.cpu_count() or 1))


class Store:
    def __init__(self, path: str, *, create: bool = True, lock_timeout_s: float = 600.0):
        self.path = os.path.abspath(os.fspath(path))
        self.lock_timeout_s = lock_timeout_s
        marker = os.path.join(self.path, "ringflow-store")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise StoreError(f"{self.path} is not a directory")
        if not os.path.exists(marker):
            if not create:
                raise StoreError(f"{self.path} is not a ringflow version store (no ringflow-store file)")
            if os.path.isdir(self.path) and os.listdir(self.path):
                raise StoreError(f"{self.path} exists, is not empty, and is not a version store")
            os.makedirs(self.path, exist_ok=True)
            self.refs = Refs(self.path)
            self.refs.write("HEAD", "ref: refs/heads/main")
            atomic_write(marker, [json.dumps({"format": FORMAT}).encode()])
        self.objects = ObjectStore(self.path)
        self.commits = CommitStore(self.path)
        self.refs = Refs(self.path)

    # ---- writing -------------------------------------------------------
    @contextmanager
    def _lock(self):
        """One writer at a time (commits, ref moves, gc); readers need no lock."""
        path = os.path.join(self.path, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = _time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if _time.monotonic() > deadline:
                        raise StoreError(f"another writer held {path} for over {self.lock_timeout_s:g} s "
                                         f"(lock_timeout_s)") from None
                    _time.sleep(0.005)
            yield
        finally:
            os.close(fd)

    def commit(self, state, *, step: int, metrics: dict | None = None, message: str = "",
               rng=None, cursor: dict | None = None, config: dict | None = None,
               extra: dict | None = None, wall_time: float | None = None) -> str:
        """Writes `state` (a module or a nested dict of tensors) as a new commit on HEAD.

        Returns the commit id once the commit is durable and HEAD points to it.
        Tensors already in the store (unchanged since an earlier commit) are not written.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise StoreError(f"step must be an int, got {step!r}")
        tree, tensors = flatten(state)
        rng_tree, rng_tensors = flatten(rng, "rng") if rng is not None else (None, {})
        if set(tensors) & set(rng_tensors):
            raise StoreError("the state has a top-level key 'rng' that clashes with the RNG states")
        tensors.update(rng_tensors)
        meta = dict(metrics=clean_json(metrics or {}, "metrics"),
                    cursor=clean_json(cursor or {}, "cursor"),
                    config=clean_json(config or {}, "config"),
                    extra=clean_json(extra or {}, "extra"))
        if not isinstance(message, str):
            raise StoreError(f"message must be a str, got {type(message).__name__}")
        with self._lock():
            parent = self.refs.head()
            manifest, tmps = self._write_objects(tensors)
            c = Commit(parent=parent, step=step, time=wall_time or _time.time(), message=message,
                       manifest=manifest, tree=tree, rng=rng_tree, **meta)
            # Objects renamed into place (then their directories synced) before
            # the commit that names them, and the commit before the ref.
            for tmp, oid in tmps:
                self.objects.publish(tmp, oid)
            for d in {self.objects.path(oid)[:-63] for _, oid in tmps}:
                fsync_dir(d)
            cid, ctmp = self.commits.write_tmp(c)
            if ctmp:
                self.commits.publish(ctmp, cid)
            self.refs.move_head(cid)
        return cid

    def _write_objects(self, tensors: dict) -> tuple[dict, list]:
        def one(item):
            name, t = item
            info, data = self.objects.hash_tensor(t)
            return name, info.oid, self.objects.write(info, data)

        with ThreadPoolExecutor(_HASH_THREADS) as pool:
            done = list(pool.map(one, sorted(tensors.items())))
        manifest = {name: oid for name, oid, _ in done}
        tmps, seen = [], set()
        for _, oid, tmp in done:
            if tmp and oid not in seen:
                tmps.append((tmp, oid))
                seen.add(oid)
            elif tmp:  # two names with identical content raced: keep one file
                os.unlink(tmp)
        return manifest, tmps

    # ---- reading -------------------------------------------------------
    def resolve(self, rev: str = "HEAD") -> str:
        """A commit id from HEAD, a branch, a tag, a ref path, a full id or a unique prefix (>= 4);
        REV~N is the Nth parent of REV (REV~ the first)."""
        if not isinstance(rev, str) or not rev:
            raise StoreError(f"not a revision: {rev!r}")
        if "~" in rev:
            base, _, n = rev.rpartition("~")
            if not (n == "" or n.isdigit()):
                raise StoreError(f"bad revision {rev!r}: use REV~N with a whole number N")
            cid = self.resolve(base)
            for i in range(int(n or 1)):
                cid = self.commits.read(cid).parent
                if cid is None:
                    raise StoreError(f"{rev!r}: {base} has only {i} ancestor(s)")
            return cid
        refs = self.refs.all()
        for cand in (rev, f"refs/heads/{rev}", f"refs/tags/{rev}", f"refs/abandoned/{rev}"):
            if cand in refs:
                return refs[cand]
        if rev == "HEAD":
            raise StoreError(f"the store {self.path} has no commits yet")
        rev = rev.lower()
        if len(rev) >= 4 and all(c in "0123456789abcdef" for c in rev):
            hits = [cid for cid, _ in self.commits.all_ids() if cid.startswith(rev)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise StoreError(f"{rev!r} is ambiguous: {len(hits)} commits start with it")
        raise StoreError(f"no commit, branch or tag named {rev!r} in {self.path}")

    def read_commit(self, rev: str = "HEAD") -> Commit:
        return self.commits.read(self.resolve(rev))

    def checkout(self, rev: str = "HEAD", *, verify: bool = True) -> dict:
        """The committed state (tensors memory-mapped, every one verified against its id)."""
        c = self.read_commit(rev)
        return unflatten(c.tree, self._loader(c, verify))

    def checkout_rng(self, rev: str = "HEAD"):
        c = self.read_commit(rev)
        return None if c.rng is None else unflatten(c.rng, self._loader(c, True))

    def _loader(self, c: Commit, verify: bool):
        names = [n for n in c.manifest]
        with ThreadPoolExecutor(_HASH_THREADS) as pool:
            loaded = dict(zip(names, pool.map(lambda n: self.objects.load(c.manifest[n], verify=verify),
                                              names)))
        return loaded.__getitem__

    def _events(self) -> list[dict]:
        d = os.path.join(self.path, "events")
        out = []
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if not is_tmp(name):
                    with open(os.path.join(d, name)) as f:
                        out.append(json.load(f))
        return out

    def log(self, rev: str = "HEAD", limit: int | None = None) -> list[dict]:
        """Commits reachable from `rev`, newest first; rollbacks to a commit are listed on it."""
        if rev == "HEAD" and self.refs.head() is None:
            return []
        by_target: dict[str, list] = {}
        for e in self._events():
            by_target.setdefault(e["to"], []).append(e)
        out, cid = [], self.resolve(rev)
        while cid and (limit is None or len(out) < limit):
            c = self.commits.read(cid)
            d = c.summary(cid)
            d["rollbacks"] = by_target.get(cid, [])
            out.append(d)
            cid = c.parent
        return out

    def show(self, rev: str = "HEAD") -> dict:
        cid = self.resolve(rev)
        c = self.commits.read(cid)
        d = c.summary(cid)
        d.update(manifest=c.manifest, config=c.config, extra=c.extra)
        return d

    def diff(self, a: str, b: str) -> dict:
        ca, cb = self.read_commit(a), self.read_commit(b)
        tensors = {}
        for name in sorted(set(ca.manifest) | set(cb.manifest)):
            oa, ob = ca.manifest.get(name), cb.manifest.get(name)
            if oa is None or ob is None:
                tensors[name] = {"changed": True, "max_abs": None, "rel_l2": None,
                                 "note": "added" if oa is None else "removed"}
                continue
            if oa == ob:
                tensors[name] = {"changed": False, "max_abs": 0.0, "rel_l2": 0.0}
                continue
            tensors[name] = tensor_delta(self.objects.load(oa), self.objects.load(ob), True)
        return {"a": self.resolve(a), "b": self.resolve(b), "tensors": tensors,
                "metrics": metric_deltas(ca.metrics, cb.metrics)}

    # ---- refs ----------------------------------------------------------
    def tag(self, name: str, rev: str = "HEAD") -> str:
        cid = self.resolve(rev)
        with self._lock():
            self.refs.set("tags", name, cid)
        return cid

    def branch(self, name: str, rev: str = "HEAD") -> str:
        cid = self.resolve(rev)
        with self._lock():
            self.refs.set("heads", name, cid)
        return cid

    def switch(self, name: str) -> None:
        """Puts HEAD on the branch `name` (which must exist)."""
        check_name(name)
        if self.refs.read(f"refs/heads/{name}") is None:
            raise StoreError(f"no branch {name!r}")
        with self._lock():
            self.refs.write("HEAD", f"ref: refs/heads/{name}")

    def rollback(self, rev: str, *, reason: str = "", step: int | None = None) -> dict:
        """Moves HEAD back to `rev`; the abandoned line is kept under refs/abandoned/...

        Returns the event, which is also recorded under events/ (and shown by log).
        """
        target = self.resolve(rev)
        self.commits.read(target)  # refuse to move HEAD onto a missing or corrupt commit
        with self._lock():
            old = self.refs.head()
            if old is None:
                raise StoreError("cannot roll back: the store has no commits")
            stamp = f"{_time.time_ns()}-{uuid.uuid4().hex[:6]}"
            saved = None
            if old != target:
                saved = self.refs.set("abandoned", f"{stamp}-{old[:12]}", old)
            event = {"kind": "rollback", "from": old, "to": target, "saved_as": saved,
                     "step": step, "reason": reason, "time": _time.time()}
            atomic_write(os.path.join(self.path, "events", f"{stamp}.json"),
                         [json.dumps(event, sort_keys=True).encode()])
            self.refs.move_head(target)
        return event

    # ---- maintenance (fsck, gc) live in maintenance.py --------------------
    def fsck(self) -> list[str]:
        from .maintenance import fsck

        return fsck(self)

    def gc(self) -> dict:
        from .maintenance import gc

        return gc(self)


__all__ = ["Store"]
