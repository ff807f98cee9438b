"""A tuned ring order reaches every ring collective, and deterministic mode
every reduction.  Under a permuted order, reduce-scatter, allgather,
broadcast and reduce stay right (against gloo) and send only to the rank
after this one in the tuned ring (ringflow.stats()["bytes_sent_to"]); in
deterministic mode reduce-scatter and reduce give the rank-order fold's
bits, the same as the deterministic allreduce, however a vector is cut."""

import numpy as np

import collective_cases as cases
from worlds import init_torch, live_communicator, run_world

ORDER = [2, 0, 3, 1]


def ring_collectives(rank, size, order):
    import torch

    import ringflow
    from ringflow import _C
    from ringflow.tune import Pattern, apply

    dist = init_torch(rank, size)
    ck = cases.Checker(dist.new_group(backend="gloo"))
    comm = live_communicator().comm
    apply(comm, Pattern(tuple(order), piece_bytes=65536))
    sent = {}
    calls = {
        "reduce_scatter": lambda x: dist.reduce_scatter_tensor(torch.empty(x.numel() // size), x),
        "all_gather": lambda x: dist.all_gather_into_tensor(torch.empty(x.numel() * size), x),
        "broadcast": lambda x: dist.broadcast(x, src=order[0]),
        "reduce": lambda x: dist.reduce(x, dst=order[0]),
        "all_reduce": lambda x: dist.all_reduce(x),
    }
    for name, call in calls.items():
        dist.barrier(group=ck.gloo)
        _C.reset_stats()
        call(torch.ones(size * 50_000))
        sent[name] = dict(ringflow.stats()["bytes_sent_to"])
        dist.barrier(group=ck.gloo)
    cases.check_reduce_scatter(ck, rank, size)
    cases.check_gathers(ck, rank, size)
    cases.check_rooted(ck, rank, size)
    apply(comm, None)
    return ck.count, ck.failures, sent


def test_ring_collectives_follow_the_tuned_order():
    size = len(ORDER)
    results = run_world(size, ring_collectives, ORDER, timeout=300)
    for rank, (count, failures, sent) in enumerate(results):
        assert count > 50
        assert not failures, "\n".join(failures[:20])
        pos = ORDER.index(rank)
        after, before = ORDER[(pos + 1) % size], ORDER[(pos - 1) % size]
        for name in ("reduce_scatter", "all_gather", "all_reduce"):
            assert set(sent[name]) == {after}, (name, rank, sent[name])
        # The chains start at the root (position 0): each sends to the next
        # position, towards the end for broadcast and back for reduce.
        assert set(sent["broadcast"]) == (set() if pos == size - 1 else {after}), sent
        assert set(sent["reduce"]) == (set() if pos == 0 else {before}), sent


def deterministic_rooted(rank, size, n, cuts):
    import torch

    from ringflow.tune import set_deterministic

    dist = init_torch(rank, size)
    gloo = dist.new_group(backend="gloo")
    rng = np.random.default_rng(rank + 10)
    x = torch.from_numpy((rng.standard_normal(n * size)
                          * 10.0 ** rng.integers(-3, 4, n * size)).astype(np.float32))
    everyone = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(everyone, x, group=gloo)

    def scattered(cut):
        """reduce-scatter in pieces of `cut` elements of each rank's block."""
        blocks = x.view(size, n)
        out = []
        for lo in range(0, n, cut):
            piece = blocks[:, lo:lo + cut].contiguous().view(-1)
            o = torch.empty(piece.numel() // size)
            dist.reduce_scatter_tensor(o, piece)
            out.append(o)
        return torch.cat(out).numpy().tobytes()

    def reduced(cut, root):
        out = x.clone()
        for chunk in out.split(cut):
            dist.reduce(chunk, dst=root)
        return out.numpy().tobytes() if rank == root else None

    plain = {"rs": scattered(n), "reduce": reduced(n * size, 1)}
    comm = live_communicator().comm
    set_deterministic(comm, True)
    rs = {c: scattered(c) for c in cuts}
    red = {c: reduced(c, 1) for c in cuts}
    allreduced = x.clone()
    dist.all_reduce(allreduced)
    set_deterministic(comm, False)
    return [e.numpy() for e in everyone], plain, rs, red, allreduced.numpy().tobytes()


def test_deterministic_reduce_scatter_and_reduce_across_cuts():
    size, n = 4, 50_003
    cuts = [n, 16_384, 1_001]
    results = run_world(size, deterministic_rooted, n, cuts, timeout=300,
                        env={"RINGFLOW_ALGO": "ring"})
    inputs = results[0][0]
    ref = inputs[0].copy()
    for x in inputs[1:]:
        ref = ref + x  # rank order, float32
    plain_differs = False
    for rank, (_, plain, rs, red, allreduced) in enumerate(results):
        mine = ref[rank * n:(rank + 1) * n].tobytes()
        assert allreduced == ref.tobytes()
        for c in cuts:
            assert rs[c] == mine, f"reduce-scatter cut {c}: not the rank-order fold"
            if rank == 1:
                assert red[c] == ref.tobytes(), f"reduce cut {c}: not the rank-order fold"
        plain_differs |= plain["rs"] != mine or (rank == 1 and plain["reduce"] != ref.tobytes())
    # Without the mode, the ring and the chain fold in another order: the
    # test can tell the modes apart.
    assert plain_differs
