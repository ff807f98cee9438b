"""The process-world harness (ringflow.benchmark.harness) that the tests,
`ringflow bench` and the bench scripts share: a failing rank brings the
world down at once, named; a hang is cut at the deadline with each rank's
last reported step; ranks allowed to die may."""

import os
import time

import pytest
from worlds import run_world

from ringflow.benchmark.harness import WorldError, report_progress


def _second_rank_raises(rank, size):
    if rank == 1:
        raise ValueError("rank one's own mistake")
    time.sleep(100)  # far past the failure: only the harness ends it early
    return rank


def test_a_raising_rank_kills_the_others_at_once():
    with pytest.raises(WorldError) as e:
        run_world(3, _second_rank_raises, timeout=200)
    text = str(e.value)
    assert text.startswith("rank 1 raised an exception (world of 3)"), text
    assert "ValueError: rank one's own mistake" in text
    # Killed when rank 1 failed, not left to the 200 s deadline.
    assert "rank 0 was still running, killed" in text and "timed out" not in text


def _rank_two_hangs(rank, size):
    report_progress(1, 2, f"rank {rank} warm-up")
    if rank == 2:
        time.sleep(60)
    report_progress(2, 2, f"rank {rank} done")
    return rank


def test_a_hang_is_cut_at_the_deadline_naming_the_rank_and_its_last_step():
    with pytest.raises(WorldError) as e:
        run_world(3, _rank_two_hangs, timeout=4)
    text = str(e.value)
    assert "timed out after 4 s; rank 2 had not finished (world of 3)" in text, text
    assert "rank 2 was still running, killed (last step: [1/2] rank 2 warm-up)" in text
    assert e.value.results == {0: 0, 1: 1}


def _rank_one_exits(rank, size):
    if rank == 1:
        os._exit(3)
    return rank * 10


def test_ranks_allowed_to_die_give_none_and_others_are_a_failure():
    assert run_world(3, _rank_one_exits, may_die=(1,)) == [0, None, 20]
    with pytest.raises(WorldError, match=r"rank 1 died, exit code 3 \(world of 3\)"):
        run_world(3, _rank_one_exits)
