"""The dataset repository: named datasets with immutable versions, in fixed-size npy shards.

`add` ingests a source (sources.py) through an optional annotation hook
`module:function(record) -> record | None` (None rejects the record; the
rejections are counted in the manifest, never dropped silently) into
DIR/datasets/NAME/vN/shard-KKKKK.FIELD.npy files and a manifest: the
schema (dtype and per-record shape of each field), the record counts and a
sha256 per shard (over its field files, in schema order).  `verify`
rechecks every hash.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time

import numpy as np

from . import sources
from .state import State

SHARD_BYTES = 64 << 20   # a shard holds about this many bytes of records


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'NAME' or 'NAME@V' -> (name, version or None for the latest)."""
    name, sep, ver = ref.partition("@")
    if not name or (sep and not ver.isdigit()):
        raise ValueError(f"dataset {ref!r} must be NAME or NAME@VERSION")
    return name, int(ver) if sep else None


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"dataset name {name!r}: use letters, digits, '-', '_' and '.'")


def _load_hook(spec: str):
    mod, sep, fn = spec.partition(":")
    if not sep:
        raise ValueError(f"annotation hook {spec!r} must look like module:function")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load the annotation hook {spec!r}: {e}") from None


def _annotate(batch: dict, hook) -> tuple[dict | None, int]:
    kept = []
    n = len(next(iter(batch.values())))
    for i in range(n):
        out = hook({k: v[i] for k, v in batch.items()})
        if out is not None:
            kept.append(out)
    return (sources._stack(kept, "annotation hook") if kept else None), n - len(kept)


def shard_sha256(directory: str, shard: dict) -> str:
    h = hashlib.sha256()
    for name in shard["files"]:
        with open(os.path.join(directory, name), "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


class _Hashing:
    """A write-only file that feeds a hash with everything written to it."""

    def __init__(self, f, h):
        self.f, self.h = f, h

    def write(self, data) -> int:
        self.h.update(data)
        return self.f.write(data)


class _ShardWriter:
    def __init__(self, directory: str):
        self.directory, self.shards, self.schema = directory, [], None
        self.buf: dict[str, list] = {}
        self.buffered = 0
        self.per_shard = 0

    def add(self, batch: dict) -> None:
        schema = {k: {"dtype": str(v.dtype), "shape": list(v.shape[1:])} for k, v in batch.items()}
        if self.schema is None:
            self.schema = schema
            per_record = sum(v[0].nbytes for v in batch.values()) if len(batch[next(iter(batch))]) else 1
            self.per_shard = max(1, SHARD_BYTES // max(per_record, 1))
            self.buf = {k: [] for k in schema}
        elif schema != self.schema:
            raise ValueError(f"records change schema mid-source: {schema} after {self.schema}")
        n, start = len(next(iter(batch.values()))), 0
        while start < n:
            take = min(n - start, self.per_shard - self.buffered)
            for k, v in batch.items():
                self.buf[k].append(v[start:start + take])
            self.buffered += take
            start += take
            if self.buffered == self.per_shard:
                self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        k = len(self.shards)
        files, h = [], hashlib.sha256()
        for field, parts in self.buf.items():
            name = f"shard-{k:05d}.{field}.npy"
            with open(os.path.join(self.directory, name), "wb") as f:
                # hashed as written: the same bytes shard_sha256 reads back, one pass fewer
                np.save(_Hashing(f, h), parts[0] if len(parts) == 1 else np.concatenate(parts))
            files.append(name)
        shard = {"files": files, "records": self.buffered, "sha256": h.hexdigest()}
        self.shards.append(shard)
        self.buf = {f: [] for f in self.buf}
        self.buffered = 0


class Repository:
    def __init__(self, state: State):
        self.state = state
        self.root = os.path.join(state.directory, "datasets")

    def add(self, name: str, source: str, annotate: str | None = None,
            source_name: str | None = None) -> dict:
        """Ingests `source`; the manifest names it `source_name` (an upload's original path)."""
        _check_name(name)
        hook = _load_hook(annotate) if annotate else None
        latest = self.state.one("SELECT MAX(version) AS v FROM datasets WHERE name = ?", name)["v"]
        version = (latest or 0) + 1
        directory = os.path.join(self.root, name, f"v{version}")
        tmp = directory + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        writer, seen, rejected, t0 = _ShardWriter(tmp), 0, 0, time.perf_counter()
        try:
            for batch in sources.read(source):
                n = len(next(iter(batch.values())))
                seen += n
                if hook:
                    batch, dropped = _annotate(batch, hook)
                    rejected += dropped
                if batch is not None:
                    writer.add(batch)
            writer.flush()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if not writer.shards:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ValueError(f"{source}: no records to store ({seen} read, {rejected} rejected)")
        manifest = {"name": name, "version": version, "source": source_name or source,
                    "annotate": annotate,
                    "schema": writer.schema, "records": seen - rejected, "read": seen,
                    "rejected": rejected, "shards": writer.shards,
                    "bytes": sum(os.path.getsize(os.path.join(tmp, f))
                                 for s in writer.shards for f in s["files"]),
                    "ingest_s": time.perf_counter() - t0}
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp, directory)
        with self.state.tx() as db:
            db.execute("INSERT INTO datasets VALUES (?, ?, ?, ?)",
                       (name, version, json.dumps(manifest), time.time()))
        return manifest

    def manifest(self, ref: str) -> dict:
        name, version = parse_ref(ref)
        row = self.state.one("SELECT manifest FROM datasets WHERE name = ? AND version = "
                             "COALESCE(?, (SELECT MAX(version) FROM datasets WHERE name = ?))",
                             name, version, name)
        if row is None:
            known = sorted({r["name"] for r in self.state.query("SELECT name FROM datasets")})
            raise LookupError(f"unknown dataset {ref!r} (known: {', '.join(known) or 'none'})")
        return json.loads(row["manifest"])

    def directory(self, manifest: dict) -> str:
        return os.path.join(self.root, manifest["name"], f"v{manifest['version']}")

    def list(self) -> list[dict]:
        return [{"name": r["name"], "version": r["version"], "records": m["records"],
                 "rejected": m["rejected"], "shards": len(m["shards"]), "bytes": m["bytes"]}
                for r in self.state.query("SELECT * FROM datasets ORDER BY name, version")
                for m in [json.loads(r["manifest"])]]

    def verify(self, ref: str) -> list[str]:
        """Problems found ([] when every shard's hash matches its manifest)."""
        m = self.manifest(ref)
        d, bad = self.directory(m), []
        for i, s in enumerate(m["shards"]):
            try:
                got = shard_sha256(d, s)
            except OSError as e:
                bad.append(f"dataset {m['name']}@{m['version']} shard {i}: unreadable ({e})")
                continue
            if got != s["sha256"]:
                bad.append(f"dataset {m['name']}@{m['version']} shard {i} ({', '.join(s['files'])}): "
                           f"sha256 {got[:16]}... does not match the manifest's {s['sha256'][:16]}...")
        return bad

    def remove(self, ref: str) -> list[int]:
        name, version = parse_ref(ref)
        self.manifest(ref)  # raises for an unknown dataset
        with self.state.tx() as db:
            rows = db.execute("SELECT version FROM datasets WHERE name = ?" +
                              (" AND version = ?" if version else ""),
                              (name, version) if version else (name,)).fetchall()
            db.execute("DELETE FROM datasets WHERE name = ?" + (" AND version = ?" if version else ""),
                       (name, version) if version else (name,))
        for (v,) in rows:
            shutil.rmtree(os.path.join(self.root, name, f"v{v}"), ignore_errors=True)
        return [v for (v,) in rows]

    def read_file(self, ref: str, shard: int, file: str) -> bytes:
        m = self.manifest(ref)
        if not 0 <= shard < len(m["shards"]) or file not in m["shards"][shard]["files"]:
            raise LookupError(f"dataset {ref!r} has no shard {shard} file {file!r}")
        with open(os.path.join(self.directory(m), file), "rb") as f:
            return f.read()


def load_arrays(directory: str, manifest: dict, check: bool = True) -> dict:
    """Every field of a dataset version concatenated over its shards; hashes checked first."""
    if check:
        for i, s in enumerate(manifest["shards"]):
            got = shard_sha256(directory, s)
            if got != s["sha256"]:
                raise ValueError(f"dataset {manifest['name']}@{manifest['version']} shard {i} "
                                 f"({', '.join(s['files'])}): sha256 {got[:16]}... does not match "
                                 f"the manifest's {s['sha256'][:16]}...")
    out = {}
    for field in manifest["schema"]:
        parts = [np.load(os.path.join(directory, f))
                 for s in manifest["shards"] for f in s["files"] if f.split(".")[-2] == field]
        out[field] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return out
