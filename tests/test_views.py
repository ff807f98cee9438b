"""Every collective on views (steps, offsets, transposes, views of views):
right result, nothing written outside the view, overlapping outputs refused."""

import pytest

import view_cases as cases
from worlds import init_torch, run_world


def all_views(rank, size):
    init_torch(rank, size)
    ck = cases.Checks(rank, size)
    for name, make_view in cases.view_kinds().items():
        cases.check_view(ck, name, make_view)
    cases.check_overlap_refused(ck)
    return ck.count, ck.failures


@pytest.mark.parametrize("size", [2, 3])
def test_collectives_on_views(size):
    results = run_world(size, all_views, timeout=180)
    assert min(c for c, _ in results) > 50
    failures = [f"rank {r}: {f}" for r, (_, fs) in enumerate(results) for f in fs]
    assert not failures, "\n".join(failures[:40])
