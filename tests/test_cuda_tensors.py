"""CUDA tensors through the ringflow backend (staged through host memory):
every result equals the CPU reference, views included.  Skipped without a
GPU; run where one is lent (bench/RESULTS.md names the runs)."""

import pytest
import torch

from worlds import init_torch, run_world

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, needs_gpu]


def cuda_collectives(rank, size):
    import torch.distributed as dist

    init_torch(rank, size)
    dev = torch.device("cuda", rank % torch.cuda.device_count())
    failures = []

    def check(what, got, want):
        if not torch.equal(got.cpu(), want.cpu()):
            failures.append(f"{what}: {got.cpu().flatten()[:6].tolist()} != {want.flatten()[:6].tolist()}")

    def data(r, n=1000, dtype=torch.float32):
        return (torch.arange(n, dtype=torch.float64) % 7 * (r + 1)).to(dtype)

    for dtype in (torch.float32, torch.bfloat16, torch.int64):
        x = data(rank, dtype=dtype).to(dev)
        dist.all_reduce(x)
        check(f"all_reduce {dtype}", x, sum(data(r, dtype=dtype).double() for r in range(size)).to(dtype))

    base = torch.full((8, 12), -5.0, device=dev)
    view = base[:, ::2]
    view.copy_(data(rank, 48).reshape(8, 6).to(dev))
    dist.all_reduce(view, op=dist.ReduceOp.MAX)
    check("all_reduce MAX of a strided CUDA view", view, data(size - 1, 48).reshape(8, 6))
    check("bytes outside the view", base[:, 1::2], torch.full((8, 6), -5.0))

    x = data(rank, 64).to(dev)
    dist.broadcast(x, src=size - 1)
    check("broadcast", x, data(size - 1, 64))

    outs = [torch.empty(64, device=dev) for _ in range(size)]
    dist.all_gather(outs, data(rank, 64).to(dev))
    for r in range(size):
        check(f"all_gather from {r}", outs[r], data(r, 64))

    out = torch.empty(32, device=dev)
    dist.reduce_scatter_tensor(out, data(rank, 32 * size).to(dev))
    check("reduce_scatter_tensor", out, sum(data(r, 32 * size) for r in range(size))[rank * 32:(rank + 1) * 32])

    w = dist.all_reduce(torch.ones(16, device=dev), async_op=True)
    w.wait()
    dist.destroy_process_group()
    return failures


def test_cuda_tensors_match_the_cpu_reference():
    for rank, failures in enumerate(run_world(2, cuda_collectives, timeout=180)):
        assert not failures, f"rank {rank}: " + "\n".join(failures)
