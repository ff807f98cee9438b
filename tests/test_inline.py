"""Blocking small collectives run on the calling thread when the
communicator is idle, and are queued behind earlier calls otherwise: the
order, the results and the watchdog's records are the same either way."""

import time
import weakref

import numpy as np

from test_core import _comm
from worlds import init_torch, run_world


def queued_behind_async(rank, size):
    import ringflow
    from ringflow._dtypes import DTYPE_CODE, REDUCE_OP_CODE

    owner = _comm(rank, size)
    c = owner.comm
    f32, total = DTYPE_CODE["float32"], REDUCE_OP_CODE["sum"]
    ringflow.reset_stats()
    a = np.full(1 << 18, rank + 1, dtype=np.float32)  # 1 MiB: never inline
    b = np.full(16, 10.0 * (rank + 1), dtype=np.float32)
    if rank == 1:
        time.sleep(0.5)  # rank 0's first call waits for us meanwhile
    wa = c.allreduce(a.ctypes.data, a.size, f32, total)
    wb = c.allreduce(b.ctypes.data, b.size, f32, total, blocking=True)
    # On rank 0 the async call is still running: the blocking one must queue.
    queued = not wb.is_completed()
    wb.wait()
    wa.wait()
    # Idle now: a blocking call returns completed.
    d = np.full(16, 1.0, dtype=np.float32)
    wd = c.allreduce(d.ctypes.data, d.size, f32, total, blocking=True)
    ran_inline = wd.is_completed()
    wd.wait()
    stats = ringflow.stats()
    owner.close()
    return queued, ran_inline, float(a[0]), float(b[0]), float(d[0]), stats["ops"]["allreduce"]["count"]


def test_blocking_call_queues_behind_a_running_one():
    results = run_world(2, queued_behind_async, timeout=60)
    queued0 = results[0][0]
    assert queued0, "rank 0's blocking call should have waited behind its running async call"
    for queued, ran_inline, a, b, d, count in results:
        assert ran_inline
        assert (a, b, d) == (3.0, 30.0, 2.0)
        assert count == 3  # inline calls are recorded like queued ones


def mixed_torch_calls(rank, size):
    import torch

    dist = init_torch(rank, size)
    big = torch.full((1 << 18,), float(rank + 1))
    small = [torch.full((64,), float(rank + k)) for k in range(5)]
    works = [dist.all_reduce(big, async_op=True)]
    for k, t in enumerate(small):
        if k % 2:
            works.append(dist.all_reduce(t, async_op=True))
        else:
            dist.all_reduce(t)  # blocking: inline when idle, else queued
    for w in works:
        w.wait()
    dist.barrier()
    return big[0].item(), [t[0].item() for t in small]


def test_blocking_and_async_calls_interleave_in_order():
    size = 3
    results = run_world(size, mixed_torch_calls, timeout=60)
    want_big = sum(r + 1 for r in range(size))
    want_small = [sum(r + k for r in range(size)) for k in range(5)]
    for big, small in results:
        assert big == want_big
        assert small == want_small


def queued_during_inline(rank, size):
    import threading

    from ringflow._dtypes import DTYPE_CODE, REDUCE_OP_CODE

    owner = _comm(rank, size)
    c = owner.comm
    f32, total = DTYPE_CODE["float32"], REDUCE_OP_CODE["sum"]
    a = np.full(16, rank + 1.0, dtype=np.float32)
    b = np.full(16, 10.0 * (rank + 1), dtype=np.float32)
    later = {}
    if rank == 0:
        # While this thread's blocking call runs inline (rank 1 is late),
        # another thread queues an async call: it must still run once the
        # inline call ends, though the op thread was idle when it was queued.
        def submit():
            time.sleep(0.2)
            later["work"] = c.allreduce(b.ctypes.data, b.size, f32, total)
        t = threading.Thread(target=submit)
        t.start()
        c.allreduce(a.ctypes.data, a.size, f32, total, blocking=True).wait()
        t.join()
        later["work"].wait(20.0)
    else:
        time.sleep(0.6)
        c.allreduce(a.ctypes.data, a.size, f32, total, blocking=True).wait()
        c.allreduce(b.ctypes.data, b.size, f32, total, blocking=True).wait()
    owner.close()
    return float(a[0]), float(b[0])


def test_a_call_queued_while_an_inline_one_runs_is_run_after_it():
    for a, b in run_world(2, queued_during_inline, timeout=60):
        assert (a, b) == (3.0, 30.0)


def blocking_works_shared(rank, size):
    import torch

    dist = init_torch(rank, size)
    group = dist.distributed_c10d._get_default_group()
    opts = dist.AllreduceOptions()
    opts.asyncOp = False
    a, b = torch.full((16,), rank + 1.0), torch.full((16,), 10.0 * (rank + 1))
    wa = group.allreduce([a], opts)
    wb = group.allreduce([b], opts)
    shared = wa is wb and wa.is_completed() and wa.wait() and wb.result()[0] is b
    # The shared Work never keeps a caller's tensor alive.
    e = torch.ones(16)
    dist.all_reduce(e)
    gone = weakref.ref(e)
    del e
    shared = shared and gone() is None
    # Asynchronous calls keep Works of their own, and a blocking call
    # between them changes neither their results nor their tensors.
    c, d = torch.full((1 << 18,), rank + 1.0), torch.full((16,), rank + 2.0)
    wc = dist.all_reduce(c, async_op=True)
    dist.all_reduce(d)
    wd = dist.all_reduce(d, async_op=True)
    own = wc is not wd and wc is not wa
    wc.wait()
    wd.wait()
    dist.barrier()
    return shared, own, a[0].item(), b[0].item(), c[0].item(), d[0].item(), wc.result()[0] is c


def test_blocking_calls_run_inline_share_one_finished_work():
    """A blocking call the core finished before returning gets the group's
    one finished Work (a Work per call is a measurable share of a small
    call's latency); asynchronous calls keep their own."""
    results = run_world(2, blocking_works_shared, timeout=60)
    for shared, own, a, b, c, d, same_tensor in results:
        assert shared and own and same_tensor
        assert (a, b, c, d) == (3.0, 30.0, 3.0, 10.0)
