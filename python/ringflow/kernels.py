"""Array-level entry points to ringflow's kernels.

Each function takes numpy arrays or torch tensors (CPU; CUDA tensors where
this build has CUDA kernels) and checks shapes and dtypes here, so the C++
side only ever sees validated raw addresses.  torch is optional: it is
imported only when a tensor is passed in.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import _C
from ._dtypes import DTYPE_NAMES, numpy_dtype_code, reduce_op_code, torch_dtype_code

_K = _C.kernels

__all__ = [
    "reduce",
    "simd_level",
    "set_simd_level",
    "quantize_fixed",
    "dequantize_fixed",
    "fixed_exponents",
    "quantize_lowbit",
    "dequantize_lowbit",
    "lut_weighted_sum",
    "lut_prepare",
    "lut_gemv",
    "LutMatrix",
]


def simd_level() -> str:
    """The instruction set the CPU kernels use: 'avx512', 'avx2' or 'scalar'."""
    return _K.simd_level()


def set_simd_level(level: str) -> str:
    """Lower (or restore) the SIMD level; returns the level now in force."""
    return _K.set_simd_level(level)


# --- views of arrays and tensors -------------------------------------------------


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


class _View:
    """Address, element count, dtype code and device of a contiguous array."""

    __slots__ = ("obj", "ptr", "n", "code", "cuda", "shape")

    def __init__(self, x, what: str):
        if _is_torch(x):
            if not x.is_contiguous():
                raise ValueError(f"{what} must be a contiguous tensor")
            self.code = torch_dtype_code(x.dtype)
            self.ptr = x.data_ptr()
            self.n = x.numel()
            self.cuda = x.device.type == "cuda"
            if x.device.type not in ("cpu", "cuda"):
                raise ValueError(f"{what} is on device {x.device}; ringflow kernels take cpu or cuda")
        elif isinstance(x, np.ndarray):
            if not x.flags.c_contiguous:
                raise ValueError(f"{what} must be a C-contiguous array")
            self.code = numpy_dtype_code(x.dtype)
            self.ptr = x.ctypes.data
            self.n = x.size
            self.cuda = False
        else:
            raise ValueError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")
        self.obj = x
        self.shape = tuple(x.shape)

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.code]


def _empty_like(x):
    if _is_torch(x):
        import torch

        return torch.empty_like(x, memory_format=torch.contiguous_format)
    return np.empty_like(x, order="C")


def _require_cuda_build(what: str) -> None:
    if not _C.build_info()["cuda"]:
        raise ValueError(f"{what} is a CUDA tensor but this ringflow build has no CUDA kernels")


# --- reduce -----------------------------------------------------------------------


def reduce(inputs: Sequence, op="sum", out=None, threads: int = 1):
    """out[i] = op(inputs[0][i], ..., inputs[k-1][i]), folded left to right.

    All inputs must share dtype, element count and device.  `out` may be
    inputs[0] (in place).  Avg reduces as sum (divide afterwards), as the
    collectives do.  `threads` > 1 splits a host reduction over that many
    threads (this one included); it pays only far past the caches.
    Returns `out`.
    """
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if not isinstance(inputs, (list, tuple)) or len(inputs) == 0:
        raise ValueError("reduce needs a non-empty list of arrays")
    views = [_View(x, f"inputs[{i}]") for i, x in enumerate(inputs)]
    first = views[0]
    for i, v in enumerate(views[1:], 1):
        if v.code != first.code:
            raise ValueError(f"inputs[{i}] has dtype {v.dtype_name}, inputs[0] has {first.dtype_name}")
        if v.n != first.n:
            raise ValueError(f"inputs[{i}] has {v.n} elements, inputs[0] has {first.n}")
        if v.cuda != first.cuda:
            raise ValueError(f"inputs[{i}] is on a different device than inputs[0]")
    if out is None:
        out = _empty_like(inputs[0])
    o = _View(out, "out")
    if o.code != first.code or o.n != first.n or o.cuda != first.cuda:
        raise ValueError(f"out must match the inputs: dtype {first.dtype_name}, {first.n} elements, same device")
    opc = reduce_op_code(op)
    if first.cuda:
        _require_cuda_build("reduce input")
        _K.cuda_reduce_n(o.ptr, [v.ptr for v in views], first.n, first.code, opc)
    elif len(views) == 2 and threads == 1:
        _K.reduce(o.ptr, views[0].ptr, views[1].ptr, first.n, first.code, opc)
    else:
        _K.reduce_n(o.ptr, [v.ptr for v in views], first.n, first.code, opc, threads)
    return out


# --- float32 host arrays for the quantisation and LUT kernels ---------------------


def _host_f32(x, what: str) -> tuple[np.ndarray, bool]:
    """(contiguous float32 numpy array, came-from-torch).  Tensors are viewed,
    not copied, when already float32, contiguous and on the CPU."""
    if _is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{what} is on {x.device}; this kernel runs on the CPU")
        import torch

        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise ValueError(f"{what} must be floating point, got {x.dtype}")
        return np.ascontiguousarray(x.detach().to(torch.float32).numpy()), True
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise ValueError(f"{what} must be floating point, got {x.dtype}")
        return np.ascontiguousarray(x, dtype=np.float32), False
    raise ValueError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")


def _host(x, dtype, what: str) -> np.ndarray:
    """A contiguous numpy array of exactly `dtype` (no silent casts)."""
    if _is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{what} is on {x.device}; this kernel runs on the CPU")
        x = x.detach().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype != np.dtype(dtype):
        raise ValueError(f"{what} must have dtype {np.dtype(dtype)}, got {x.dtype}")
    return np.ascontiguousarray(x)


def _back(arr: np.ndarray, as_torch: bool):
    if as_torch:
        import torch

        return torch.from_numpy(arr)
    return arr


def _check_bits(bits) -> int:
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8, got {bits!r}")
    return int(bits)


def _check_block(block) -> int:
    if not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    return int(block)


# --- fixed point (SwitchML-style packet aggregation) ------------------------------


def fixed_exponents(x, block: int = 256) -> np.ndarray:
    """Per block of `block` values, the smallest e with 2**e >= max|x|
    (int32; an all-zero block gets _C.kernels.FIXED_ZERO_EXPONENT)."""
    a, _ = _host_f32(x, "x")
    a = a.reshape(-1)
    block = _check_block(block)
    exps = np.empty(-(-a.size // block), np.int32)
    _K.fixed_block_exponents(exps.ctypes.data, a.ctypes.data, a.size, block)
    return exps


def quantize_fixed(x, workers: int, exponents=None, block: int = 256):
    """float -> int32 with scale INT32_MAX / (workers * 2**e) per block, so the
    sum of `workers` such arrays cannot overflow.  `exponents` (per block)
    must be agreed by all workers (the max of each one's fixed_exponents);
    by default this array's own.  Returns (q, exponents)."""
    a, as_torch = _host_f32(x, "x")
    shape, a = a.shape, a.reshape(-1)
    block = _check_block(block)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    exps = fixed_exponents(a, block) if exponents is None else _host(exponents, np.int32, "exponents").reshape(-1)
    if exps.size != -(-a.size // block):
        raise ValueError(f"exponents has {exps.size} entries, need one per block: {-(-a.size // block)}")
    q = np.empty(a.size, np.int32)
    _K.quantize_fixed_blocks(q.ctypes.data, a.ctypes.data, a.size, block, exps.ctypes.data, int(workers))
    return _back(q.reshape(shape), as_torch), exps


def dequantize_fixed(q, workers: int, exponents, block: int = 256):
    """int32 (one worker's, or the sum of `workers`) -> float32."""
    as_torch = _is_torch(q)
    qa = _host(q, np.int32, "q")
    shape, qa = qa.shape, qa.reshape(-1)
    block = _check_block(block)
    exps = _host(exponents, np.int32, "exponents").reshape(-1)
    if exps.size != -(-qa.size // block):
        raise ValueError(f"exponents has {exps.size} entries, need one per block: {-(-qa.size // block)}")
    out = np.empty(qa.size, np.float32)
    _K.dequantize_fixed_blocks(out.ctypes.data, qa.ctypes.data, qa.size, block, exps.ctypes.data, int(workers))
    return _back(out.reshape(shape), as_torch)


# --- low-bit quantisation with error feedback -------------------------------------


def quantize_lowbit(x, bits: int, block: int = 64, error=None):
    """Quantise a 1-D (or flattened) float array to `bits`-bit codes.

    Returns (packed uint8 codes, float32 scales per block, float32 residual).
    Code c of a block with scale s means s * (2c - (2**bits - 1)).  Pass the
    residual back as `error` next step (error feedback)."""
    bits, block = _check_bits(bits), _check_block(block)
    a, as_torch = _host_f32(x, "x")
    a = a.reshape(-1)
    err = None
    if error is not None:
        err, _ = _host_f32(error, "error")
        err = err.reshape(-1)
        if err.size != a.size:
            raise ValueError(f"error has {err.size} elements, x has {a.size}")
    packed = np.empty(_K.lowbit_packed_bytes(a.size, bits), np.uint8)
    scales = np.empty(-(-a.size // block), np.float32)
    residual = np.empty(a.size, np.float32)
    _K.quantize_lowbit(packed.ctypes.data, scales.ctypes.data, residual.ctypes.data, a.ctypes.data,
                       0 if err is None else err.ctypes.data, a.size, bits, block)
    return _back(packed, as_torch), _back(scales, as_torch), _back(residual, as_torch)


def dequantize_lowbit(packed, scales, n: int, bits: int, block: int = 64):
    """The float32 values of n packed codes."""
    bits, block = _check_bits(bits), _check_block(block)
    as_torch = _is_torch(packed)
    p = _host(packed, np.uint8, "packed").reshape(-1)
    s = _host(scales, np.float32, "scales").reshape(-1)
    if p.size < _K.lowbit_packed_bytes(n, bits):
        raise ValueError(f"packed has {p.size} bytes, {n} {bits}-bit codes need {_K.lowbit_packed_bytes(n, bits)}")
    if s.size != -(-n // block):
        raise ValueError(f"scales has {s.size} entries, need one per block of {block}: {-(-n // block)}")
    out = np.empty(n, np.float32)
    _K.dequantize_lowbit(out.ctypes.data, p.ctypes.data, s.ctypes.data, n, bits, block)
    return _back(out, as_torch)


# --- LUT-based distributed arithmetic ---------------------------------------------


def lut_weighted_sum(codes, coeffs, scales, bits: int, m: int | None = None, block: int = 64):
    """y = sum_n coeffs[n] * dequantize_lowbit(codes[n], scales[n]).

    codes: [N, packed bytes] uint8 (rows from quantize_lowbit); scales: [N,
    blocks] float32; coeffs: [N].  m is the element count (default: all the
    codes a row holds).  CUDA tensors for codes and scales run the GPU kernel
    (coeffs may then be on the host); the result is on their device."""
    bits, block = _check_bits(bits), _check_block(block)
    if _is_torch(codes) and codes.device.type == "cuda":
        return _cuda_lut_weighted_sum(codes, coeffs, scales, bits, m, block)
    as_torch = _is_torch(codes)
    c = _host(codes, np.uint8, "codes")
    if c.ndim != 2:
        raise ValueError(f"codes must be 2-D [workers, packed bytes], got shape {c.shape}")
    workers = c.shape[0]
    if m is None:
        m = c.shape[1] * 8 // bits
    if c.shape[1] != _K.lowbit_packed_bytes(m, bits):
        raise ValueError(f"codes rows have {c.shape[1]} bytes, {m} {bits}-bit codes need {_K.lowbit_packed_bytes(m, bits)}")
    w, _ = _host_f32(coeffs, "coeffs")
    w = w.reshape(-1)
    if w.size != workers:
        raise ValueError(f"coeffs has {w.size} entries, codes has {workers} workers")
    s = _host(scales, np.float32, "scales")
    if s.shape != (workers, -(-m // block)):
        raise ValueError(f"scales must have shape {(workers, -(-m // block))}, got {s.shape}")
    y = np.empty(m, np.float32)
    _K.lut_weighted_sum(y.ctypes.data, c.ctypes.data, s.ctypes.data, w.ctypes.data, workers, m, bits, block)
    return _back(y, as_torch)


def _cuda_lut_weighted_sum(codes, coeffs, scales, bits: int, m, block: int):
    import torch

    _require_cuda_build("codes")
    dev = codes.device
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must have dtype torch.uint8, got {codes.dtype}")
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D [workers, packed bytes], got shape {tuple(codes.shape)}")
    workers = codes.shape[0]
    if m is None:
        m = codes.shape[1] * 8 // bits
    if codes.shape[1] != _K.lowbit_packed_bytes(m, bits):
        raise ValueError(f"codes rows have {codes.shape[1]} bytes, {m} {bits}-bit codes need "
                         f"{_K.lowbit_packed_bytes(m, bits)}")
    if not _is_torch(scales) or scales.device != dev:
        raise ValueError(f"scales must be a tensor on {dev}, like codes")
    if scales.dtype != torch.float32:
        raise ValueError(f"scales must have dtype torch.float32, got {scales.dtype}")
    if tuple(scales.shape) != (workers, -(-m // block)):
        raise ValueError(f"scales must have shape {(workers, -(-m // block))}, got {tuple(scales.shape)}")
    if _is_torch(coeffs):
        if not coeffs.dtype.is_floating_point:
            raise ValueError(f"coeffs must be floating point, got {coeffs.dtype}")
        w = coeffs.detach().reshape(-1).to(device=dev, dtype=torch.float32)
    else:
        w = torch.from_numpy(_host_f32(coeffs, "coeffs")[0].reshape(-1)).to(dev)
    if w.numel() != workers:
        raise ValueError(f"coeffs has {w.numel()} entries, codes has {workers} workers")
    c, s, w = codes.contiguous(), scales.contiguous(), w.contiguous()
    y = torch.empty(m, dtype=torch.float32, device=dev)
    # The kernel runs on the current device's default stream and waits for it.
    with torch.cuda.device(dev):
        _K.cuda_lut_weighted_sum(y.data_ptr(), c.data_ptr(), s.data_ptr(), w.data_ptr(), workers, m, bits, block)
    return y


class LutMatrix:
    """A low-bit matrix prepared once for lut_gemv (bit-plane index tiles)."""

    def __init__(self, prepared, packed, scales):
        self._w = prepared
        self._packed, self._scales = packed, scales  # kept for the scalar reference
        self._cuda = {}

    rows = property(lambda self: self._w.rows)
    cols = property(lambda self: self._w.cols)
    bits = property(lambda self: self._w.bits)
    block = property(lambda self: self._w.block)
    nbytes = property(lambda self: self._w.nbytes)
    int8_tables = property(lambda self: self._w.int8_tables)

    def _device_buffers(self, device):
        key = str(device)
        if key not in self._cuda:
            import torch

            self._cuda[key] = (torch.from_numpy(self._w.planes).to(device),
                               torch.from_numpy(self._w.tile_scales).to(device))
        return self._cuda[key]


def lut_prepare(packed_w, scales, shape, bits: int, block: int = 64, tables: str = "float") -> LutMatrix:
    """Rearrange W [rows, cols] (each row quantize_lowbit'ed with `block`, a
    multiple of 4; packed_w [rows, packed bytes], scales [rows, blocks]).

    tables="float" keeps the look-up tables exact (result within float32
    rounding of dequantize(W) @ x); tables="int8" quantises each block's tables
    to int8 (T-MAC style byte shuffles: faster, error ~0.5% of |W| @ |x|)."""
    bits, block = _check_bits(bits), _check_block(block)
    if tables not in ("float", "int8"):
        raise ValueError(f"tables must be 'float' or 'int8', got {tables!r}")
    rows, cols = shape
    p = _host(packed_w, np.uint8, "packed_w")
    s = _host(scales, np.float32, "scales")
    if p.shape != (rows, _K.lowbit_packed_bytes(cols, bits)):
        raise ValueError(f"packed_w must have shape {(rows, _K.lowbit_packed_bytes(cols, bits))}, got {p.shape}")
    if s.shape != (rows, -(-cols // block)):
        raise ValueError(f"scales must have shape {(rows, -(-cols // block))}, got {s.shape}")
    return LutMatrix(_K.lut_prepare(p.ctypes.data, s.ctypes.data, rows, cols, bits, block, tables == "int8"), p, s)


def lut_gemv(packed_w, x, scales=None, bits: int | None = None, shape=None, block: int = 64):
    """y = dequantize(W) @ x by table look-ups (T-MAC style).

    packed_w is a LutMatrix (from lut_prepare: the fast path), or the packed
    codes, in which case scales, bits and shape are needed and W is prepared
    on the fly.  x: [cols] float (a CUDA tensor runs the GPU kernel)."""
    w = packed_w if isinstance(packed_w, LutMatrix) else lut_prepare(packed_w, scales, shape, bits, block)
    if _is_torch(x) and x.device.type == "cuda":
        _require_cuda_build("x")
        import torch

        if w.int8_tables:
            raise ValueError("the CUDA lut_gemv takes float tables: prepare W with tables='float'")
        if x.dtype != torch.float32 or x.numel() != w.cols:
            raise ValueError(f"x must be float32 with {w.cols} elements, got {x.dtype} with {x.numel()}")
        xc = x.contiguous()
        planes, tscales = w._device_buffers(x.device)
        y = torch.empty(w.rows, dtype=torch.float32, device=x.device)
        _K.cuda_lut_gemv(y.data_ptr(), planes.data_ptr(), tscales.data_ptr(), xc.data_ptr(),
                         w.rows, w.cols, w.bits, w.block)
        return y
    xa, as_torch = _host_f32(x, "x")
    xa = xa.reshape(-1)
    if xa.size != w.cols:
        raise ValueError(f"x has {xa.size} elements, W has {w.cols} columns")
    y = np.empty(w.rows, np.float32)
    _K.lut_gemv(y.ctypes.data, w._w, xa.ctypes.data)
    return _back(y, as_torch)
