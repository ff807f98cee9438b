"""Content-addressed tensor objects: a small JSON header plus the raw bytes.

An object's id is sha256 over its dtype, shape and bytes, so an unchanged
tensor maps to an existing file and is never written twice (dedup), and
any flipped byte is caught on read.  Layout of a file:

    b"RFOBJ1\\n" | u64 header length | header JSON | pad to 64 | raw bytes

The payload is 64-byte aligned so a checkout memory-maps it and hands out
tensors that share the page cache (no pickle, no copy until written).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch

from .errors import CorruptObjectError, MissingObjectError, StoreError
from .files import fanout_path, publish, write_tmp

MAGIC = b"RFOBJ1\n"
ALIGN = 64

_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)}


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise StoreError(f"dtype {dtype} cannot be stored (supported: {', '.join(_DTYPES)})")
    return name


def raw_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's bytes, C-contiguous, as a flat memoryview (no copy when already contiguous)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy()).cast("B")


def object_id(dtype: str, shape: tuple, data) -> str:
    h = hashlib.sha256(f"{dtype}|{','.join(map(str, shape))}|".encode())
    h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class ObjectInfo:
    oid: str
    dtype: str
    shape: tuple
    nbytes: int


class ObjectStore:
    """objects/<first two hex digits>/<rest of the id>, written once, never modified."""

    def __init__(self, root: str):
        self.root = os.path.join(root, "objects")

    def path(self, oid: str) -> str:
        return fanout_path(self.root, oid, "an object id")

    def exists(self, oid: str) -> bool:
        return os.path.exists(self.path(oid))

    def hash_tensor(self, t: torch.Tensor) -> tuple[ObjectInfo, memoryview]:
        dt = dtype_name(t.dtype)
        shape = tuple(t.shape)
        data = raw_bytes(t)
        return ObjectInfo(object_id(dt, shape, data), dt, shape, len(data)), data

    def write(self, info: ObjectInfo, data, *, sync: bool = True) -> str | None:
        """Writes the object unless it exists; returns the temporary path to publish, or None.

        Objects go to temporary files first; the caller renames them into place
        (publish) once all of a commit's files are synced.
        """
        final = self.path(info.oid)
        if os.path.exists(final):
            return None
        header = json.dumps({"dtype": info.dtype, "shape": list(info.shape),
                             "nbytes": info.nbytes}).encode()
        head = MAGIC + struct.pack("<Q", len(header)) + header
        head += b"\0" * (-len(head) % ALIGN)
        return write_tmp(final, [head, data], sync=sync)

    def publish(self, tmp: str, oid: str) -> None:
        publish(tmp, self.path(oid), sync_dir=False)

    def _open(self, oid: str) -> tuple[mmap.mmap | None, dict, int]:
        p = self.path(oid)
        try:
            f = open(p, "rb")
        except FileNotFoundError:
            raise MissingObjectError(f"object {oid} is missing ({p})") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < len(MAGIC) + 8:
                raise CorruptObjectError(f"object {oid} is truncated ({size} bytes, {p})")
            # ACCESS_COPY: a private mapping, so callers get writable tensors
            # backed by the page cache, and writes never reach the store.
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            return self._parse(oid, p, mm, size)
        except BaseException:
            mm.close()
            raise

    def _parse(self, oid: str, p: str, mm: mmap.mmap, size: int) -> tuple[mmap.mmap, dict, int]:
        if mm[:len(MAGIC)] != MAGIC:
            raise CorruptObjectError(f"object {oid} has a bad magic number ({p})")
        (hlen,) = struct.unpack("<Q", mm[len(MAGIC):len(MAGIC) + 8])
        start = len(MAGIC) + 8
        try:
            header = json.loads(mm[start:start + hlen])
            dtype, shape, nbytes = header["dtype"], tuple(header["shape"]), int(header["nbytes"])
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptObjectError(f"object {oid} has an unreadable header ({p}): {e}") from None
        off = start + hlen
        off += -off % ALIGN
        if dtype not in _DTYPES or size != off + nbytes:
            raise CorruptObjectError(
                f"object {oid} is truncated or malformed: {size} bytes on disk, header says "
                f"{off + nbytes} ({p})")
        return mm, {"dtype": dtype, "shape": shape, "nbytes": nbytes}, off

    def verify(self, oid: str) -> ObjectInfo:
        """Re-hashes the object; raises CorruptObjectError naming it when it does not match."""
        mm, h, off = self._open(oid)
        with memoryview(mm) as mv:
            got = object_id(h["dtype"], h["shape"], mv[off:])
        mm.close()
        if got != oid:
            raise CorruptObjectError(
                f"object {oid} is corrupt: its content hashes to {got} ({self.path(oid)})")
        return ObjectInfo(oid, h["dtype"], h["shape"], h["nbytes"])

    def load(self, oid: str, *, verify: bool = True) -> torch.Tensor:
        """The tensor, memory-mapped (copy-on-write); verified against its id unless verify=False."""
        mm, h, off = self._open(oid)
        dtype = _DTYPES[h["dtype"]]
        if verify:
            got = object_id(h["dtype"], h["shape"], memoryview(mm)[off:])
            if got != oid:
                raise CorruptObjectError(
                    f"object {oid} is corrupt: its content hashes to {got} ({self.path(oid)})")
        if h["nbytes"] == 0:
            return torch.empty(h["shape"], dtype=dtype)
        arr = np.frombuffer(mm, dtype=np.uint8, count=h["nbytes"], offset=off)
        return torch.from_numpy(arr).view(dtype).reshape(h["shape"])

    def all_ids(self):
        if not os.path.isdir(self.root):
            return
        for d in sorted(os.listdir(self.root)):
            sub = os.path.join(self.root, d)
            if len(d) != 2 or not os.path.isdir(sub):
                continue
            for name in sorted(os.listdir(sub)):
                yield d + name, os.path.join(sub, name)
