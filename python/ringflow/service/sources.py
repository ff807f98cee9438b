"""Readers of data sources, each giving batches of records as {field: array}.

CSV (a header row; a column named `y` becomes y, the others x),
NPY (one array: x), NPZ (named arrays with one leading record axis),
JSONL (one object of fields per line) and a Python generator named
`module:function` that yields such objects.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
from typing import Iterator

import numpy as np

BATCH = 4096   # records a row-wise reader gathers before handing them on


def _stack(rows: list[dict], where: str) -> dict:
    fields = list(rows[0])
    for i, r in enumerate(rows):
        if list(r) != fields:
            raise ValueError(f"{where}: record {i} has fields {sorted(r)}, the first has {sorted(fields)}")
    return {f: np.asarray([r[f] for r in rows]) for f in fields}


def _rows_in_batches(rows, where: str) -> Iterator[dict]:
    batch = []
    for r in rows:
        if not isinstance(r, dict) or not r:
            raise ValueError(f"{where}: a record must be a non-empty object of fields, got {r!r:.80}")
        batch.append(r)
        if len(batch) == BATCH:
            yield _stack(batch, where)
            batch = []
    if batch:
        yield _stack(batch, where)


def _csv(path: str) -> Iterator[dict]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty CSV (a header row naming the columns is needed)")
        if "y" not in header:
            raise ValueError(f"{path}: no column named 'y' in the header {header}")
        yi = header.index("y")

        def rows():
            for n, row in enumerate(reader, start=2):
                try:
                    vals = [float(v) for v in row]
                except ValueError:
                    raise ValueError(f"{path}:{n}: a value is not a number: {row}") from None
                if len(vals) != len(header):
                    raise ValueError(f"{path}:{n}: {len(vals)} columns, the header has {len(header)}")
                y = vals.pop(yi)
                yield {"x": np.asarray(vals, np.float32), "y": int(y) if y.is_integer() else y}

        yield from _rows_in_batches(rows(), path)


def _jsonl(path: str) -> Iterator[dict]:
    def rows():
        with open(path) as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not JSON: {e}") from None

    yield from _rows_in_batches(rows(), path)


def _arrays(arrays: dict, where: str) -> Iterator[dict]:
    if not arrays:
        raise ValueError(f"{where}: no arrays")
    n = {len(a) if a.ndim else -1 for a in arrays.values()}
    if len(n) != 1 or -1 in n:
        raise ValueError(f"{where}: the arrays must share their first (record) axis, got "
                         + ", ".join(f"{k}{list(a.shape)}" for k, a in arrays.items()))
    yield arrays


def _generator(spec: str) -> Iterator[dict]:
    mod, _, fn = spec.partition(":")
    try:
        gen = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load the generator {spec!r}: {e}") from None
    yield from _rows_in_batches(gen(), spec)


def read(source: str) -> Iterator[dict]:
    """Batches of records from `source` (a file path, or module:function for a generator)."""
    if not os.path.exists(source):
        if ":" in source and "/" not in source:
            return _generator(source)
        raise ValueError(f"data source {source!r}: no such file (nor a module:function generator)")
    ext = os.path.splitext(source)[1].lower()
    if ext == ".csv":
        return _csv(source)
    if ext == ".jsonl":
        return _jsonl(source)
    if ext == ".npy":
        return _arrays({"x": np.load(source, mmap_mode="r")}, source)
    if ext == ".npz":
        with np.load(source) as z:
            return _arrays({k: z[k] for k in z.files}, source)
    raise ValueError(f"data source {source!r}: unknown format {ext or '(no extension)'} "
                     "(use .csv, .npy, .npz, .jsonl or module:function)")
