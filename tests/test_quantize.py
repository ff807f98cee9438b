"""Fixed-point and low-bit quantisation against numpy re-derivations."""

from __future__ import annotations

import numpy as np
import pytest

from ringflow import _C, ops

import aggregate_reference as ref

INT32_MAX = ref.INT32_MAX


# Block by block, the fixed-point model aggregate_reference keeps for the
# aggregation tests.
def np_exponents(x: np.ndarray, block: int) -> np.ndarray:
    return np.array([ref.exponent(x[i:i + block]) for i in range(0, x.size, block)], np.int32)


def np_quantize_fixed(x, exps, workers, block):
    q = np.empty(x.size, np.int32)
    for b, e in enumerate(exps):
        sl = slice(b * block, (b + 1) * block)
        q[sl] = ref.quantize(x[sl], int(e), workers)
    return q


def np_dequantize_fixed(q, exps, workers, block):
    out = np.empty(q.size, np.float32)
    for b, e in enumerate(exps):
        sl = slice(b * block, (b + 1) * block)
        out[sl] = ref.dequantize(q[sl], int(e), workers)
    return out


@pytest.mark.parametrize("n", [0, 1, 7, 256, 1000, 4099])
@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_fixed_point_bit_exact(n, workers):
    rng = np.random.default_rng(n * 31 + workers)
    block = 256
    xs = [(rng.standard_normal(n) * 10 ** rng.uniform(-6, 3)).astype(np.float32) for _ in range(workers)]
    if n > 10:
        xs[0][3] = 2.0 ** -140  # subnormal
        xs[0][4] = 4.0  # exact power of two: exponent 2, not 3
        xs[0][256 % n] = 0.0
    # Workers agree on the max of their exponents, as the aggregator protocol does.
    exps = np.max([ops.fixed_exponents(x, block) for x in xs], axis=0) if n else np.zeros(0, np.int32)
    for x in xs:
        assert np.array_equal(ops.fixed_exponents(x, block), np_exponents(x, block))
    qs = [ops.quantize_fixed(x, workers, exps, block)[0] for x in xs]
    for x, q in zip(xs, qs):
        assert np.array_equal(q, np_quantize_fixed(x, exps, workers, block))
    total = np.sum(np.stack(qs).astype(np.int64), axis=0) if n else np.zeros(0, np.int64)
    assert np.all(np.abs(total) <= INT32_MAX), "the sum of N workers must fit in int32"
    summed = ops.reduce([q for q in qs], "sum") if workers > 1 else qs[0]
    assert np.array_equal(summed, total.astype(np.int32))  # exact integer aggregation
    back = ops.dequantize_fixed(summed, workers, exps, block)
    assert np.array_equal(back, np_dequantize_fixed(summed, exps, workers, block))
    # Within one quantisation step per worker of the float sum.
    if n:
        step = np.repeat(np.ldexp(1.0, exps.astype(np.int64)) * workers / INT32_MAX, block)[:n]
        assert np.all(np.abs(back - np.sum(xs, axis=0, dtype=np.float64)) <= step * workers + 1e-30 + np.abs(back) * 1e-7)


def test_fixed_point_saturates_and_rejects_nonfinite():
    x = np.array([1.0, -3.0, 0.5], np.float32)
    q, _ = ops.quantize_fixed(x, 2, np.array([0], np.int32), block=4)  # 2^0 < 3: saturates
    assert q.tolist() == [INT32_MAX // 2, -(INT32_MAX // 2), round(0.5 * INT32_MAX / 2)]
    with pytest.raises(ValueError, match="finite"):
        ops.fixed_exponents(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="finite"):
        ops.fixed_exponents(np.array([np.inf], np.float32))
    with pytest.raises(ValueError, match="exponents"):
        ops.quantize_fixed(np.zeros(10, np.float32), 2, np.zeros(2, np.int32), block=4)
    with pytest.raises(ValueError, match="workers"):
        ops.quantize_fixed(np.zeros(10, np.float32), 0)
    with pytest.raises(ValueError, match="int32"):
        ops.dequantize_fixed(np.zeros(4, np.int64), 2, np.zeros(1, np.int32))


@pytest.mark.parametrize("workers", [1, 2, 3, 64])
def test_fixed_point_simd_matches_scalar_and_numpy(workers):
    """The AVX2 loops against the portable ones and numpy, on what a SIMD
    rewrite gets wrong: NaN, +-inf, -0, subnormals, saturation, a rounding
    tie, and a tail that is not a multiple of the vector width."""
    rng = np.random.default_rng(workers)
    n = 8 * 4096 + 5
    x = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3, n)).astype(np.float32)
    x[:8] = [np.nan, np.inf, -np.inf, -0.0, 2.0**-149, -(2.0**-140), 1e30, -1e30]
    e = 4
    # 2^(e-1) scales to exactly (INT32_MAX / 1) / 2 = 2^30 - 0.5 for one
    # worker: a rounding tie (to the even 2^30).  The scheme makes ties rare.
    x[8:10] = [2.0 ** (e - 1), -(2.0 ** (e - 1))]
    exps = np.full(-(-n // 256), e, np.int32)
    q_int = rng.integers(-INT32_MAX, INT32_MAX, n, dtype=np.int64).astype(np.int32)
    detected = _C.kernels.detected_simd_level()
    fast = ops.quantize_fixed(x, workers, exps)[0], ops.dequantize_fixed(q_int, workers, exps)
    try:
        ops.set_simd_level("scalar")
        slow = ops.quantize_fixed(x, workers, exps)[0], ops.dequantize_fixed(q_int, workers, exps)
    finally:
        ops.set_simd_level(detected)
    want = np_quantize_fixed(np.nan_to_num(x, nan=0.0), exps, workers, 256)  # NaN quantises to 0
    assert np.array_equal(fast[0], want) and np.array_equal(slow[0], want)
    want = np_dequantize_fixed(q_int, exps, workers, 256)
    assert np.array_equal(fast[1].view(np.int32), want.view(np.int32))
    assert np.array_equal(slow[1].view(np.int32), want.view(np.int32))


def np_quantize_lowbit(x, bits, block, error=None):
    v = x + error if error is not None else x.copy()
    L = 2**bits - 1
    codes = np.empty(x.size, np.int64)
    scales = np.empty(-(-x.size // block), np.float32)
    for b in range(scales.size):
        sl = slice(b * block, (b + 1) * block)
        s = np.float32(np.max(np.abs(v[sl]))) / np.float32(L)
        scales[b] = s
        if s > 0:
            c = np.rint((v[sl].astype(np.float64) / np.float64(s) + L) * 0.5)
        else:
            c = np.full(v[sl].size, (L + 1) // 2, np.float64)
        codes[sl] = np.clip(c, 0, L)
    deq = np.repeat(scales, block)[: x.size] * (2 * codes - L).astype(np.float32)
    return codes, scales, deq, v - deq


def unpack(packed, n, bits):
    bitsarr = np.unpackbits(packed, bitorder="little")[: n * bits].reshape(n, bits)
    return (bitsarr.astype(np.int64) << np.arange(bits)).sum(axis=1)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("n,block", [(0, 64), (1, 64), (7, 4), (1000, 64), (4097, 256), (333, 10)])
def test_lowbit_matches_numpy(bits, n, block):
    rng = np.random.default_rng(bits * 1000 + n)
    x = rng.standard_normal(n).astype(np.float32)
    err = (rng.standard_normal(n) * 0.1).astype(np.float32)
    if n > 20:
        x[5:5 + min(block, 8)] = 0.0
        x[-1] = 1e-40  # denormal
    packed, scales, residual = ops.quantize_lowbit(x, bits, block, error=err)
    codes, s_ref, deq, r_ref = np_quantize_lowbit(x, bits, block, err)
    assert packed.size == (n * bits + 7) // 8
    assert np.array_equal(unpack(packed, n, bits), codes), "codes differ"
    assert np.array_equal(scales, s_ref)
    assert np.array_equal(ops.dequantize_lowbit(packed, scales, n, bits, block), deq)
    assert np.array_equal(residual, r_ref)
    # Error within half a level (the scale is the spacing between codes / 2).
    if n:
        assert np.all(np.abs(residual) <= np.repeat(scales, block)[:n] * 1.0001 + 1e-30)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_lowbit_vector_loops_match_the_portable_ones(bits):
    """The AVX2 low-bit loops (blocks that are multiples of 8) against the
    portable ones and numpy: NaN, +-inf, -0, subnormals, an all-zero block,
    a block whose codes sit on rounding ties, and a tail shorter than 8."""
    rng = np.random.default_rng(bits)
    n, block = 64 * 40 + 5, 64
    x = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3, n)).astype(np.float32)
    x[:8] = [np.nan, np.inf, -np.inf, -0.0, 2.0**-149, -(2.0**-140), 1e30, -1e30]
    x[64:128] = 0.0
    err = (rng.standard_normal(n) * 0.01).astype(np.float32)
    # 2 bits: s = 1, so (v / s + 3) / 2 lands on 2.5, 0.5 and 1.5: ties.
    x[128:192], err[128:192] = np.tile(np.float32([2.0, -2.0, 0.0, 3.0]), 16), 0.0
    detected = _C.kernels.detected_simd_level()
    fast = ops.quantize_lowbit(x, bits, block, error=err)
    fast_back = ops.dequantize_lowbit(fast[0], fast[1], n, bits, block)
    try:
        ops.set_simd_level("scalar")
        slow = ops.quantize_lowbit(x, bits, block, error=err)
        slow_back = ops.dequantize_lowbit(slow[0], slow[1], n, bits, block)
    finally:
        ops.set_simd_level(detected)
    for a, b in zip(fast + (fast_back,), slow + (slow_back,)):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))
    finite = np.isfinite(x)
    codes, s_ref, deq, _ = np_quantize_lowbit(np.where(finite, x, 0), bits, block, err)
    ok = np.repeat([np.isfinite(x[i:i + block]).all() for i in range(0, n, block)], block)[:n]
    assert np.array_equal(unpack(fast[0], n, bits)[ok], codes[ok])
    assert np.array_equal(fast_back[ok], deq[ok])


def test_error_feedback_drives_mean_error_down():
    """Error feedback: the running sum of what was sent tracks the running sum
    of the true gradients (residual stays bounded instead of accumulating)."""
    rng = np.random.default_rng(5)
    err = np.zeros(512, np.float32)
    sent = np.zeros(512, np.float64)
    true = np.zeros(512, np.float64)
    for _ in range(50):
        g = rng.standard_normal(512).astype(np.float32)
        p, s, err = ops.quantize_lowbit(g, 1, 64, error=err)
        sent += ops.dequantize_lowbit(p, s, 512, 1, 64)
        true += g
    assert np.max(np.abs(sent - true - 0)) <= np.max(np.abs(err)) + 1e-3
    assert np.allclose(sent + err, true, atol=1e-3)


def test_lowbit_torch_roundtrip():
    torch = pytest.importorskip("torch")
    x = torch.randn(300)
    p, s, r = ops.quantize_lowbit(x, 4, 32)
    assert isinstance(p, torch.Tensor) and p.dtype == torch.uint8
    d = ops.dequantize_lowbit(p, s, 300, 4, 32)
    assert torch.allclose(d + r, x, atol=1e-6)


def test_lowbit_bad_input():
    x = np.zeros(16, np.float32)
    for bits in (0, 3, 16):
        with pytest.raises(ValueError, match="bits must be 1, 2, 4 or 8"):
            ops.quantize_lowbit(x, bits)
    with pytest.raises(ValueError, match="bits must be 1, 2, 4 or 8"):
        _C.kernels.check_lowbit_bits(5)  # the C++ check itself
    with pytest.raises(ValueError, match="floating"):
        ops.quantize_lowbit(np.zeros(4, np.int32), 2)
    with pytest.raises(ValueError, match="error has"):
        ops.quantize_lowbit(x, 2, error=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="scales"):
        ops.dequantize_lowbit(np.zeros(4, np.uint8), np.zeros(5, np.float32), 16, 2, 4)
