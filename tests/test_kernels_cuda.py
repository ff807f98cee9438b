"""GPU kernels against the CPU ones.  Skipped without a GPU or a CUDA build;
the no-GPU error path is checked wherever the build has CUDA but no device."""

from __future__ import annotations

import numpy as np
import pytest

from ringflow import _C, ops
from test_lut import quantize_rows, tolerance  # tests/ is on sys.path (conftest.py)

CUDA_BUILD = bool(_C.build_info()["cuda"])


def _gpu_available() -> bool:
    if not CUDA_BUILD:
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _gpu_available(), reason="needs a CUDA GPU and a CUDA build of ringflow")


def test_no_gpu_is_a_clear_error_not_a_crash():
    if _gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(_C.Error, match="CUDA"):
        _C.kernels.cuda_devices()
    with pytest.raises(_C.Error, match="CUDA"):
        _C.kernels.cuda_reduce_n(0, [0, 0], 4, 0, 0)
    with pytest.raises(_C.Error, match="CUDA"):
        _C.kernels.cuda_lut_weighted_sum(0, 0, 0, 0, 3, 16, 2, 8)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "int32", "int64", "int8", "uint8", "bool"])
@pytest.mark.parametrize("op", ["sum", "max", "min", "product"])
@pytest.mark.parametrize("k", [2, 3, 9])
def test_cuda_reduce_matches_cpu(dtype, op, k):
    import torch

    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(k)
    for n in (0, 1, 7, 1003, (1 << 20) + 5):
        if dtype == "bool":
            xs = [torch.randint(0, 2, (n,), generator=g).bool() for _ in range(k)]
        elif dt.is_floating_point:
            xs = [torch.randn(n, generator=g).to(dt) for _ in range(k)]
            if n > 10:
                xs[0][3] = float("nan")
                xs[1][4] = float("inf")
        else:
            xs = [torch.randint(-100, 100, (n,), generator=g).to(dt) for _ in range(k)]
        if k > 8 and dtype in ("float16", "bfloat16"):
            continue  # > 8 sources round once per pass on the GPU (documented)
        xs = [x[1:] for x in xs]  # unaligned start: exercises the element path
        cpu = ops.reduce(xs, op)
        gpu = ops.reduce([x.cuda() for x in xs], op).cpu()
        if dt.is_floating_point:
            assert torch.equal(torch.isnan(cpu), torch.isnan(gpu))
            m = ~torch.isnan(cpu)
            assert torch.equal(cpu[m], gpu[m])
        else:
            assert torch.equal(cpu, gpu)
        aligned = [torch.randn(4096, generator=g).to(dt) if dt.is_floating_point else torch.ones(4096, dtype=dt) for _ in range(k)]
        assert torch.equal(ops.reduce([a.cuda() for a in aligned], op).cpu().float().nan_to_num(),
                           ops.reduce(aligned, op).float().nan_to_num())


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_cuda_lut_gemv_matches_cpu(bits):
    import torch

    rng = np.random.default_rng(bits)
    rows, cols, block = 300, 1000, 64
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    q = [ops.quantize_lowbit(r, bits, block) for r in W]
    packed, scales = np.stack([a[0] for a in q]), np.stack([a[1] for a in q])
    x = torch.from_numpy(rng.standard_normal(cols).astype(np.float32))
    prepared = ops.lut_prepare(packed, scales, (rows, cols), bits, block)
    cpu = ops.lut_gemv(prepared, x)
    gpu = ops.lut_gemv(prepared, x.cuda()).cpu()
    assert torch.allclose(cpu, gpu, rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("rows,cols", [(0, 64), (5, 0)])
def test_cuda_lut_gemv_of_an_empty_matrix(rows, cols):
    import torch

    packed = np.zeros((rows, (cols * 2 + 7) // 8), np.uint8)
    scales = np.ones((rows, (cols + 63) // 64), np.float32)
    prepared = ops.lut_prepare(packed, scales, (rows, cols), 2, 64)
    y = ops.lut_gemv(prepared, torch.zeros(cols).cuda()).cpu()
    assert y.shape == (rows,) and not y.any()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
# (9, 300, 1): one-element blocks leave room for one group's tables per
# chunk, so the three groups of workers take three passes over shared memory.
@pytest.mark.parametrize("workers,m,block", [(1, 1, 64), (3, 7, 8), (4, 64, 64), (5, 1003, 64),
                                             (9, 4096, 256), (6, 250, 10), (9, 300, 1), (40, 70001, 64)])
def test_cuda_lut_weighted_sum_matches_cpu(bits, workers, m, block):
    import torch

    rng = np.random.default_rng(bits * 31 + workers + m)
    grads = rng.standard_normal((workers, m)).astype(np.float32) * rng.uniform(0.1, 10, (workers, 1)).astype(np.float32)
    packed, scales, deq = quantize_rows(grads, bits, block)
    coeffs = rng.uniform(-1, 2, workers).astype(np.float32)
    want = (coeffs.astype(np.float64)[:, None] * deq).sum(axis=0)  # dequantise, then sum in float64
    tol = tolerance(coeffs, deq)
    cpu = ops.lut_weighted_sum(packed, coeffs, scales, bits, m=m, block=block)
    gpu = ops.lut_weighted_sum(torch.from_numpy(packed).cuda(), coeffs, torch.from_numpy(scales).cuda(), bits,
                               m=m, block=block)
    assert gpu.is_cuda and gpu.dtype == torch.float32 and gpu.shape == (m,)
    got = gpu.cpu().numpy()
    assert np.max(np.abs(got - want)) <= tol
    assert np.max(np.abs(got - cpu)) <= tol
    # coeffs as a device tensor take the same path
    again = ops.lut_weighted_sum(torch.from_numpy(packed).cuda(), torch.from_numpy(coeffs).cuda(),
                                 torch.from_numpy(scales).cuda(), bits, m=m, block=block)
    assert torch.equal(again, gpu)


@pytest.mark.gpu
@needs_gpu
def test_cuda_lut_weighted_sum_bad_input():
    import torch

    packed, scales, _ = quantize_rows(np.ones((3, 16), np.float32), 2, 8)
    pg, sg = torch.from_numpy(packed).cuda(), torch.from_numpy(scales).cuda()
    ones = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="scales must be a tensor on"):
        ops.lut_weighted_sum(pg, ones, torch.from_numpy(scales), 2, m=16, block=8)
    with pytest.raises(ValueError, match="float32"):
        ops.lut_weighted_sum(pg, ones, sg.double(), 2, m=16, block=8)
    with pytest.raises(ValueError, match="scales must have shape"):
        ops.lut_weighted_sum(pg, ones, sg[:, :1].contiguous(), 2, m=16, block=8)
    with pytest.raises(ValueError, match="coeffs has 2"):
        ops.lut_weighted_sum(pg, ones[:2], sg, 2, m=16, block=8)
    with pytest.raises(ValueError, match="uint8"):
        ops.lut_weighted_sum(pg.int(), ones, sg, 2, m=16, block=8)
    with pytest.raises(ValueError, match="bits must be"):
        ops.lut_weighted_sum(pg, ones, sg, 3, m=16, block=8)
