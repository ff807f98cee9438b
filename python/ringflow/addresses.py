"""Which address a rank advertises to its peers, and the check that no rank
advertises one its peers cannot reach.

Order of choice (as NCCL and gloo users expect):
  RINGFLOW_ADDR            this exact address
  RINGFLOW_SOCKET_IFNAME   the address of the first matching interface
  MASTER_ADDR, else the rendezvous store's host
                           the local address of the route towards it
  the default route's interface, then the host name's address
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct

_SIOCGIFADDR = 0x8915
_FIX = ("set MASTER_ADDR to an address of the rendezvous host that every host can reach, "
        "RINGFLOW_SOCKET_IFNAME to the network interface to use (e.g. eth0), "
        "or RINGFLOW_ADDR to this rank's reachable address")


def advertised_address(store=None) -> str:
    explicit = os.environ.get("RINGFLOW_ADDR")
    if explicit:
        return explicit
    ifname = os.environ.get("RINGFLOW_SOCKET_IFNAME")
    if ifname:
        return interface_address(ifname)
    towards = os.environ.get("MASTER_ADDR") or store_host(store)
    if towards:
        local = route_source(towards)
        if local:
            return local
    default_if = default_route_interface()
    if default_if:
        try:
            return _ipv4_of(default_if)
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def store_host(store) -> str | None:
    """The host of the TCPStore behind torch's (prefixed) store, if any."""
    seen = 0
    while store is not None and hasattr(store, "underlying_store") and seen < 16:
        store = store.underlying_store
        seen += 1
    host = getattr(store, "host", None)
    return host if isinstance(host, str) and host else None


def route_source(host: str) -> str | None:
    """The local address the kernel would use to reach `host` (a UDP connect
    sends nothing; it only picks the route)."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, 1, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(sockaddr)
            return s.getsockname()[0]
    except OSError:
        return None


def interface_address(spec: str) -> str:
    """The IPv4 address of the first interface matching `spec`: a comma list
    of name prefixes, `=name` for an exact name, `^prefix` to exclude."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    exclude = [p[1:] for p in parts if p.startswith("^")]
    include = [p for p in parts if not p.startswith("^")]
    names = [name for _, name in socket.if_nameindex()]

    def matches(name: str, pattern: str) -> bool:
        return name == pattern[1:] if pattern.startswith("=") else name.startswith(pattern)

    tried = []
    for name in names:
        if any(matches(name, p) for p in exclude):
            continue
        if include and not any(matches(name, p) for p in include):
            continue
        tried.append(name)
        try:
            return _ipv4_of(name)
        except OSError:
            continue
    raise ValueError(f"RINGFLOW_SOCKET_IFNAME={spec!r} matches no interface with an IPv4 address "
                     f"(matched: {tried or 'none'}; this host has: {', '.join(names)})")


def default_route_interface() -> str | None:
    try:
        with open("/proc/net/route") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000":
                    return fields[0]
    except (OSError, StopIteration):
        pass
    return None


def _ipv4_of(ifname: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))
    return socket.inet_ntoa(packed[20:24])


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def boot_id() -> str | None:
    """This kernel's boot id, or None where it cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def network_identity() -> str:
    """Which loopback this process sees: its kernel and network namespace."""
    boot = boot_id()
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = None
    return f"{boot}/{netns}" if boot is not None and netns is not None else socket.gethostname()


def is_loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def unreachable(addrs: list[str], networks: list[str]) -> str:
    """Why some rank cannot reach another, or "": a rank that advertises a
    loopback address to a rank in another network namespace would otherwise
    be found out only at the connect timeout.  Every rank sees the same lists,
    so every rank reaches the same verdict."""
    for r, addr in enumerate(addrs):
        if not is_loopback(addr):
            continue
        others = [q for q in range(len(addrs)) if networks[q] != networks[r]]
        if others:
            return (f"rank {r} advertises the loopback address {addr}, which rank {others[0]} on "
                    f"another host cannot reach: {_FIX}")
    return ""
