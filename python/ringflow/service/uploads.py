"""Source files streamed to the master, for `ringflow data add` from another host.

The client announces the file (name, size), then sends it in chunks of
CHUNK_BYTES, each an ordinary authenticated protocol request naming its
offset, hashing as it reads; the master appends them to
DIR/uploads/ID.partial, hashing as it writes.  The ingest (`data_add` with
`upload=ID` and the client's sha256) starts only when every byte is there
and the two hashes match; the file
is removed afterwards, used or not.  A file over the master's limit
(--max-upload-bytes) is refused before a byte is sent.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

CHUNK_BYTES = 16 << 20
DEFAULT_LIMIT = 16 << 30


class Uploads:
    """The master's side."""

    def __init__(self, directory: str, limit: int = DEFAULT_LIMIT):
        self.directory, self.limit = os.path.join(directory, "uploads"), limit
        shutil.rmtree(self.directory, ignore_errors=True)   # a restart drops unfinished uploads
        os.makedirs(self.directory)
        self._open: dict[str, dict] = {}
        self._lock = threading.Lock()

    def begin(self, filename: str, size: int) -> str:
        ext = os.path.splitext(os.path.basename(filename))[1].lower()
        if size < 0 or size > self.limit:
            raise ValueError(f"upload of {filename}: {size} bytes is over the master's limit of "
                             f"{self.limit} bytes (ringflow master --max-upload-bytes)")
        uid = secrets.token_hex(8)
        path = os.path.join(self.directory, f"{uid}{ext}")
        open(path + ".partial", "wb").close()
        with self._lock:
            self._open[uid] = {"path": path, "size": size, "got": 0,
                               "hash": hashlib.sha256(), "name": filename,
                               "lock": threading.Lock()}
        return uid

    def _get(self, uid: str) -> dict:
        with self._lock:
            up = self._open.get(uid)
        if up is None:
            raise LookupError(f"no upload {uid!r} (finished, failed, or lost in a master restart): "
                              "send the file again")
        return up

    def chunk(self, uid: str, offset: int, data: bytes) -> int:
        up = self._get(uid)
        with up["lock"]:
            if offset != up["got"]:
                raise ValueError(f"upload of {up['name']}: a chunk at byte {offset}, the file "
                                 f"has {up['got']} bytes so far")
            if up["got"] + len(data) > up["size"]:
                self.drop(uid)
                raise ValueError(f"upload of {up['name']}: more than the {up['size']} bytes "
                                 "announced")
            with open(up["path"] + ".partial", "ab") as f:
                f.write(data)
            up["hash"].update(data)
            up["got"] += len(data)
            return up["got"]

    def finish(self, uid: str, sha256: str) -> str:
        """The complete file's path, checked against the announced size and hash."""
        up = self._get(uid)
        with up["lock"]:
            if up["got"] != up["size"]:
                raise ValueError(f"upload of {up['name']}: {up['got']} of {up['size']} bytes "
                                 "arrived")
            got = up["hash"].hexdigest()
            if got != sha256:
                self.drop(uid)
                raise ValueError(f"upload of {up['name']}: sha256 {got[:16]}... does not match "
                                 f"the client's {str(sha256)[:16]}... (corrupted in transit)")
            os.replace(up["path"] + ".partial", up["path"])
            return up["path"]

    def drop(self, uid: str) -> None:
        with self._lock:
            up = self._open.pop(uid, None)
        if up:
            for p in (up["path"], up["path"] + ".partial"):
                if os.path.exists(p):
                    os.remove(p)


def send(call, path: str) -> tuple[str, str]:
    """The client's side: streams `path` with `call(op, payload, **fields)`;
    (the upload id, the sha256 of what was sent)."""
    uid = call("upload_begin", b"", filename=os.path.basename(path),
               size=os.path.getsize(path))[0]["upload"]
    h, offset, sending = hashlib.sha256(), 0, None
    # one chunk in flight while the next is read and hashed; chunks still arrive in order
    with open(path, "rb") as f, ThreadPoolExecutor(1) as pool:
        while block := f.read(CHUNK_BYTES):
            h.update(block)
            if sending is not None:
                sending.result()
            sending = pool.submit(call, "upload_chunk", block, upload=uid, offset=offset)
            offset += len(block)
        if sending is not None:
            sending.result()
    return uid, h.hexdigest()
