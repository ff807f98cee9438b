"""Collective checks run inside a world: each call on ringflow and on gloo
with the same inputs, results compared (exactly for integers and for floats
holding small integers, whose sums, products and averages round the same in
any order)."""

from __future__ import annotations

import torch
import torch.distributed as dist

R = dist.ReduceOp
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8,
          torch.int32, torch.int64, torch.bool]
FLOATS = {torch.float32, torch.float64, torch.float16, torch.bfloat16}
LENGTHS = [0, 1, 7, 1001, 4 * 1024 * 1024]


def ops_for(dtype):
    if dtype in FLOATS:
        return [R.SUM, R.PRODUCT, R.MIN, R.MAX, R.AVG]
    return [R.SUM, R.PRODUCT, R.MIN, R.MAX, R.BAND, R.BOR, R.BXOR]


# At a million elements and more, every op of float32 and int64 and the sum
# (and average) of the other dtypes.  Long messages test chunking and
# pipelining, which are the same code for every op; each op of each dtype
# is checked at the shorter lengths, 1001 included (vector body and tail).
LONG_FROM = 1 << 20
LONG_EVERY_OP = {torch.float32, torch.int64}


def ops_at(dtype, n: int):
    if n < LONG_FROM or dtype in LONG_EVERY_OP:
        return ops_for(dtype)
    return [op for op in ops_for(dtype) if op in (R.SUM, R.AVG)]


def make_input(rank: int, n: int, dtype, salt: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + 17 * n + salt)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool()
    lo, hi = (0, 6) if dtype == torch.uint8 else (-3, 4)
    return torch.randint(lo, hi, (n,), generator=g).to(dtype)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


class Checker:
    def __init__(self, gloo_group):
        self.gloo = gloo_group
        self.failures: list[str] = []
        self.count = 0

    def expect(self, what: str, ours, ref):
        self.count += 1
        ours = ours if isinstance(ours, (list, tuple)) else [ours]
        ref = ref if isinstance(ref, (list, tuple)) else [ref]
        if len(ours) != len(ref) or not all(same(a, b) for a, b in zip(ours, ref)):
            self.failures.append(f"{what}: ringflow {[t[:6].tolist() for t in ours]} "
                                 f"!= gloo {[t[:6].tolist() for t in ref]}")

    def both(self, fn):
        """fn(group) on ringflow (default group) then gloo."""
        return fn(None), fn(self.gloo)


def check_allreduce(ck: Checker, rank, lengths=LENGTHS, dtypes=DTYPES):
    for dtype in dtypes:
        for n in lengths:
            for op in ops_at(dtype, n):
                x = make_input(rank, n, dtype)
                ours, ref = x.clone(), x.clone()
                dist.all_reduce(ours, op=op)
                dist.all_reduce(ref, op=op, group=ck.gloo)
                ck.expect(f"all_reduce {dtype} n={n} {op}", ours, ref)


def check_rooted(ck: Checker, rank, size):
    for dtype in [torch.float32, torch.int64, torch.bool, torch.bfloat16]:
        for n in [0, 1, 7, 300_001]:
            for root in range(size):
                x = make_input(rank, n, dtype, salt=root)
                ours, ref = x.clone(), x.clone()
                dist.broadcast(ours, root)
                dist.broadcast(ref, root, group=ck.gloo)
                ck.expect(f"broadcast {dtype} n={n} root={root}", ours, ref)
                for op in ops_for(dtype)[:4]:
                    ours, ref = x.clone(), x.clone()
                    dist.reduce(ours, root, op=op)
                    dist.reduce(ref, root, op=op, group=ck.gloo)
                    if rank == root:
                        ck.expect(f"reduce {dtype} n={n} root={root} {op}", ours, ref)
                    else:
                        ck.expect(f"reduce leaves non-root input alone {dtype} n={n}", ours, x)
                outs = [torch.empty(n, dtype=dtype) for _ in range(size)] if rank == root else None
                refs = [torch.empty(n, dtype=dtype) for _ in range(size)] if rank == root else None
                dist.gather(x, outs, dst=root)
                dist.gather(x, refs, dst=root, group=ck.gloo)
                if rank == root:
                    ck.expect(f"gather {dtype} n={n} root={root}", outs, refs)
                chunks = [make_input(r, n, dtype, salt=99) for r in range(size)] if rank == root else None
                ours, ref = torch.empty(n, dtype=dtype), torch.empty(n, dtype=dtype)
                dist.scatter(ours, chunks, src=root)
                dist.scatter(ref, chunks, src=root, group=ck.gloo)
                ck.expect(f"scatter {dtype} n={n} root={root}", ours, ref)


def check_gathers(ck: Checker, rank, size):
    for dtype in [torch.float32, torch.int8, torch.bool, torch.float16]:
        for n in [0, 1, 7, 300_001]:
            x = make_input(rank, n, dtype)
            outs = [torch.empty(n, dtype=dtype) for _ in range(size)]
            refs = [torch.empty(n, dtype=dtype) for _ in range(size)]
            dist.all_gather(outs, x)
            dist.all_gather(refs, x, group=ck.gloo)
            ck.expect(f"all_gather {dtype} n={n}", outs, refs)
            out, ref = torch.empty(n * size, dtype=dtype), torch.empty(n * size, dtype=dtype)
            dist.all_gather_into_tensor(out, x)
            dist.all_gather_into_tensor(ref, x, group=ck.gloo)
            ck.expect(f"all_gather_into_tensor {dtype} n={n}", out, ref)


def check_reduce_scatter(ck: Checker, rank, size):
    for dtype in [torch.float32, torch.int32, torch.bfloat16, torch.uint8]:
        for n in [0, 1, 7, 100_003]:
            for op in ops_for(dtype)[:4] + [ops_for(dtype)[-1]]:
                x = make_input(rank, n * size, dtype)
                ours = torch.empty(n, dtype=dtype)
                dist.reduce_scatter_tensor(ours, x, op=op)
                # The reference: allreduce on gloo, then this rank's block.
                full = x.clone()
                dist.all_reduce(full, op=op, group=ck.gloo)
                ck.expect(f"reduce_scatter_tensor {dtype} n={n} {op}", ours, full[rank * n:(rank + 1) * n])
                lst = list(x.chunk(size)) if n else [torch.empty(0, dtype=dtype)] * size
                ours = torch.empty(n, dtype=dtype)
                dist.reduce_scatter(ours, lst, op=op)
                ck.expect(f"reduce_scatter {dtype} n={n} {op}", ours, full[rank * n:(rank + 1) * n])


def check_alltoall(ck: Checker, rank, size):
    for dtype in [torch.float32, torch.int64]:
        for per in [0, 1, 5, 40_000]:
            x = make_input(rank, per * size, dtype).reshape(size * per, 1) if per else torch.empty(0, 1, dtype=dtype)
            ours, ref = torch.empty_like(x), torch.empty_like(x)
            dist.all_to_all_single(ours, x)
            dist.all_to_all_single(ref, x, group=ck.gloo)
            ck.expect(f"all_to_all_single {dtype} per={per}", ours, ref)
        # Uneven splits: rank r sends r+j+1 rows to rank j.
        in_splits = [rank + j + 1 for j in range(size)]
        out_splits = [j + rank + 1 for j in range(size)]
        x = make_input(rank, sum(in_splits) * 3, dtype).reshape(-1, 3)
        ours = torch.empty(sum(out_splits), 3, dtype=dtype)
        ref = torch.empty_like(ours)
        dist.all_to_all_single(ours, x, out_splits, in_splits)
        dist.all_to_all_single(ref, x, out_splits, in_splits, group=ck.gloo)
        ck.expect(f"all_to_all_single uneven {dtype}", ours, ref)
        ins = [make_input(rank, 3, dtype, salt=j) for j in range(size)]  # gloo needs equal sizes
        outs = [torch.empty(3, dtype=dtype) for _ in range(size)]
        refs = [torch.empty(3, dtype=dtype) for _ in range(size)]
        dist.all_to_all(outs, ins)
        dist.all_to_all(refs, ins, group=ck.gloo)
        ck.expect(f"all_to_all lists {dtype}", outs, refs)


def check_p2p_and_async(ck: Checker, rank, size):
    dist.barrier()
    # A ring of isend/irecv where every rank posts its receive first: must not deadlock.
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    if size > 1:
        got = torch.empty(1000, dtype=torch.int32)
        r = dist.irecv(got, prv, tag=3)
        s = dist.isend(torch.full((1000,), rank, dtype=torch.int32), nxt, tag=3)
        r.wait()
        s.wait()
        ck.expect("isend/irecv ring", got, torch.full((1000,), prv, dtype=torch.int32))
        # Blocking send/recv, and ordering of two messages with the same tag.
        if rank == 0:
            dist.send(torch.arange(5), 1)
            dist.send(torch.arange(5) * 2, 1)
        elif rank == 1:
            a, b = torch.empty(5, dtype=torch.int64), torch.empty(5, dtype=torch.int64)
            dist.recv(a, 0)
            dist.recv(b, 0)
            ck.expect("send/recv order", [a, b], [torch.arange(5), torch.arange(5) * 2])
    # Non-contiguous tensors are staged and written back.
    x = make_input(rank, 64, torch.float32).reshape(8, 8).t()
    ours, ref = x.clone().t().contiguous().t(), x.clone()
    assert not ours.is_contiguous()
    dist.all_reduce(ours)
    dist.all_reduce(ref, group=ck.gloo)
    ck.expect("all_reduce non-contiguous", ours.contiguous(), ref.contiguous())
    # async_op: wait(), and get_future() whose value is the output list.
    x = make_input(rank, 5000, torch.float64)
    a, b = x.clone(), x.clone()
    w1 = dist.all_reduce(a, async_op=True)
    fut = dist.all_reduce(b, async_op=True).get_future()
    w1.wait()
    value = fut.wait()
    ref = x.clone()
    dist.all_reduce(ref, group=ck.gloo)
    ck.expect("async wait + get_future", [a, value[0]], [ref, ref])
    # Coalesced calls.
    ts = [make_input(rank, n, torch.float32) for n in (3, 0, 1000)]
    refs = [t.clone() for t in ts]
    with dist._coalescing_manager(async_ops=True) as cm:
        for t in ts:
            dist.all_reduce(t)
    cm.wait()
    for t in refs:
        dist.all_reduce(t, group=ck.gloo)
    ck.expect("coalesced all_reduce", ts, refs)


def check_subgroups(ck: Checker, rank, size):
    if size < 2:
        return
    evens = list(range(0, size, 2))
    sub = dist.new_group(evens, backend="ringflow")
    sub_gloo = dist.new_group(evens, backend="gloo")
    if rank in evens:
        x = make_input(rank, 1001, torch.int64)
        ours, ref = x.clone(), x.clone()
        dist.all_reduce(ours, group=sub)
        dist.all_reduce(ref, group=sub_gloo)
        ck.expect("new_group all_reduce", ours, ref)
        b = x.clone()
        dist.broadcast(b, src=evens[-1], group=sub)
        c = x.clone()
        dist.broadcast(c, src=evens[-1], group=sub_gloo)
        ck.expect("new_group broadcast", b, c)
    # The default group still works after a subgroup ran.
    x = make_input(rank, 10, torch.int32)
    ours, ref = x.clone(), x.clone()
    dist.all_reduce(ours)
    dist.all_reduce(ref, group=ck.gloo)
    ck.expect("default group after subgroup", ours, ref)


def check_large(ck: Checker, rank, size, n=4 * 1024 * 1024):
    """One >= 4 Mi-element case of every collective (allreduce has its own)."""
    dtype = torch.int32
    x = make_input(rank, n, dtype)
    root = size - 1
    ours, ref = x.clone(), x.clone()
    dist.broadcast(ours, root)
    dist.broadcast(ref, root, group=ck.gloo)
    ck.expect("broadcast 4Mi", ours, ref)
    ours, ref = x.clone(), x.clone()
    dist.reduce(ours, root, op=R.MAX)
    dist.reduce(ref, root, op=R.MAX, group=ck.gloo)
    ck.expect("reduce 4Mi", ours if rank == root else x, ref if rank == root else x)
    per = n // size
    part = x[:per].clone()
    outs = [torch.empty(per, dtype=dtype) for _ in range(size)] if rank == root else None
    refs = [torch.empty(per, dtype=dtype) for _ in range(size)] if rank == root else None
    dist.gather(part, outs, dst=root)
    dist.gather(part, refs, dst=root, group=ck.gloo)
    if rank == root:
        ck.expect("gather 4Mi total", outs, refs)
    chunks = list(x[:per * size].chunk(size)) if rank == root else None
    ours, ref = torch.empty(per, dtype=dtype), torch.empty(per, dtype=dtype)
    dist.scatter(ours, chunks, src=root)
    dist.scatter(ref, chunks, src=root, group=ck.gloo)
    ck.expect("scatter 4Mi total", ours, ref)
    ours, ref = torch.empty(per * size, dtype=dtype), torch.empty(per * size, dtype=dtype)
    dist.all_gather_into_tensor(ours, part)
    dist.all_gather_into_tensor(ref, part, group=ck.gloo)
    ck.expect("all_gather_into_tensor 4Mi total", ours, ref)
    full = x[:per * size].clone()
    ours = torch.empty(per, dtype=dtype)
    dist.reduce_scatter_tensor(ours, full)
    dist.all_reduce(full, group=ck.gloo)
    ck.expect("reduce_scatter_tensor 4Mi total", ours, full[rank * per:(rank + 1) * per])
    src = x[:per * size].clone().reshape(per * size, 1)
    ours, ref = torch.empty_like(src), torch.empty_like(src)
    dist.all_to_all_single(ours, src)
    dist.all_to_all_single(ref, src, group=ck.gloo)
    ck.expect("all_to_all_single 4Mi total", ours, ref)
