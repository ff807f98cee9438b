"""recv from any source (as gloo and MPI offer it) and all_gather_coalesced."""

import torch

from worlds import init_torch, run_world


def any_source(rank, size):
    dist = init_torch(rank, size)
    got = []
    if rank == 0:
        # One message from every other rank, in whatever order they come.
        for _ in range(size - 1):
            t = torch.zeros(5)
            src = dist.recv(t)
            got.append((src, t.tolist()))
        # Order per sender is kept: rank 1's next two messages on tag 7 come
        # in the order sent, whether taken from any source or from rank 1.
        a, b = torch.zeros(3), torch.zeros(3)
        src_a = dist.recv(a, tag=7)
        dist.recv(b, src=1, tag=7)
        got.append((src_a, a.tolist(), b.tolist()))
        # irecv from any source: the Work names the sender once done.
        c = torch.zeros(2, 4)[:, ::2]  # a strided view, written in place
        work = dist.irecv(c, tag=9)
        work.wait()
        got.append((work._source_rank(), c.tolist()))
    else:
        dist.send(torch.full((5,), float(rank)), dst=0)
        if rank == 1:
            dist.send(torch.tensor([1.0, 2.0, 3.0]), dst=0, tag=7)
            dist.send(torch.tensor([4.0, 5.0, 6.0]), dst=0, tag=7)
        if rank == size - 1:
            dist.send(torch.tensor([[9.0, 8.0], [7.0, 6.0]]), dst=0, tag=9)
    dist.barrier()
    dist.destroy_process_group()
    return got


def test_recv_from_any_source():
    size = 3
    got = run_world(size, any_source, timeout=60)[0]
    firsts = sorted(got[:size - 1])
    assert firsts == [(r, [float(r)] * 5) for r in range(1, size)]
    assert got[size - 1] == (1, [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert got[size] == (size - 1, [[9.0, 8.0], [7.0, 6.0]])


def any_source_unanswered(rank, size, sender_stays):
    dist = init_torch(rank, size, timeout_s=2)
    import time

    import ringflow

    if rank == 0:
        try:
            dist.recv(torch.zeros(1))
        except (ringflow.TimeoutError, ringflow.PeerError) as e:
            return type(e).__name__, str(e)
        return "no error", ""
    if sender_stays:
        time.sleep(4)
    return "", ""


def test_recv_from_any_source_times_out():
    kind, msg = run_world(2, any_source_unanswered, True, timeout=60)[0]
    assert kind == "TimeoutError" and "any rank" in msg and "timed out" in msg, msg


def test_recv_from_any_source_fails_when_every_sender_is_gone():
    kind, msg = run_world(2, any_source_unanswered, False, timeout=60)[0]
    assert kind == "PeerError" and "rank 1" in msg, msg


def coalesced_gather(rank, size):
    dist = init_torch(rank, size)
    inputs = [torch.arange(3.0) + 10 * rank, torch.arange(4, dtype=torch.float32).reshape(2, 2) * (rank + 1)]
    outs = [[torch.full_like(t, -1) for t in inputs] for _ in range(size)]
    dist.all_gather_coalesced(outs, inputs)
    dist.destroy_process_group()
    return [[t.tolist() for t in row] for row in outs]


def test_all_gather_coalesced():
    size = 3
    results = run_world(size, coalesced_gather, timeout=60)
    want = [[(torch.arange(3.0) + 10 * r).tolist(),
             (torch.arange(4, dtype=torch.float32).reshape(2, 2) * (r + 1)).tolist()] for r in range(size)]
    for rank_result in results:
        assert rank_result == want
