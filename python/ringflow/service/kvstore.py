"""The allreduce rendezvous, carried by the master's authenticated protocol.

Instead of a TCPStore of its own (no authentication, a port of its own, and
gone with the master process), an allreduce generation meets at a key-value
space the master holds in memory under the generation's prefix: a random
secret the master hands out only over the protocol, to the generation's
members.  Every rendezvous request is an ordinary protocol request, so it
carries RINGFLOW_SERVICE_TOKEN and names the worker, and the master serves
it only to a member of that generation; a worker without the token cannot
join.  The space lives as long as its generation: a restarted master opens
a new generation (the old space is gone with the old process), and a closed
generation answers every waiting `get` at once, so nobody waits on a group
that will never form.

`ServiceStore` is the workers' side: a torch.distributed Store whose
operations are requests to the master (the ringflow backend reads the
store only while it connects, so the round trips cost nothing later).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import torch.distributed as dist

GET_SLICE_S = 5.0    # one blocking `get` request waits at most this long; the client asks again


class GenerationClosed(LookupError):
    """The generation ended (the master re-formed the group); its rendezvous is gone."""


class RendezvousSpaces:
    """The master's side: one key-value space per open generation prefix."""

    def __init__(self):
        self._spaces: dict[str, dict[str, bytes]] = {}
        self._cond = threading.Condition()

    def open(self, prefix: str) -> None:
        with self._cond:
            self._spaces[prefix] = {}

    def close(self, prefix: str) -> None:
        with self._cond:
            self._spaces.pop(prefix, None)
            self._cond.notify_all()

    def _space(self, prefix: str) -> dict[str, bytes]:
        space = self._spaces.get(prefix)
        if space is None:
            raise GenerationClosed("this allreduce generation is over (the master re-formed the "
                                   "group): rendezvous closed")
        return space

    def serve(self, prefix: str, action: str, key: str, value: bytes, wait_s: float,
              expected: bytes = b"") -> tuple[dict, bytes]:
        with self._cond:
            space = self._space(prefix)
            value = bytes(value)
            if action == "set":
                space[key] = value
                self._cond.notify_all()
                return {}, b""
            if action == "add":
                n = int(space.get(key, b"0")) + int(value)
                space[key] = str(n).encode()
                self._cond.notify_all()
                return {"value": n}, b""
            if action == "compare_set":
                have = space.get(key)
                if (have is None and not expected) or have == expected:
                    space[key] = value
                    self._cond.notify_all()
                    return {}, value
                return {}, expected if have is None else have
            if action == "delete":
                return {"deleted": space.pop(key, None) is not None}, b""
            if action == "num_keys":
                return {"value": len(space)}, b""
            if action in ("get", "wait"):
                keys = key.split("\n")
                deadline = time.monotonic() + min(max(wait_s, 0.0), GET_SLICE_S)
                while not all(k in space for k in keys):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return {"found": False}, b""
                    self._cond.wait(left)
                    space = self._space(prefix)
                return {"found": True}, space[keys[0]] if action == "get" else b""
            if action == "check":
                return {"found": all(k in space for k in key.split("\n"))}, b""
        raise ValueError(f"unknown rendezvous action {action!r}")


class ServiceStore(dist.Store):
    """A torch Store over the master's protocol for one generation (see the module doc)."""

    def __init__(self, call, job: int, generation: int, prefix: str, timeout_s: float,
                 host: str):
        super().__init__()
        self._call, self._fields = call, {"job": job, "gen": generation, "prefix": prefix}
        self._timeout_s = timeout_s
        self.host = host   # ringflow.addresses.store_host: the route towards it picks the address

    def _kv(self, action: str, key: str, value: bytes = b"", **extra):
        return self._call("kv", value, action=action, key=key, **self._fields, **extra)

    def set_timeout(self, timeout: timedelta) -> None:
        self._timeout_s = timeout.total_seconds()

    def set(self, key: str, value) -> None:
        self._kv("set", key, value.encode() if isinstance(value, str) else bytes(value))

    def _wait_for(self, action: str, keys: list[str], timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            reply, data = self._kv(action, "\n".join(keys),
                                   wait_s=min(GET_SLICE_S, max(0.0, deadline - time.monotonic())))
            if reply["found"]:
                return bytes(data)   # torch's Store wants bytes, the protocol hands a bytearray
            if time.monotonic() >= deadline:
                raise TimeoutError(f"rendezvous: key(s) {', '.join(keys)} did not appear within "
                                   f"{timeout_s:.0f} s (a member of the group never came)")

    def get(self, key: str) -> bytes:
        return self._wait_for("get", [key], self._timeout_s)

    def wait(self, keys, timeout: timedelta | None = None) -> None:
        self._wait_for("wait", list(keys),
                       self._timeout_s if timeout is None else timeout.total_seconds())

    def check(self, keys) -> bool:
        return bool(self._kv("check", "\n".join(keys))[0]["found"])

    def add(self, key: str, value: int) -> int:
        return int(self._kv("add", key, str(int(value)).encode())[0]["value"])

    def compare_set(self, key: str, expected, desired) -> bytes:
        enc = (lambda v: v.encode() if isinstance(v, str) else bytes(v))
        return bytes(self._kv("compare_set", key, enc(desired), expected=enc(expected).hex())[1])

    def delete_key(self, key: str) -> bool:
        return bool(self._kv("delete", key)[0]["deleted"])

    def num_keys(self) -> int:
        return int(self._kv("num_keys", "")[0]["value"])
