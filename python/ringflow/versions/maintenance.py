"""fsck (verify every hash, every ref, every manifest) and gc (drop what no ref reaches)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from .errors import StoreError
from .files import is_tmp


def _reachable(store, problems: list | None = None) -> tuple[set, set]:
    """Commit ids and object ids reachable from any ref or rollback event."""
    commits, objects = set(), set()
    starts = list(store.refs.all().items())
    for e in store._events():
        starts += [(f"rollback event {e['from'][:12]}->{e['to'][:12]}", e["to"])]
    for ref, cid in starts:
        while cid and cid not in commits:
            try:
                c = store.commits.read(cid)
            except StoreError as e:
                if problems is not None:
                    problems.append(f"{e} (reached from {ref})")
                break
            commits.add(cid)
            for name, oid in c.manifest.items():
                objects.add(oid)
                if problems is not None and not os.path.exists(store.objects.path(oid)):
                    problems.append(f"object {oid} (tensor {name!r} of commit {cid}) is missing")
            cid = c.parent
    return commits, objects


def fsck(store) -> list[str]:
    """Every problem found, each naming the commit, object or ref; [] when the store is clean.

    Stray temporary files are not problems (a crash mid-commit leaves them; gc removes them).
    """
    problems: list[str] = []
    head = store.refs.read("HEAD")
    if head is None:
        problems.append("HEAD is missing")
    elif head.startswith("ref: ") and store.refs.read(head[5:]) is None and any(store.commits.all_ids()):
        problems.append(f"HEAD names the branch {head[5:]}, which does not exist")
    for ref, cid in store.refs.all().items():
        if not os.path.exists(store.commits.path(cid)):
            problems.append(f"{ref} points to commit {cid}, which is missing")
    _reachable(store, problems)
    for cid, _ in store.commits.all_ids():
        if is_tmp(cid):
            continue
        try:
            store.commits.read(cid)
        except StoreError as e:
            problems.append(str(e))
    oids = [oid for oid, _ in store.objects.all_ids() if not is_tmp(oid)]

    def check(oid):
        try:
            store.objects.verify(oid)
            return None
        except StoreError as e:
            return str(e)

    with ThreadPoolExecutor(2) as pool:
        problems += [p for p in pool.map(check, oids) if p]
    # One message per problem, in a stable order.
    return sorted(set(problems), key=problems.index)


def gc(store) -> dict:
    """Removes unreachable commits and objects and stray temporary files; returns what it removed."""
    removed = {"commits": 0, "objects": 0, "tmp_files": 0, "bytes": 0}
    with store._lock():
        commits, objects = _reachable(store)
        for kind, ids, keep in (("commits", store.commits.all_ids(), commits),
                                ("objects", store.objects.all_ids(), objects)):
            for name, path in list(ids):
                if is_tmp(name):
                    removed["tmp_files"] += 1
                elif name in keep:
                    continue
                else:
                    removed[kind] += 1
                removed["bytes"] += os.path.getsize(path)
                os.unlink(path)
        for dirpath, _, files in os.walk(store.path):
            for f in files:
                if is_tmp(f):
                    p = os.path.join(dirpath, f)
                    removed["bytes"] += os.path.getsize(p)
                    os.unlink(p)
                    removed["tmp_files"] += 1
    return removed
