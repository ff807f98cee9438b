"""RINGFLOW_SHM_HUGEPAGES (on by default): a large buffer the shm allreduce
is handed again and again is collapsed into transparent huge pages once, on
its third call, with every result unchanged; with 0 nothing is touched.
(A malformed value fails at init: test_env.)"""

import os

import pytest

from ringflow.benchmark.memory import thp_mode
from worlds import init_torch, live_communicator, run_world

COUNT = 3 << 20  # 12 MiB of float32: five or six whole huge pages, whatever the alignment
HUGE_PAGE = 2 << 20


def whole_huge_pages_bytes(address: int, nbytes: int) -> int:
    """Bytes of the whole 2 MiB pages inside [address, address + nbytes)."""
    lo = -(-address // HUGE_PAGE) * HUGE_PAGE
    hi = (address + nbytes) // HUGE_PAGE * HUGE_PAGE
    return max(0, hi - lo)


def _kernel_has_madv_collapse() -> bool:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 1)


def kept_buffer(rank, size):
    import torch

    import ringflow
    from ringflow import _C
    from ringflow.benchmark.memory import huge_page_fraction

    dist = init_torch(rank, size)
    algo = _C.allreduce_algorithm(live_communicator().comm, COUNT * 4)
    base = torch.arange(COUNT, dtype=torch.float32) % 5
    want = base * size + sum(range(size))
    x = torch.empty(COUNT)  # kept across calls, as DDP keeps its buckets
    fractions, correct = [], []
    for _ in range(4):
        x.copy_(base + rank)
        dist.all_reduce(x)
        correct.append(torch.equal(x, want))
        fractions.append(huge_page_fraction(x))
    stats = ringflow.stats()["huge_pages"]
    whole = whole_huge_pages_bytes(x.data_ptr(), COUNT * 4)
    dist.destroy_process_group()
    return algo, correct, fractions, stats, whole


@pytest.mark.skipif(thp_mode() not in ("always", "madvise") or not _kernel_has_madv_collapse(),
                    reason=f"needs transparent huge pages (mode here: {thp_mode()}) and "
                           "MADV_COLLAPSE (Linux 6.1)")
@pytest.mark.parametrize("setting", [None, "1", "0"], ids=["default", "on", "off"])
def test_a_kept_buffer_is_collapsed_into_huge_pages_once(setting, monkeypatch):
    monkeypatch.delenv("RINGFLOW_SHM_HUGEPAGES", raising=False)
    env = {} if setting is None else {"RINGFLOW_SHM_HUGEPAGES": setting}
    results = run_world(2, kept_buffer, timeout=120, env=env)
    for rank, (algo, correct, fractions, stats, whole) in enumerate(results):
        assert algo == "shm", f"rank {rank}: ran {algo}"
        assert all(correct), f"rank {rank}: wrong results {correct}"
        if setting != "0":
            # Exactly the buffer's whole huge pages, once.
            assert whole >= 5 * HUGE_PAGE, whole
            assert stats == {"enabled": True, "collapsed": 1, "collapsed_bytes": whole,
                             "failed": 0}, (stats, whole)
            assert fractions[2] > 0 and fractions[3] > 0, f"rank {rank}: {fractions}"
        else:
            assert stats == {"enabled": False, "collapsed": 0, "collapsed_bytes": 0, "failed": 0}
            if thp_mode() == "madvise":
                assert fractions == [0.0] * 4, f"rank {rank}: {fractions}"
