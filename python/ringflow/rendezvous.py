"""Building a communicator from a key-value store (torch's Store, or any
object with ``set(key, value)`` and blocking ``get(key)``)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import weakref

from . import _C
from .addresses import advertised_address, boot_id, network_identity, unreachable
from .config import log_config_once

log = logging.getLogger("ringflow")

_live_comms: "weakref.WeakSet[Communicator]" = weakref.WeakSet()


def host_identity() -> str:
    """Which machine this process runs on, as its peers should compare it.

    RINGFLOW_HOST_ID wins (tests use it to pretend ranks live on different
    hosts); otherwise the host name plus the kernel's boot id, so two
    containers that share a host name but not a kernel are told apart.
    """
    explicit = os.environ.get("RINGFLOW_HOST_ID")
    if explicit:
        return explicit
    return f"{socket.gethostname()}/{boot_id() or 'no-boot-id'}"


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Communicator:
    """A TCP mesh among `size` processes, shared memory among those on one
    host (unless RINGFLOW_SHM=0), and the communicator over them."""

    def __init__(self, store, rank: int, size: int, timeout_s: float, prefix: str = "ringflow"):
        log_config_once()
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is outside a group of size {size}")
        # Before any store traffic: a bad setting fails here, alike on every
        # rank that has it, instead of at the first call that reads it.
        _C.check_settings()
        use_shm = _C.env_bool("RINGFLOW_SHM", True)
        shm_options = {"queue_bytes": _C.env_size("RINGFLOW_SHM_QUEUE_BYTES", 1 << 20),
                       "slot_bytes": _C.env_size("RINGFLOW_SHM_SLOT_BYTES", 1 << 20),
                       "cross_memory": _C.env_bool("RINGFLOW_SHM_CMA", True)}
        self.rank, self.size, self.timeout = rank, size, float(timeout_s)
        bind = os.environ.get("RINGFLOW_BIND", "0.0.0.0")
        self.transport = _C.TcpTransport(rank, size, bind)
        if rank == 0:
            store.set(f"{prefix}/token", str(secrets.randbits(63)))
        token = int(_to_str(store.get(f"{prefix}/token")))
        store.set(f"{prefix}/addr/{rank}", _format(advertised_address(store), self.transport.port))
        store.set(f"{prefix}/host/{rank}", host_identity())
        store.set(f"{prefix}/net/{rank}", network_identity())
        addrs = [_to_str(store.get(f"{prefix}/addr/{r}")) for r in range(size)]
        hosts = [_to_str(store.get(f"{prefix}/host/{r}")) for r in range(size)]
        why = unreachable(addrs, [_to_str(store.get(f"{prefix}/net/{r}")) for r in range(size)])
        if why:
            self.transport.close()
            # Rank 0 may host the store: it leaves only once every rank has
            # read what it needs for the same verdict.
            store.set(f"{prefix}/verdict/{rank}", "1")
            if rank == 0:
                for r in range(size):
                    store.get(f"{prefix}/verdict/{r}")
            raise _C.PeerError(why)
        self.hosts = hosts  # host identity of every rank (the tuner keys its cache on them)
        self.local_ranks = [r for r in range(size) if hosts[r] == hosts[rank]]
        self.tcp, self.shm = self.transport, None
        # Every use of the store comes before the mesh is connected: a rank
        # gets through connect() only once every rank has finished with the
        # store, so the rank hosting it may then drop it safely.
        if len(self.local_ranks) > 1 and use_shm:
            self.shm = _attach_shm(store, prefix, self.tcp, rank, self.local_ranks, token,
                                   self.timeout, shm_options)
        self.tcp.connect(addrs, token, self.timeout)
        if self.shm is not None:
            self.transport = _C.RoutedTransport(self.tcp, self.shm)
        log.info("rank %d: transport %s, local ranks %s", rank, self.transport.name,
                 self.local_ranks)
        self.comm = _C.Comm(self.transport, 1, list(range(size)), self.timeout)
        self._closed = False
        _live_comms.add(self)
        labels = os.environ.get("RINGFLOW_GROUPS")
        if labels:
            self.set_groups(labels.split(","), strict=False)
        elif _hierarchy_pays(hosts) or len(set(hosts)) == size > 1:
            # By default one lower-order group per host.  With one rank a
            # host the layout only names the ring that crosses hosts, which
            # RINGFLOW_COMPRESS applies to; the flat ring still runs.
            self.set_groups(hosts)

    def set_groups(self, labels, strict: bool = True) -> bool:
        """Hierarchical layout: labels[r] names rank r's lower-order group.

        Every rank must pass the same labels.  Groups may differ in size (the
        smallest sets how many shards cross between groups); with
        strict=False an unusable layout is logged and the flat ring kept.
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


def _attach_shm(store, prefix, tcp, rank, local_ranks, token, timeout, options):
    """One segment per local rank; every local rank maps all of them; each
    name is unlinked once everyone has mapped it, so /dev/shm keeps nothing
    even if a process is killed later."""
    shm = _C.ShmTransport(tcp, local_ranks, token, **options)
    try:
        store.set(f"{prefix}/shm/{rank}", shm.segment_name)
        names = [_to_str(store.get(f"{prefix}/shm/{r}")) for r in local_ranks]
        shm.attach(names, timeout)
        store.set(f"{prefix}/shm_mapped/{rank}", "1")
        for r in local_ranks:
            store.get(f"{prefix}/shm_mapped/{r}")
    finally:
        shm.unlink()
    return shm


def _hierarchy_pays(hosts: list[str]) -> bool:
    """Several hosts, and at least one of them with several ranks."""
    return 1 < len(set(hosts)) < len(hosts)


def _to_str(v) -> str:
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)


def close_all() -> None:
    """Closes every live communicator: peers then see a clean exit, not a crash."""
    for c in list(_live_comms):
        try:
            c.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
