"""ringflow.malt across hosts: 2 network-namespace hosts x 2 ranks, the
remote peers reached by one TCP stream each.  Replicas converge towards the
global least-squares optimum (the reference of test_malt_optimizer) with
updates merged from the other host, and a SIGKILLed rank on one host
stalls nobody on either host and is dropped by all."""

import os
import signal

import pytest
import torch

import netns

why_not = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(bool(why_not), reason=why_not)]
HERE = os.path.dirname(os.path.abspath(__file__))
PLACEMENT = [0, 0, 1, 1]


def train(rank, size, steps, die_at, depart_after):
    from test_malt_optimizer import _train

    kw = {"depart_after": depart_after}
    if die_at and die_at[0] == rank:
        # The rank trains in a child that SIGKILLs itself; this parent
        # reports how the child ended, as the world runner needs a result.
        pid = os.fork()
        if pid == 0:
            try:
                _train(rank, size, steps, 0.05, tuple(die_at), kw, None, None, 0.006)
            finally:
                os._exit(1)  # reached only if the kill did not happen
        _, status = os.waitpid(pid, 0)
        return {"killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL}
    w, gap, stats = _train(rank, size, steps, 0.05, None, kw, None, None, 0.006)
    return {"w": w, "gap": gap, "stats": stats}


def _run(steps, die_at=None, depart_after=1.0):
    with netns.Hosts(2) as hosts:
        return hosts.run(PLACEMENT, "test_malt_hosts:train", args=(steps, die_at, depart_after),
                         timeout=240, path=[HERE])


def test_replicas_converge_with_updates_from_the_other_host():
    from test_malt_optimizer import _optimum

    out = _run(500)
    best = _optimum(range(4))
    for rank, r in enumerate(out):
        w, stats = torch.tensor(r["w"]), r["stats"]
        own = _optimum([rank])
        assert torch.dist(w, best) < 0.25 * torch.dist(own, best), (rank, w, best, stats)
        # In-neighbours on the other host (N=4, k=2: rank r hears from r-1 and r-2).
        remote = [s for s in ((rank - 1) % 4, (rank - 2) % 4) if PLACEMENT[s] != PLACEMENT[rank]]
        assert remote and all(stats["merged_from"][str(s)] > 0 for s in remote), (rank, stats)


def test_a_sigkilled_rank_on_the_other_host_stalls_nobody():
    out = _run(400, die_at=(3, 60), depart_after=0.5)
    assert out[3] == {"killed": True}
    for rank in (0, 1, 2):
        gap, stats = out[rank]["gap"], out[rank]["stats"]
        assert gap < 2.0, f"rank {rank} stalled {gap:.2f} s"
        assert 3 in stats["departed"], (rank, stats)
        assert stats["steps"] == 400
