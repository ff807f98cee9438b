"""The C++ communicator used directly (no torch.distributed): split,
subgroups, point-to-point matching, per-call timeouts."""

import numpy as np
import pytest

from worlds import run_world


def _comm(rank, size, timeout=20.0):
    import os
    from datetime import timedelta

    import torch.distributed as dist

    from ringflow.rendezvous import Communicator

    store = dist.TCPStore("127.0.0.1", int(os.environ["MASTER_PORT"]), size, rank == 0,
                          timeout=timedelta(seconds=30))
    return Communicator(store, rank, size, timeout)


def split_and_subgroups(rank, size):
    from ringflow._dtypes import DTYPE_CODE, REDUCE_OP_CODE

    owner = _comm(rank, size)
    c = owner.comm
    i64, total = DTYPE_CODE["int64"], REDUCE_OP_CODE["sum"]
    # Odd and even ranks, ordered by descending rank through the key.
    sub = c.split(rank % 2, -rank)
    x = np.array([rank], dtype=np.int64)
    sub.allreduce(x.ctypes.data, 1, i64, total).wait()
    members = [r for r in range(size) if r % 2 == rank % 2]
    # A rank opting out gets no communicator.
    none = c.split(-1 if rank == 0 else 0, 0)
    # Local subgroup: ranks 1..size-1, no messages needed to build it.
    tail = c.subgroup(list(range(1, size)), 7)
    y = np.array([10 * rank], dtype=np.int64)
    if tail is not None:
        tail.allreduce(y.ctypes.data, 1, i64, total).wait()
    # The parent still works, interleaved with the children.
    z = np.array([1], dtype=np.int64)
    c.allreduce(z.ctypes.data, 1, i64, total).wait()
    owner.close()
    return int(x[0]), sum(members), sub.rank, sorted(members, reverse=True).index(rank), \
        none is None, int(y[0]), int(z[0])


def test_split_and_subgroup():
    size = 4
    for rank, res in enumerate(run_world(size, split_and_subgroups, timeout=60)):
        got, want, sub_rank, want_sub_rank, opted_out, tail_sum, parent = res
        assert got == want
        assert sub_rank == want_sub_rank
        assert opted_out == (rank == 0)
        assert tail_sum == (sum(10 * r for r in range(1, size)) if rank else 0)
        assert parent == size


def p2p_checks(rank, size):
    import ringflow
    from ringflow._dtypes import DTYPE_CODE

    owner = _comm(rank, size, timeout=2.0)
    c = owner.comm
    f32, i32 = DTYPE_CODE["float32"], DTYPE_CODE["int32"]
    out = {}
    if rank == 0:
        a = np.arange(10, dtype=np.float32)
        c.send(a.ctypes.data, 10, f32, 1, 5).wait()
        b = np.arange(4, dtype=np.float32)
        c.send(b.ctypes.data, 4, f32, 1, 6).wait()  # receiver expects 5: mismatch there
        import time

        time.sleep(2.5)  # rank 1 spends 2 s timing out below
    else:
        a = np.zeros(10, dtype=np.float32)
        c.recv(a.ctypes.data, 10, f32, 0, 5).wait()
        out["payload"] = a.tolist()
        b = np.zeros(5, dtype=np.float32)
        with pytest.raises(ringflow.MismatchError) as e:
            c.recv(b.ctypes.data, 5, f32, 0, 6).wait()
        out["mismatch"] = str(e.value)
        # Nobody sends on tag 9: the receive times out on its own deadline.
        z = np.zeros(1, dtype=np.int32)
        with pytest.raises(ringflow.TimeoutError):
            c.recv(z.ctypes.data, 1, i32, 0, 9).wait()
        out["timeout"] = True
    c.barrier().wait()  # point-to-point failures leave collectives usable
    owner.close()
    return out


def test_point_to_point_matching_and_errors():
    res = run_world(2, p2p_checks, timeout=60)[1]
    assert res["payload"] == list(range(10))
    assert "count=4" in res["mismatch"] and "count=5" in res["mismatch"], res["mismatch"]
    assert res["timeout"]


@pytest.mark.parametrize("addr", ["127.0.0.1", "127.0.0.1:", "[::1]", "[::1"])
def test_peer_address_without_a_port_is_named(addr):
    import ringflow
    from ringflow import _C

    t = _C.TcpTransport(1, 2, "127.0.0.1")  # rank 1 connects to rank 0 at addrs[0]
    with pytest.raises(ringflow.InvalidArgument, match="has no :port"):
        t.connect([addr, "127.0.0.1:1"], 1, 1.0)


def test_error_classes_carry_their_public_names():
    import ringflow

    for cls in (ringflow.Error, ringflow.PeerError, ringflow.TimeoutError,
                ringflow.MismatchError, ringflow.InvalidArgument):
        assert f"{cls.__module__}.{cls.__qualname__}" == f"ringflow.{cls.__name__}"
    assert issubclass(ringflow.PeerError, RuntimeError) and issubclass(ringflow.InvalidArgument, ValueError)
    wrapped = RuntimeError("Got the following error when running the callback: "
                           "PeerError: rank 1 has shut down its communicator")
    err = ringflow.error_of(wrapped)
    assert isinstance(err, ringflow.PeerError) and str(err) == "rank 1 has shut down its communicator"
    assert ringflow.error_of(RuntimeError("unrelated")) is None
    direct = ringflow.TimeoutError("late")
    assert ringflow.error_of(direct) is direct
