"""Which address each rank advertises, and the prompt error for a loopback
address that a rank on another host cannot reach."""

import os
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

import netns
from ringflow import addresses


def test_interface_names_prefixes_and_exclusions():
    assert addresses.interface_address("lo") == "127.0.0.1"
    assert addresses.interface_address("=lo") == "127.0.0.1"
    assert addresses.interface_address("nosuch,lo") == "127.0.0.1"
    with pytest.raises(ValueError, match="RINGFLOW_SOCKET_IFNAME='nosuch0'.*this host has: .*lo"):
        addresses.interface_address("nosuch0")
    with pytest.raises(ValueError, match="matches no interface"):
        addresses.interface_address("^")  # excludes every interface


def test_the_route_towards_the_store_host_is_used_without_master_addr(monkeypatch, tmp_path):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RINGFLOW_ADDR", raising=False)
    monkeypatch.delenv("RINGFLOW_SOCKET_IFNAME", raising=False)
    tcp = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=5))
    store = dist.PrefixStore("a/", dist.PrefixStore("b/", tcp))
    assert addresses.store_host(store) == "127.0.0.1"
    assert addresses.advertised_address(store) == "127.0.0.1"
    assert addresses.store_host(dist.FileStore(str(tmp_path / "store"), 1)) is None


def test_explicit_settings_win(monkeypatch):
    monkeypatch.setenv("RINGFLOW_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.2")
    assert addresses.advertised_address() == "127.0.0.1"
    monkeypatch.setenv("RINGFLOW_ADDR", "192.0.2.7")
    assert addresses.advertised_address() == "192.0.2.7"


def test_loopback_across_network_namespaces_is_found_before_connecting():
    same = ["boot/1", "boot/1"]
    assert addresses.unreachable(["127.0.0.1:5", "127.0.0.1:6"], same) == ""
    assert addresses.unreachable(["10.0.0.1:5", "10.0.0.2:6"], ["boot/1", "boot/2"]) == ""
    why = addresses.unreachable(["10.0.0.1:5", "[::1]:6"], ["boot/1", "boot/2"])
    assert "rank 1 advertises the loopback address [::1]:6" in why
    assert "MASTER_ADDR" in why and "RINGFLOW_SOCKET_IFNAME" in why and "RINGFLOW_ADDR" in why


why_not = netns.available()


def tcp_init_without_master_addr(rank, size, loopback_rank):
    """init_method tcp:// with MASTER_ADDR removed, as a user might launch."""
    import torch

    import ringflow

    url = f"tcp://{os.environ.pop('MASTER_ADDR')}:{os.environ.pop('MASTER_PORT')}"
    if rank == loopback_rank:
        os.environ["RINGFLOW_ADDR"] = "127.0.0.1"
    start = time.monotonic()
    try:
        dist.init_process_group("ringflow", init_method=url, rank=rank, world_size=size,
                                timeout=timedelta(seconds=60))
    except ringflow.PeerError as e:
        return ["PeerError", str(e), time.monotonic() - start]
    t = torch.ones(4) * (rank + 1)
    dist.all_reduce(t)
    dist.destroy_process_group()
    return ["ok", t.tolist(), time.monotonic() - start]


@pytest.mark.netns
@pytest.mark.skipif(bool(why_not), reason=why_not)
def test_hosts_find_each_other_from_the_init_method_alone():
    here = [os.path.dirname(os.path.abspath(__file__))]
    with netns.Hosts(2) as hosts:
        results = hosts.run([0, 1], "test_addresses:tcp_init_without_master_addr", args=[-1],
                            timeout=120, path=here)
        assert [r[:2] for r in results] == [["ok", [3.0] * 4]] * 2
        # A rank that advertises loopback: every rank fails at once (not at
        # the 60 s timeout), naming the rank and the settings that fix it.
        results = hosts.run([0, 1], "test_addresses:tcp_init_without_master_addr", args=[1],
                            timeout=120, path=here)
    for kind, msg, seconds in results:
        assert kind == "PeerError" and "rank 1 advertises the loopback address 127.0.0.1" in msg
        assert "RINGFLOW_SOCKET_IFNAME" in msg and seconds < 30
