"""Hosts made of network namespaces, for multi-host tests on one machine.

Each host is a namespace with one veth into a bridge in the root namespace,
on a private /24 of 10.253.0.0/16 that no other set of hosts on this
machine is using (several test runs may make hosts at once); everything is
created with unique names and removed on exit, even after a failure.  Ranks run as
`ip netns exec HOST python tests/netns.py TARGET ARGS` subprocesses.  Needs root
and iproute2 (CI here runs as root); `available()` says why not otherwise.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

NETWORK = "10.253"  # 10.253.X.0/24: test hosts only, never routed anywhere
LOCK = "/tmp/ringflow-netns.lock"  # held while a set of hosts picks its /24


def _ip(*args, ns=None, check=True):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def available() -> str:
    """'' when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2 (`ip`)"
    probe = f"rfprobe{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


class Hosts:
    """`n` namespace hosts at 10.253.X.10, .11, ...; the bridge is `gateway`,
    10.253.X.1 (an address of the root namespace, reachable from every host),
    X the first /24 no other bridge here uses.  `mtu` up to 65535 gives
    jumbo links (whole 64 KiB datagrams, no IP fragments)."""

    def __init__(self, n: int, mtu: int = 1500):
        self.mtu = mtu
        tag = uuid.uuid4().hex[:5]
        self.bridge = f"rfbr{tag}"
        self.names = [f"rf{tag}h{i}" for i in range(n)]
        self.veths = [f"rf{tag}v{i}" for i in range(n)]
        self.gateway, self.addrs = "", []

    def _claim_subnet(self) -> None:
        """Adds the bridge on the first free /24, under a lock so that two
        runs starting at once do not take the same one."""
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _ip("ip", "-4", "-o", "addr", "show").stdout
            for x in range(71, 255):
                if f" {NETWORK}.{x}." not in used:
                    break
            else:
                raise RuntimeError(f"no free /24 left in {NETWORK}.0.0/16 for namespace hosts")
            self.gateway = f"{NETWORK}.{x}.1"
            self.addrs = [f"{NETWORK}.{x}.{10 + i}" for i in range(len(self.names))]
            _ip("ip", "link", "add", self.bridge, "type", "bridge")
            _ip("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)

    def __enter__(self):
        try:
            self._claim_subnet()
            _ip("ip", "link", "set", self.bridge, "mtu", str(self.mtu), "up")
            for ns, veth, addr in zip(self.names, self.veths, self.addrs):
                _ip("ip", "netns", "add", ns)
                _ip("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("ip", "link", "set", veth, "master", self.bridge)
                _ip("ip", "link", "set", veth, "mtu", str(self.mtu), "up")
                _ip("ip", "addr", "add", f"{addr}/24", "dev", "eth0", ns=ns)
                _ip("ip", "link", "set", "eth0", "mtu", str(self.mtu), "up", ns=ns)
                _ip("ip", "link", "set", "lo", "up", ns=ns)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for veth in self.veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def shape(self, rate: str = "1gbit", burst: str = "256kb", latency: str = "50ms"):
        """Limits every host's link, both directions, with a token bucket."""
        for ns, veth in zip(self.names, self.veths):
            _ip("tc", "qdisc", "replace", "dev", veth, "root", "tbf", "rate", rate, "burst", burst,
                "latency", latency)
            _ip("tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst", burst,
                "latency", latency, ns=ns)

    def run(self, placement: list[int], target: str, args=(), env=None, timeout: float = 300,
            path=()):
        """Runs `target` ("module:function", called as fn(rank, size, *args))
        on len(placement) ranks, rank r in host placement[r]; returns each
        rank's JSON result.  Raises naming every rank that failed or hung."""
        return run_ranks([["ip", "netns", "exec", self.names[h]] for h in placement],
                         [{"RINGFLOW_HOST_ID": self.names[h], "GLOO_SOCKET_IFNAME": "eth0"}
                          for h in placement],
                         self.addrs[placement[0]], target, args, env, timeout, path)


def run_ranks(prefixes: list[list[str]], rank_envs: list[dict], master_addr: str, target: str,
              args=(), env=None, timeout: float = 300, path=()):
    """Runs `target` on len(prefixes) ranks, rank r's command prefixed by
    prefixes[r] (e.g. `ip netns exec HOST`; [] for this host) with
    rank_envs[r] added; returns each rank's JSON result.  Raises naming
    every rank that failed or hung."""
    size = len(prefixes)
    port = 29000 + os.getpid() % 1000
    procs = []
    for rank, prefix in enumerate(prefixes):
        child_env = {**os.environ, **(env or {}), **rank_envs[rank],
                     "MASTER_ADDR": master_addr, "MASTER_PORT": str(port),
                     "RANK": str(rank), "WORLD_SIZE": str(size),
                     "PYTHONPATH": os.pathsep.join(list(path) + sys.path)}
        cmd = prefix + [sys.executable, os.path.abspath(__file__), target, json.dumps(list(args))]
        procs.append(subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + timeout
    outs, problems = [], []
    for rank, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, err = p.communicate()
            problems.append(f"--- rank {rank} hung (killed at the timeout)\n{err[-3000:]}")
            outs.append(None)
            continue
        lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
        if p.returncode or not lines:
            problems.append(f"--- rank {rank} exited {p.returncode}\n{err[-3000:]}")
            outs.append(None)
        else:
            outs.append(json.loads(lines[-1][len("RESULT "):]))
    if problems:
        raise AssertionError("world failed:\n" + "\n".join(problems))
    return outs


def _worker() -> None:
    """One rank inside a host: runs module:function(rank, size, *args) and
    prints its JSON result on a line 'RESULT ...'."""
    import importlib

    target, args = sys.argv[1], json.loads(sys.argv[2])
    module, name = target.split(":")
    fn = getattr(importlib.import_module(module), name)
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    result = fn(rank, size, *args)
    print("RESULT " + json.dumps(result), flush=True)
    from ringflow.rendezvous import close_all

    close_all()


if __name__ == "__main__":
    _worker()
