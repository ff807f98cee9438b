"""Link measurement: the round plan (every pair once, parallel but never two
pairs on one rank or one host link), filling pairs a time bound left out,
and a real measurement between processes."""

import itertools

import numpy as np
import pytest

from ringflow.benchmark.harness import WorldError
from ringflow.tune.links import _fill_unmeasured, link_of, plan_rounds
from worlds import live_communicator, init_torch, run_world


@pytest.mark.parametrize("hosts", ["aaaaaaaa", "abcabcab", "aabb", "abcde", "aab"])
def test_rounds_cover_every_pair_once_in_parallel(hosts):
    rounds = plan_rounds(hosts)
    pairs = [p for r in rounds for p in r]
    assert sorted(pairs) == list(itertools.combinations(range(len(hosts)), 2))
    for r in rounds:
        ranks = [x for p in r for x in p]
        assert len(ranks) == len(set(ranks))
        links = [link_of(hosts, a, b) for a, b in r]
        assert len(links) == len(set(links))
    # Parallel: as few rounds as the busiest rank or host link forces.
    per_link = {}
    for a, b in pairs:
        per_link[link_of(hosts, a, b)] = per_link.get(link_of(hosts, a, b), 0) + 1
    lower = max(max(per_link.values()), len(hosts) - 1)
    assert len(rounds) <= lower + 2
    if hosts == "aaaaaaaa":
        assert len(rounds) == 7


def test_unmeasured_pairs_take_their_links_figures():
    hosts = "aabb"
    bw = np.zeros((4, 4))
    lat = np.zeros((4, 4))
    bw[0, 2], bw[2, 0], lat[0, 2], lat[2, 0] = 100.0, 90.0, 1e-3, 1e-3  # host link a-b
    bw[0, 1], bw[1, 0], lat[0, 1], lat[1, 0] = 5000.0, 5000.0, 1e-5, 1e-5  # inside host a
    _fill_unmeasured(hosts, lat, bw)
    assert bw[1, 3] == 100.0 and bw[3, 1] == 90.0  # same host link, same direction
    assert bw[2, 3] == 5000.0  # inside a host: from a measured pair inside a host
    assert lat[1, 3] == 1e-3 and lat[2, 3] == 1e-5


def measured(rank, size, hosts, bound):
    from ringflow.tune.links import measure

    init_torch(rank, size)
    links, summary = measure(live_communicator().comm, hosts, nbytes=1 << 20, time_bound_s=bound)
    return links.to_json(), summary


def test_measurement_between_real_processes():
    hosts = ["x", "y", "x", "y"]  # labels only: every pair is really on this host
    results = run_world(4, measured, hosts, 60.0, timeout=180)
    first = results[0][0]
    for links, summary in results:
        assert links == first  # every rank holds the same matrix
        assert summary["complete"] and summary["rounds_run"] == summary["rounds"]
    lat, bw = np.array(first["latency_s"]), np.array(first["bandwidth"])
    off = ~np.eye(4, dtype=bool)
    assert (lat[off] > 0).all() and (lat[off] < 0.5).all()
    assert (lat == lat.T).all()
    # 1 MiB between processes on one host: well above 10 MB/s, below 1 TB/s.
    assert (bw[off] > 1e7).all() and (bw[off] < 1e12).all()


def test_time_bound_stops_every_rank_at_the_same_round():
    # A bound of zero allows no round: every rank raises the same error.
    with pytest.raises(WorldError, match="allowed no round"):
        run_world(2, measured, ["x", "x"], 0.0, timeout=120)


def shared(rank, size, objs):
    from ringflow.tune.tuner import share

    init_torch(rank, size)
    comm = live_communicator().comm
    return [share(comm, o if rank == 0 else "not this") for o in objs]


def test_rank_zeros_decision_reaches_every_rank():
    big = {"order": list(range(3000)), "note": "é" * 10}  # past one broadcast block
    objs = [None, {"pattern": None}, {"pattern": {"order": [2, 0, 1]}}, big]
    for got in run_world(3, shared, objs, timeout=120):
        assert got == objs
