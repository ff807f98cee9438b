"""The reduce kernels against numpy, and the SIMD paths against the scalar one."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from ringflow import _C, ops

K = _C.kernels
DTYPE = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3, "int8": 4, "uint8": 5, "int32": 6, "int64": 7, "bool": 8}
OPS = ["sum", "product", "min", "max", "avg", "band", "bor", "bxor"]
OPC = {name: i for i, name in enumerate(OPS)}
NP_DTYPES = ["float32", "float64", "float16", "int8", "uint8", "int32", "int64", "bool"]
FLOATS = {"float32", "float64", "float16", "bfloat16"}
LENGTHS = [0, 1, 7, 64, 1003, 20011]  # 20011 elements spans several 8 KiB chunks


def valid(dtype: str, op: str) -> bool:
    if op in ("band", "bor", "bxor"):
        return dtype not in FLOATS
    if op == "avg":
        return dtype in FLOATS
    return True


def np_op(dtype: str, op: str):
    if dtype == "bool":
        return {"sum": np.logical_or, "max": np.logical_or, "bor": np.logical_or,
                "product": np.logical_and, "min": np.logical_and, "band": np.logical_and,
                "bxor": np.logical_xor}[op]
    return {"sum": np.add, "avg": np.add, "product": np.multiply, "min": np.minimum,
            "max": np.maximum, "band": np.bitwise_and, "bor": np.bitwise_or, "bxor": np.bitwise_xor}[op]


def make(dtype: str, n: int, rng, offset: int = 0) -> np.ndarray:
    """n values with NaN, +-inf, -0 and subnormals sprinkled in for floats; a
    view starting `offset` elements into a bigger array (unaligned start)."""
    if dtype == "bool":
        base = rng.integers(0, 2, n + offset).astype(np.bool_)
    elif dtype in ("float32", "float64", "float16"):
        t = np.dtype(dtype)
        base = (rng.standard_normal(n + offset) * 3).astype(t)
        if n + offset >= 16:
            tiny = np.finfo(t).smallest_subnormal
            specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, tiny, -tiny * 3, np.finfo(t).max], dtype=t)
            idx = rng.choice(n + offset, size=min(len(specials) * 2, n + offset), replace=False)
            base[idx] = np.resize(specials, len(idx))
    else:
        info = np.iinfo(dtype)
        base = rng.integers(info.min, info.max, n + offset, dtype=dtype, endpoint=True)
    return base[offset:]


def reference(arrays, dtype: str, op: str) -> np.ndarray:
    """Left fold; half types accumulate in float32 and round once."""
    f = np_op(dtype, op)
    acc = arrays[0].astype(np.float32) if dtype == "float16" else arrays[0].copy()
    with np.errstate(all="ignore"):
        for x in arrays[1:]:
            acc = f(acc, x.astype(np.float32) if dtype == "float16" else x)
        return acc.astype(arrays[0].dtype)


def assert_same_bits(got: np.ndarray, want: np.ndarray, signed_zero: bool = True) -> None:
    """Bit-identical, except that any NaN matches any NaN (and, when
    signed_zero is False, -0 matches +0: which zero min/max return on a tie is
    the reference's choice, keep the first, not numpy's)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype.kind == "f":
        if not signed_zero:
            with np.errstate(all="ignore"):
                got, want = got + 0, want + 0  # -0 + 0 == +0
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan), "NaN positions differ"
        u = {2: np.uint16, 4: np.uint32, 8: np.uint64}[got.itemsize]
        bad = np.nonzero(got.view(u)[~nan] != want.view(u)[~nan])[0]
        assert bad.size == 0, f"{bad.size} elements differ, first: got {got[~nan][bad[:3]]} want {want[~nan][bad[:3]]}"
    else:
        assert np.array_equal(got, want)


def cases():
    for dt in NP_DTYPES:
        for op in OPS:
            if valid(dt, op):
                yield dt, op


@pytest.mark.parametrize("dtype,op", list(cases()))
@pytest.mark.parametrize("k", [2, 3, 5])
def test_reduce_matches_numpy(dtype, op, k):
    # crc32, not hash(): Python salts str hashes per process, so a failure
    # must replay with the same data.
    rng = np.random.default_rng(zlib.crc32(f"{dtype}/{op}/{k}".encode()))
    for n in LENGTHS:
        for offset in (0, 1):
            xs = [make(dtype, n, rng, offset) for _ in range(k)]
            got = ops.reduce(xs, op)
            assert_same_bits(got, reference(xs, dtype, op), signed_zero=op not in ("min", "max"))


@pytest.mark.parametrize("dtype,op", list(cases()))
def test_simd_equals_scalar(dtype, op):
    """The dispatched path (SIMD where the CPU has it) against reduce_scalar,
    bit for bit, 2-way and N-way, in place too."""
    rng = np.random.default_rng(7)
    code, opc = DTYPE[dtype], OPC[op]
    for n in (1, 31, 4099):
        xs = [make(dtype, n, rng, 1) for _ in range(4)]
        a, b = xs[0], xs[1]
        fast, slow = np.empty_like(a), np.empty_like(a)
        K.reduce(fast.ctypes.data, a.ctypes.data, b.ctypes.data, n, code, opc)
        K.reduce_scalar(slow.ctypes.data, a.ctypes.data, b.ctypes.data, n, code, opc)
        assert_same_bits(fast, slow)
        K.reduce_n(fast.ctypes.data, [x.ctypes.data for x in xs], n, code, opc)
        K.reduce_n_scalar(slow.ctypes.data, [x.ctypes.data for x in xs], n, code, opc)
        assert_same_bits(fast, slow)
        inplace = a.copy()
        ops.reduce([inplace, b], op, out=inplace)
        assert_same_bits(inplace, reference([a, b], dtype, op), signed_zero=op not in ("min", "max"))


def test_every_float16_pair_sum_and_max():
    """All 65536 half values against one another's neighbours: rounding,
    subnormals, infinities and NaN through the F16C path."""
    a = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    b = np.roll(a, 12345)
    for op in ("sum", "max", "product"):
        assert_same_bits(ops.reduce([a, b], op), reference([a, b], "float16", op))


@pytest.mark.parametrize("op", ["sum", "product", "min", "max", "avg"])
def test_bfloat16_matches_float32_rounded(op):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(3)
    for n in (0, 1, 7, 5003):
        xs = [torch.randn(n, generator=g).mul(100).to(torch.bfloat16) for _ in range(3)]
        if n > 10:
            xs[1][3] = float("nan")
            xs[2][5] = float("inf")
            xs[0][6] = 1e-39  # subnormal in bf16
        got = ops.reduce(xs, op)
        f = {"sum": torch.add, "avg": torch.add, "product": torch.mul, "min": torch.minimum, "max": torch.maximum}[op]
        acc = xs[0].float()
        for x in xs[1:]:
            acc = f(acc, x.float())
        want = acc.to(torch.bfloat16)
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        m = ~torch.isnan(want)
        assert torch.equal(got[m].view(torch.int16), want[m].view(torch.int16))
        slow = torch.empty_like(xs[0])
        K.reduce_n_scalar(slow.data_ptr(), [x.data_ptr() for x in xs], n, 3, OPC[op])
        assert torch.equal(got.view(torch.int16)[m], slow.view(torch.int16)[m])


def test_threaded_sum_equals_one_thread():
    """The caller's `threads` splits the range: every split point (odd
    lengths, fewer elements than threads) gives the one-thread bits."""
    rng = np.random.default_rng(11)
    for n, threads in [((4 << 20) + 3, 3), (1000, 4), (65, 2), (5, 8)]:
        xs = [rng.integers(-(2**31), 2**31 - 1, n, dtype=np.int32) for _ in range(3)]
        got = ops.reduce(xs, "sum", threads=threads)
        want = (xs[0].astype(np.int64) + xs[1] + xs[2]).astype(np.int32)  # wraps like the kernel
        assert np.array_equal(got, want), (n, threads)
        f = [x.view(np.float32) for x in xs]  # float32 bit patterns incl. NaN/inf
        assert_same_bits(ops.reduce(f, "max", threads=threads), reference(f, "float32", "max"),
                         signed_zero=False)
        g = [rng.standard_normal(n).astype(np.float32) for _ in range(4)]
        assert_same_bits(ops.reduce(g, "sum", threads=threads), ops.reduce(g, "sum"))
    with pytest.raises(ValueError, match="threads must be a positive int"):
        ops.reduce(xs, "sum", threads=0)


def test_simd_level_can_be_lowered():
    detected = K.detected_simd_level()
    assert ops.simd_level() in ("scalar", "avx2", "avx512")
    try:
        assert ops.set_simd_level("scalar") == "scalar"
        a = np.arange(100, dtype=np.float32)
        assert np.array_equal(ops.reduce([a, a]), a * 2)
    finally:
        assert ops.set_simd_level(detected) == detected


def test_bad_input_is_rejected():
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="dtype"):
        ops.reduce([a, np.zeros(4, np.int32)])
    with pytest.raises(ValueError, match="elements"):
        ops.reduce([a, np.zeros(5, np.float32)])
    with pytest.raises(ValueError, match="band"):
        ops.reduce([a, a], "band")
    with pytest.raises(ValueError, match="contiguous"):
        ops.reduce([np.zeros(8, np.float32)[::2], a])
    with pytest.raises(ValueError, match="avg"):
        ops.reduce([np.zeros(4, np.int32)] * 2, "avg")
    with pytest.raises(ValueError, match="SIMD level"):
        ops.set_simd_level("sse9")


def test_divide():
    a = np.array([1, 2, 3, np.nan, np.inf], np.float32)
    K.divide(a.ctypes.data, a.size, 0, 4.0)
    assert_same_bits(a, np.array([0.25, 0.5, 0.75, np.nan, np.inf], np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("divisor", [3.0, 7.0, 0.1, 1e-30, 0.0, -2.5])
def test_divide_vector_paths_match_elementwise_division(dtype, divisor):
    """Every SIMD level divides (never multiplies by 1/d), so each element is
    bit-identical to numpy's x / dtype(d), in the vector body and the tail."""
    from ringflow._dtypes import numpy_dtype_code

    code = numpy_dtype_code(dtype)
    rng = np.random.default_rng(int(abs(divisor) * 10) + code)
    x = (rng.standard_normal(4099) * 10.0 ** rng.integers(-30, 30, 4099)).astype(dtype)
    x[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, np.finfo(dtype).tiny]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        want = x / dtype(divisor)
    detected = K.detected_simd_level()
    try:
        for level in ("scalar", "avx2", "avx512"):
            if ops.set_simd_level(level) != level:
                continue  # this CPU lacks it
            got = x.copy()
            K.divide(got.ctypes.data, got.size, code, divisor)
            assert_same_bits(got, want)
    finally:
        ops.set_simd_level(detected)
