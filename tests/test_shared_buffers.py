"""Shared tensors (ringflow.shared_empty): the same-host allreduce maps the
peers' buffers instead of copying through the kernel.

Results against gloo on the same inputs, exactly: every dtype and op at
2 and 4 ranks, views at odd offsets, worlds where only some ranks share.
The counters show the mapped path was taken (a mapping opened per sharing
peer and call) and that mappings of freed buffers are dropped; a killed rank
is still named.  First, the allocation itself, in this process."""

import gc

import numpy as np
import pytest
import torch

import collective_cases as cases
import ringflow
import test_failures as failures
from worlds import init_torch, run_world

N = (1 << 20) + 3  # above the one-step size; odd, so blocks are uneven


def _shared_counts():
    # What ringflow.stats()["shared_buffers"] reports (every_dtype_and_op
    # reads it there), without stats()'s huge-page part, which raises on a
    # malformed RINGFLOW_SHM_HUGEPAGES.
    return ringflow._C.shared_buffer_stats()


def _live():
    return _shared_counts()["live"]


def test_shared_empty_shapes_dtypes_and_lifetime():
    gc.collect()
    before = _live()
    a = ringflow.shared_empty(3, 5, dtype=torch.bfloat16)
    b = ringflow.shared_empty((7,))
    c = ringflow.shared_empty(torch.Size([0, 4]), dtype=torch.int64)
    assert (a.shape, a.dtype) == ((3, 5), torch.bfloat16)
    assert (b.shape, b.dtype) == ((7,), torch.get_default_dtype())
    assert c.shape == (0, 4)
    a.fill_(2.5)
    assert a.sum().item() == 37.5
    assert _live() == before + 2  # the empty one has no data to share
    view = b[2:]
    del b
    gc.collect()
    assert _live() == before + 2, "a view keeps its buffer"
    view.fill_(1)
    del view, a, c
    gc.collect()
    assert _live() == before


def test_shared_buffer_works_with_numpy():
    buf = ringflow._C.SharedBuffer(4096)
    arr = np.frombuffer(buf, dtype=np.float32)
    arr[:] = np.arange(1024)
    assert arr.sum() == sum(range(1024))
    assert buf.nbytes == 4096 and arr.ctypes.data == buf.address


def forked_child_frees_its_copy(rank, size):
    import os

    t = ringflow.shared_empty(1 << 20)
    t.fill_(7)
    pid = os.fork()
    if pid == 0:  # the child frees the object it inherited
        code = 1
        try:
            del t
            gc.collect()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    # Were the file truncated, this read would kill the process (SIGBUS).
    return os.waitstatus_to_exitcode(status), t.sum().item()


def test_a_forked_child_freeing_its_copy_leaves_the_parents_buffer():
    [(child_exit, total)] = run_world(1, forked_child_frees_its_copy, timeout=60)
    assert child_exit == 0 and total == 7 * (1 << 20)


@pytest.mark.parametrize("size", [(-1,), (2, -3)])
def test_negative_size_is_refused(size):
    with pytest.raises(ValueError, match="negative dimension"):
        ringflow.shared_empty(*size)


def test_non_integer_size_is_refused():
    with pytest.raises(TypeError, match="must be ints"):
        ringflow.shared_empty(2.5)


def shared_empty_error(rank, size):
    before = _live()
    try:
        ringflow.shared_empty(10)
    except ringflow.InvalidArgument as e:
        return str(e), _live() - before
    return None, _live() - before


def test_a_malformed_huge_page_setting_is_named_and_nothing_is_held():
    [(error, held)] = run_world(1, shared_empty_error, env={"RINGFLOW_SHM_HUGEPAGES": "maybe"})
    assert error and "RINGFLOW_SHM_HUGEPAGES='maybe'" in error and held == 0


def test_zero_byte_buffer_is_refused():
    with pytest.raises(ringflow.InvalidArgument, match="at least one byte"):
        ringflow._C.SharedBuffer(0)


def test_peer_mapping_shows_the_same_memory_and_is_checked():
    """This process maps its own buffer through /proc as a peer would."""
    import ctypes
    import os

    from ringflow import _testing as C  # the test-only module, sharing _C's state

    pid = os.getpid()
    t = ringflow.shared_empty(1 << 20, dtype=torch.int32)
    t.copy_(torch.arange(1 << 20, dtype=torch.int32))
    nbytes = t.numel() * 4
    id_, fd, offset = C.shared_place(t.data_ptr() + 64, 128)
    assert id_ != 0 and offset == 64
    assert C.shared_place(torch.empty(10).data_ptr(), 40)[0] == 0, "a plain tensor"
    assert C.shared_place(t.data_ptr() + nbytes - 4, 8)[0] == 0, "a range past the end"
    before = _shared_counts()

    addr = C.map_peer_shared(pid, id_, fd, 64, 128)
    assert addr not in (0, t.data_ptr() + 64)
    seen = (ctypes.c_int32 * 32).from_address(addr)
    assert list(seen) == list(range(16, 48))
    seen[0] = -5
    assert t[16].item() == -5, "one memory, two mappings"
    assert C.map_peer_shared(pid, id_, fd, 64, 128) == addr, "mapped once, then cached"
    assert C.map_peer_shared(pid, id_, fd, 0, nbytes + 4096) == 0, "more than the buffer holds"
    after = _shared_counts()
    assert after["peer_maps_opened"] == before["peer_maps_opened"] + 1
    assert after["peer_map_failures"] == before["peer_map_failures"]

    assert C.map_peer_shared(pid, id_ ^ (1 << 63), fd, 0, 4) == 0, "the tag names another id"
    assert _shared_counts()["peer_map_failures"] == before["peer_map_failures"] + 1

    del seen, t
    gc.collect()
    u = ringflow.shared_empty(4)
    uid, ufd, _ = C.shared_place(u.data_ptr(), 4)
    assert C.map_peer_shared(pid, uid, ufd, 0, 4) != 0
    after = _shared_counts()
    assert after["peer_maps_dropped"] == before["peer_maps_dropped"] + 1, "the freed one went"
    assert after["peer_maps"] == before["peer_maps"] + 1


def _shared_copy(x):
    t = ringflow.shared_empty(x.shape, dtype=x.dtype)
    t.copy_(x)
    return t


def every_dtype_and_op(rank, size, sharers):
    dist = init_torch(rank, size)
    ck = cases.Checker(dist.new_group(backend="gloo"))
    calls = 0
    for dtype in cases.DTYPES:
        for op in cases.ops_for(dtype):
            x = cases.make_input(rank, N, dtype)
            ours = _shared_copy(x) if rank in sharers else x.clone()
            ref = x.clone()
            dist.all_reduce(ours, op=op)
            dist.all_reduce(ref, op=op, group=ck.gloo)
            ck.expect(f"all_reduce {dtype} {op}", ours, ref)
            calls += 1
    stats = ringflow.stats()["shared_buffers"]
    dist.destroy_process_group()
    return ck.count, ck.failures, calls, stats


@pytest.mark.parametrize("size,sharers", [(2, (0, 1)), (4, (0, 1, 2, 3)), (2, (1,)), (4, (0, 2))],
                         ids=["2-all", "4-all", "2-one", "4-two"])
def test_every_dtype_and_op_against_gloo(size, sharers):
    results = run_world(size, every_dtype_and_op, sharers, timeout=300,
                        env={"RINGFLOW_ALGO": "shm"})
    bad = [f"rank {r}: {f}" for r, (_, fs, _, _) in enumerate(results) for f in fs]
    assert not bad, "\n".join(bad[:40])
    for rank, (count, _, calls, stats) in enumerate(results):
        assert count == calls > 0
        peers = len([q for q in sharers if q != rank])
        # Every call's shared tensor is a new buffer: one mapping per sharing peer.
        assert stats["peer_maps_opened"] == calls * peers, (rank, stats)
        assert stats["peer_map_failures"] == 0, (rank, stats)
        # Each owner freed its last call's buffer before the next call.
        assert stats["peer_maps"] <= peers, (rank, stats)
        assert stats["peer_maps_dropped"] >= (calls - 1) * peers, (rank, stats)


def views_at_odd_offsets(rank, size):
    dist = init_torch(rank, size)
    ck = cases.Checker(dist.new_group(backend="gloo"))
    whole = ringflow.shared_empty(2 * N + 11, dtype=torch.bfloat16)
    for start, n in [(0, N), (5, N), (N + 11, N)]:  # the same buffer, several places
        x = cases.make_input(rank, n, torch.bfloat16, salt=start)
        ours = whole[start:start + n]
        ours.copy_(x)
        ref = x.clone()
        dist.all_reduce(ours)
        dist.all_reduce(ref, group=ck.gloo)
        ck.expect(f"all_reduce of whole[{start}:{start + n}]", ours, ref)
    opened = ringflow.stats()["shared_buffers"]["peer_maps_opened"]
    dist.destroy_process_group()
    return ck.failures, opened


def test_views_at_odd_offsets_of_one_buffer():
    for rank, (failures_, opened) in enumerate(run_world(3, views_at_odd_offsets, timeout=120,
                                                         env={"RINGFLOW_ALGO": "shm"})):
        assert not failures_, failures_
        assert opened == 2, (rank, opened)  # each peer's buffer mapped once, then reused


def test_killed_rank_named_with_shared_buffers():
    failures.assert_rank_2_named(run_world(4, failures.killed_mid_allreduce, True, timeout=120,
                                           may_die=(2,), env={"RINGFLOW_ALGO": "shm"}))
