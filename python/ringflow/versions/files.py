"""Crash-safe file primitives: write to a temporary file, fsync, rename.

Git's discipline (objects written once and renamed into place, refs moved
last): a reader never sees a half-written file under its final name, and a
crash at any instant leaves at worst a stray ``*.tmp-*`` file that ``gc``
removes.
"""

from __future__ import annotations

import os
import uuid

from .errors import StoreError

TMP_MARK = ".tmp-"


def fanout_path(root: str, hex_id: str, what: str) -> str:
    """<root>/<first two hex digits>/<rest>: where a sha256-named file lives.
    Anything but 64 lowercase hex digits is refused, naming `what` it is not."""
    if len(hex_id) != 64 or any(c not in "0123456789abcdef" for c in hex_id):
        raise StoreError(f"not {what}: {hex_id!r}")
    return os.path.join(root, hex_id[:2], hex_id[2:])


def fsync_dir(path: str) -> None:
    """Makes a rename or a new entry in `path` durable (POSIX needs the directory synced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(final: str) -> str:
    d, base = os.path.split(final)
    return os.path.join(d, f"{base}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(final: str, chunks, *, sync: bool = True) -> int:
    """Writes the byte-like `chunks` to `final` atomically; returns the bytes written.

    With sync=False the data is not fsynced before the rename (callers that
    sync a batch of files themselves, then rename, use write_tmp/publish).
    """
    tmp = write_tmp(final, chunks, sync=sync)
    publish(tmp, final, sync_dir=sync)
    return os.path.getsize(final)


def write_tmp(final: str, chunks, *, sync: bool = True) -> str:
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tmp_name(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for c in chunks:
            mv = memoryview(c).cast("B")
            while len(mv):
                n = os.write(fd, mv)
                mv = mv[n:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def publish(tmp: str, final: str, *, sync_dir: bool = True) -> None:
    os.replace(tmp, final)
    if sync_dir:
        fsync_dir(os.path.dirname(final))


def is_tmp(name: str) -> bool:
    return TMP_MARK in name
