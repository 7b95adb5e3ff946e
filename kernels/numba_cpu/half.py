"""The CPU KV cache in f16, as llama.cpp keeps it: conversions for the kernels that write and read it.

In llama.cpp mode the cache's keys and values are f16 values (ggml's default cache type), so they are
stored as f16: NumPy float16 arrays, half the bytes of float32 -- half the memory of a context (a KV
pool of `-c 8192` for 16 slots, a 7B model's 32k context: 4.3 GB instead of 8.6) and half the bytes a
decode token's attention streams from memory at a long context. Numba has no float16 type, so the
kernels see the arrays as uint16 (`.view(np.uint16)`) and convert here: `kv_put` rounds a float32 to
f16 bits on the way in, `kv_value` widens bits to float32 on the way out (exact). A float32 cache (the
exact "f32" mode, callers' own arrays) goes through the same two functions unchanged: they dispatch on
the array's element type when the kernel compiles.

With F16C (every x86-64 since 2013) the conversions are one instruction each (`vcvtps2ph`/`vcvtph2ps`,
which LLVM vectorizes); elsewhere they are integer operations with the same results, round to nearest
even, subnormals, overflow to infinity and NaNs included (tests/test_kv_half.py checks both against
NumPy's astype for every f16 value and the float32 values around each rounding boundary).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import errors
from numba.extending import intrinsic, overload

from .activations import to_f16
from .int_intrinsics import HOST_F16C
from .rows_common import as_f32, f16_bits_to_f32

_I16 = ir.IntType(16)


def _one_conversion(name: str, arg, res, emit):
    """An intrinsic `name`(x: arg) -> res whose code is `emit(builder, x)` (a cast or two)."""
    def typer(typingctx, x):
        if x != arg:
            raise errors.TypingError(f"{name} takes a {arg}, not {x}")
        return res(arg), lambda context, builder, sig, args: emit(builder, args[0])

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


# float32 -> the bits of the nearest f16 (`vcvtps2ph`), and f16 bits -> float32 (`vcvtph2ps`): only where
# HOST_F16C (elsewhere LLVM would call a runtime helper the JIT may not link; see int_intrinsics.f16_round)
_f16c_bits = _one_conversion("_f16c_bits", types.float32, types.uint16,
                             lambda b, x: b.bitcast(b.fptrunc(x, ir.HalfType()), _I16))
_f16c_value = _one_conversion("_f16c_value", types.uint16, types.float32,
                              lambda b, x: b.fpext(b.bitcast(x, ir.HalfType()), ir.FloatType()))
_bits_of = _one_conversion("_bits_of", types.float32, types.uint32, lambda b, x: b.bitcast(x, ir.IntType(32)))


@njit(inline="always")
def f16_bits_by_hand(v):
    """float32 -> the bits of the nearest f16 with integer operations, as vcvtps2ph rounds: to nearest
    even; from 65520 up to infinity; below 2**-14 to a subnormal; a NaN stays a quiet NaN with the top
    of its payload."""
    b = _bits_of(np.float32(v))
    sign = (b >> np.uint32(16)) & np.uint32(0x8000)
    a = b & np.uint32(0x7FFFFFFF)
    if a >= np.uint32(0x7F800000):  # inf, NaN
        h = np.uint32(0x7C00) | ((np.uint32(0x200) | ((a >> np.uint32(13)) & np.uint32(0x3FF)))
                                 if a > np.uint32(0x7F800000) else np.uint32(0))
    elif a >= np.uint32(0x477FF000):  # 65520 and up: past the largest f16 (65504) by half a step or more
        h = np.uint32(0x7C00)
    elif a < np.uint32(0x38800000):  # below 2**-14: a multiple of 2**-24 (rint: to nearest even)
        h = np.uint32(np.rint(as_f32(a) * np.float32(16777216.0)))
    else:  # rebias the exponent, round the mantissa from 23 to 10 bits (ties to even)
        h = (a - np.uint32(0x38000000) + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
    return np.uint16(sign | h)


f16_bits = _f16c_bits if HOST_F16C else f16_bits_by_hand
f16_value = _f16c_value if HOST_F16C else f16_bits_to_f32  # (rows_common's, for F16/BF16 weights too)


def kv_value(x):  # pragma: no cover - overloaded below
    """A cache element as float32: widened from f16 bits, or a float32 as it is."""
    raise NotImplementedError


@overload(kv_value)
def _kv_value(x):
    if x == types.uint16:
        return lambda x: f16_value(x)
    if x == types.float32:
        return lambda x: x
    raise errors.TypingError(f"a KV cache holds f16 bits (uint16) or float32, not {x}")


def kv_put(cache, row, h, d, v, half):  # pragma: no cover - overloaded below
    """cache[row, h, d] = v as the cache stores it: f16 bits into an f16 cache; into a float32 cache
    f16-rounded (`half`: llama.cpp mode's values in a float32 array) or exact."""
    raise NotImplementedError


@overload(kv_put)
def _kv_put(cache, row, h, d, v, half):
    if cache.dtype == types.uint16:
        def put_bits(cache, row, h, d, v, half):
            cache[row, h, d] = f16_bits(np.float32(v))
        return put_bits
    if cache.dtype == types.float32:
        def put_float(cache, row, h, d, v, half):
            cache[row, h, d] = to_f16(v) if half else v
        return put_float
    raise errors.TypingError(f"a KV cache holds f16 bits (uint16) or float32, not {cache.dtype}")


def kernel_view(a) -> np.ndarray:
    """A cache array as the kernels take it: an f16 one as its bits (uint16), a float32 one as it is,
    anything else as contiguous float32 (a caller's own keys or values)."""
    if a.dtype == np.float16:
        return np.ascontiguousarray(a).view(np.uint16)
    return np.ascontiguousarray(a, dtype=np.float32)


def writable_view(cache) -> np.ndarray:
    """A cache array as the kernel that writes it takes it, the same memory: an f16 one as its bits."""
    return cache.view(np.uint16) if cache.dtype == np.float16 else cache
