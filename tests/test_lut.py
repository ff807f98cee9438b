"""LUT weighted sum and LUT GEMV against dequantise-then-compute in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from ringflow import _C, ops

K = _C.kernels


def quantize_rows(mat: np.ndarray, bits: int, block: int):
    rows = [ops.quantize_lowbit(r, bits, block) for r in mat]
    packed = np.stack([r[0] for r in rows])
    scales = np.stack([r[1] for r in rows])
    deq = np.stack([ops.dequantize_lowbit(p, s, mat.shape[1], bits, block) for p, s in zip(packed, scales)])
    return packed, scales, deq


def tolerance(weights: np.ndarray, deq: np.ndarray) -> float:
    """float32 rounding budget: ~1e-5 of the largest partial sum involved."""
    return 2e-5 * float(np.abs(weights).sum() * np.abs(deq).max() + 1e-30)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("workers,m,block", [(1, 1, 64), (3, 7, 8), (4, 64, 64), (5, 1003, 64), (9, 4096, 256), (6, 250, 10)])
def test_lut_weighted_sum(bits, workers, m, block):
    rng = np.random.default_rng(bits * 97 + workers * 7 + m)
    grads = rng.standard_normal((workers, m)).astype(np.float32) * rng.uniform(0.1, 10, (workers, 1)).astype(np.float32)
    packed, scales, deq = quantize_rows(grads, bits, block)
    coeffs = rng.uniform(-1, 2, workers).astype(np.float32)
    want = (coeffs.astype(np.float64)[:, None] * deq).sum(axis=0)
    got = ops.lut_weighted_sum(packed, coeffs, scales, bits, m=m, block=block)
    tol = tolerance(coeffs, deq)
    assert np.max(np.abs(got - want)) <= tol
    ref = np.empty(m, np.float32)  # the scalar bit-serial path agrees too
    K.lut_weighted_sum_scalar(ref.ctypes.data, packed.ctypes.data, scales.ctypes.data, coeffs.ctypes.data,
                              workers, m, bits, block)
    assert np.max(np.abs(got - ref)) <= tol


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("rows,cols,block", [(1, 4, 4), (16, 64, 64), (37, 200, 64), (5, 1001, 32), (300, 512, 128)])
def test_lut_gemv(bits, rows, cols, block):
    rng = np.random.default_rng(bits * 13 + rows + cols)
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal(cols).astype(np.float32)
    packed, scales, deq = quantize_rows(W, bits, block)
    want = deq.astype(np.float64) @ x.astype(np.float64)
    tol = 2e-5 * float(np.abs(deq).max() * np.abs(x).sum())
    prepared = ops.lut_prepare(packed, scales, (rows, cols), bits, block)
    got = ops.lut_gemv(prepared, x)
    assert got.shape == (rows,) and np.max(np.abs(got - want)) <= tol
    direct = ops.lut_gemv(packed, x, scales=scales, bits=bits, shape=(rows, cols), block=block)
    assert np.array_equal(direct, got)
    ref = np.empty(rows, np.float32)
    K.lut_gemv_scalar(ref.ctypes.data, packed.ctypes.data, scales.ctypes.data, x.ctypes.data, rows, cols, bits, block)
    assert np.max(np.abs(ref - want)) <= tol


def test_simd_and_portable_paths_agree():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((40, 256)).astype(np.float32)
    x = rng.standard_normal(256).astype(np.float32)
    packed, scales, _ = quantize_rows(W, 2, 64)
    prepared = ops.lut_prepare(packed, scales, (40, 256), 2, 64)
    g = rng.standard_normal((6, 256)).astype(np.float32)
    gp, gs, _ = quantize_rows(g, 2, 64)
    c = rng.uniform(size=6).astype(np.float32)
    detected = K.detected_simd_level()
    fast = ops.lut_gemv(prepared, x), ops.lut_weighted_sum(gp, c, gs, 2, block=64)
    try:
        ops.set_simd_level("scalar")
        slow = ops.lut_gemv(prepared, x), ops.lut_weighted_sum(gp, c, gs, 2, block=64)
    finally:
        ops.set_simd_level(detected)
    for f, s in zip(fast, slow):
        assert np.allclose(f, s, rtol=1e-5, atol=1e-4)


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    W = torch.randn(20, 64)
    x = torch.randn(64)
    packed, scales, deq = quantize_rows(W.numpy(), 4, 32)
    y = ops.lut_gemv(torch.from_numpy(packed), x, scales=torch.from_numpy(scales), bits=4, shape=(20, 64), block=32)
    assert isinstance(y, torch.Tensor)
    assert torch.allclose(y, torch.from_numpy(deq) @ x, atol=1e-4)


def test_bad_input():
    packed, scales, _ = quantize_rows(np.ones((3, 16), np.float32), 2, 8)
    with pytest.raises(ValueError, match="bits must be"):
        ops.lut_weighted_sum(packed, np.ones(3, np.float32), scales, 3, m=16, block=8)
    with pytest.raises(ValueError, match="coeffs has 2"):
        ops.lut_weighted_sum(packed, np.ones(2, np.float32), scales, 2, m=16, block=8)
    with pytest.raises(ValueError, match="scales must have shape"):
        ops.lut_weighted_sum(packed, np.ones(3, np.float32), scales[:, :1], 2, m=16, block=8)
    with pytest.raises(ValueError, match="multiple of 4"):
        ops.lut_prepare(packed, np.ones((3, 3), np.float32), (3, 16), 2, block=6)
    prepared = ops.lut_prepare(packed, scales, (3, 16), 2, 8)
    with pytest.raises(ValueError, match="columns"):
        ops.lut_gemv(prepared, np.ones(15, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        ops.lut_weighted_sum(packed.astype(np.int32), np.ones(3, np.float32), scales, 2, m=16, block=8)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("rows,cols,block", [(1, 4, 4), (37, 200, 64), (300, 1024, 128), (17, 4096, 4096)])
def test_lut_gemv_int8_tables(bits, rows, cols, block):
    """T-MAC-style int8 tables: within 1% of |W| @ |x| of the exact product,
    and the vpshufb path's integer sums equal the portable loop's."""
    rng = np.random.default_rng(bits + rows)
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal(cols).astype(np.float32)
    packed, scales, deq = quantize_rows(W, bits, block)
    prepared = ops.lut_prepare(packed, scales, (rows, cols), bits, block, tables="int8")
    assert prepared.int8_tables
    got = ops.lut_gemv(prepared, x)
    want = deq.astype(np.float64) @ x
    magnitude = np.abs(deq) @ np.abs(x) + 1e-30
    # Rounding each int8 table entry costs at most half a step (max |entry| of
    # the block / 127) per look-up; a row adds 2 * (2^bits - 1) * that per group.
    nblk = -(-cols // block)
    bound = np.zeros(rows)
    for b in range(nblk):
        xb = np.abs(x[b * block:(b + 1) * block])
        groups = -(-xb.size // 4)
        max_entry = max(np.sum(xb[4 * g:4 * g + 4]) for g in range(groups))
        bound += scales[:, b] * (2**bits - 1) * (max_entry / 127) * groups
    assert np.all(np.abs(got - want) <= bound * 1.001 + 1e-5 * magnitude)
    if cols >= 200:  # in practice the errors average out to well under 1%
        assert np.max(np.abs(got - want) / magnitude) <= 0.01
    detected = K.detected_simd_level()
    try:
        ops.set_simd_level("scalar")
        portable = ops.lut_gemv(prepared, x)
    finally:
        ops.set_simd_level(detected)
    assert np.max(np.abs(portable - got) / magnitude) <= 1e-6
    with pytest.raises(ValueError, match="tables must be"):
        ops.lut_prepare(packed, scales, (rows, cols), bits, block, tables="int4")
