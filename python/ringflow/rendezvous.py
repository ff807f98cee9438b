"""Building a communicator from a key-value store (torch's Store, or any
object with ``set(key, value)`` and blocking ``get(key)``)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import weakref

from . import _C
from .config import log_config_once

log = logging.getLogger("ringflow")

_live_comms: "weakref.WeakSet[Communicator]" = weakref.WeakSet()


def advertised_address() -> str:
    """The address peers should use to reach this process.

    RINGFLOW_ADDR wins; otherwise the local address of the route towards
    MASTER_ADDR (the rendezvous host), which picks the right interface on a
    multi-homed host; otherwise the host name's address.
    """
    explicit = os.environ.get("RINGFLOW_ADDR")
    if explicit:
        return explicit
    master = os.environ.get("MASTER_ADDR")
    if master:
        try:
            infos = socket.getaddrinfo(master, 1, type=socket.SOCK_DGRAM)
            family, _, _, _, sockaddr = infos[0]
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(sockaddr)  # UDP connect sends nothing; it only picks a route
                return s.getsockname()[0]
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Communicator:
    """A TCP mesh among `size` processes and the communicator over it."""

    def __init__(self, store, rank: int, size: int, timeout_s: float, prefix: str = "ringflow"):
        log_config_once()
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is outside a group of size {size}")
        self.rank, self.size, self.timeout = rank, size, float(timeout_s)
        bind = os.environ.get("RINGFLOW_BIND", "0.0.0.0")
        self.transport = _C.TcpTransport(rank, size, bind)
        if rank == 0:
            store.set(f"{prefix}/token", str(secrets.randbits(63)))
        token = int(_to_str(store.get(f"{prefix}/token")))
        store.set(f"{prefix}/addr/{rank}", _format(advertised_address(), self.transport.port))
        addrs = [_to_str(store.get(f"{prefix}/addr/{r}")) for r in range(size)]
        self.transport.connect(addrs, token, self.timeout)
        self.comm = _C.Comm(self.transport, 1, list(range(size)), self.timeout)
        self._closed = False
        _live_comms.add(self)
        labels = os.environ.get("RINGFLOW_GROUPS")
        if labels:
            self.set_groups(labels.split(","), strict=False)

    def set_groups(self, labels, strict: bool = True) -> bool:
        """Hierarchical layout: labels[r] names rank r's lower-order group.

        Every rank must pass the same labels.  Groups must be of equal size;
        with strict=False an unusable layout is logged and the flat ring kept.
        """
        labels = [str(x).strip() for x in labels]
        if len(labels) != self.size:
            problem = f"{len(labels)} group labels for a group of {self.size} ranks"
        else:
            ids = {name: i for i, name in enumerate(dict.fromkeys(labels))}
            try:
                self.comm.set_groups([ids[x] for x in labels])
                log.info("hierarchical layout: %s", ",".join(labels))
                return True
            except ValueError as e:
                problem = str(e)
        if strict:
            raise ValueError(problem)
        log.warning("RINGFLOW_GROUPS ignored (%s); using the flat ring", problem)
        return False

    def close(self) -> None:
        """Stops the op thread and says goodbye to the peers (idempotent)."""
        if not self._closed:
            self._closed = True
            self.comm.shutdown(close_transport=True)


def _to_str(v) -> str:
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)


def close_all() -> None:
    """Closes every live communicator: peers then see a clean exit, not a crash."""
    for c in list(_live_comms):
        try:
            c.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
