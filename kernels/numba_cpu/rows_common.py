"""Shared pieces of the Numba row kernels: jit options, lookup tables and three small LLVM intrinsics.

How the row kernels are written (and why), so that LLVM turns them into SIMD code. Each rule came
from a measured 2-10x slowdown when broken; the generated code is fragile, so re-measure
(benchmarks/bench_products.py) after touching a kernel.

* A kernel walks a row block by block (contiguous slices per block: an index like `w[o + j]` with
  a run-time `o` carries numba's negative-index wraparound and turns vector loads into gathers)
  and, inside a block, runs loops of a constant 16 (or 8/32) trips with tiny bodies. LLVM fully
  unrolls those and the SLP vectorizer packs the 16 lanes into one 512-bit (or two 256-bit) op.
* Products accumulate into a small *stack* array (`stack_f32`, an `alloca` that LLVM promotes to
  vector registers): `acc[j] += (d*q_j + m) * x_j`, the dequantized weight computed in registers.
  No horizontal sum per block, one per row (`hsum32`). The promotion only happens when every
  access to the array uses constant indices after unrolling: a loop that is not unrolled, or
  a clever reduction tree, silently puts the accumulator back in memory (3-6x slower).
* The drivers are compiled with the SLP vectorizer on (`slp_compile_scope`; numba turns it off
  by default since numba#8852, miscompilations with old LLVMs: every kernel is checked against
  the NumPy reference in tests/test_kernels_products.py).
* The dot kernels are compiled *without* 'reassoc': with it, once the 16-lane loops are unrolled,
  the loop vectorizer vectorizes the *block* loop as a reduction with gathers (stride 18 bytes...),
  5-10x slower than scalar code. Without it the lanes are independent chains for SLP.
* Loop bodies stay tiny, intermediate per-lane values go through small stack arrays, and per-block
  scales are decoded once into stack arrays by branch-free loops: a loop too big to unroll gets
  vectorized by the loop vectorizer in 64-bit lanes (numba computes integers in int64).
* Per-lane table lookups (IQ4_NL/IQ4_XS/MXFP4 values) go through `lut16`, one vector permute.

f16 block scales are decoded through a 65536-entry float32 table (`F16_LUT`); f16/bf16 *weights*
(F16/BF16 tensors) are widened with integer ops plus a bit cast (`as_f32`), which vectorizes.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config, errors
from numba.extending import intrinsic

from quant import nonlinear as _nonlinear

# fast-math for the dot products: FMA contraction only (see the module doc for why not 'reassoc').
FM_DOT = {"contract", "nsz"}
# Row kernels are inlined at numba-IR level (inline="always") into the per-type row-range functions
# of drivers.py: a call per row would pass ~7 words per array argument and update the reference
# counts of each array view atomically, about as much work as a short row. Inlined code takes the
# *caller's* fastmath flags (drivers.py compiles the dot ranges with FM_DOT, the dequant ranges
# with none).
JIT_DOT = dict(fastmath=FM_DOT, error_model="numpy", boundscheck=False, nogil=True, inline="always")
# plain float loops left to the loop vectorizer (rows_float.tile_dot44): not inlined, own flags.
JIT_SUM = dict(fastmath={"reassoc", "contract", "nsz"}, error_model="numpy", boundscheck=False, nogil=True)
# dequantizers: no contraction, so values are bit-exact with the NumPy reference (d*q, then + m).
JIT_DEQ = dict(error_model="numpy", boundscheck=False, nogil=True, inline="always")

# --- lookup tables (frozen into the compiled code as constants)

F16_LUT = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

# the 16-entry codebooks of quant.nonlinear (int8 there), as float32 for `lut16`
KVALUES_IQ4NL = _nonlinear.KVALUES_IQ4NL.astype(np.float32)
KVALUES_MXFP4 = _nonlinear.KVALUES_MXFP4.astype(np.float32)


def _e8m0_half_table() -> np.ndarray:
    """ggml_e8m0_to_fp32_half for every byte: 2^(e-128) (e >= 2: bits (e-1) << 23; 0, 1 denormal)."""
    e = np.arange(256, dtype=np.uint32)
    bits = np.where(e >= 2, (e - 1) << 23, np.where(e == 0, 0x00200000, 0x00400000)).astype(np.uint32)
    return bits.view(np.float32).copy()


E8M0_HALF = _e8m0_half_table()

# Q5_0/Q5_1 high bits: HBIT16[8*byte + j] = 16.0 if bit j of byte is set (8 contiguous floats per
# qh byte: plain vector loads instead of per-lane variable shifts).
HBIT16 = (((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1) * 16).astype(np.float32).reshape(-1)


# --- intrinsics


def _host_avx512f() -> bool:
    """Whether numba compiles for a host CPU with AVX-512F (not when NUMBA_CPU_NAME/FEATURES
    ask for another target, e.g. portable caches)."""
    if config.CPU_NAME or config.CPU_FEATURES:
        return False
    try:
        import llvmlite.binding as ll

        return "+avx512f" in ll.get_host_cpu_features().flatten().split(",")
    except Exception:  # pragma: no cover - feature query unavailable
        return False


HOST_AVX512F = _host_avx512f()


def _prefetch(locality: int, doc: str):
    @intrinsic
    def prefetch(typingctx, arr, off):
        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            i8p = ir.PointerType(ir.IntType(8))
            ptr = builder.gep(builder.bitcast(ary.data, i8p), [args[1]])
            fnty = ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            i32 = lambda v: ir.Constant(ir.IntType(32), v)  # noqa: E731
            builder.call(fn, [ptr, i32(0), i32(locality), i32(1)])
            return context.get_dummy_value()

        return types.void(arr, off), codegen

    prefetch.__doc__ = doc
    return prefetch


prefetch = _prefetch(3, """Hint the CPU to fetch the cache line holding byte `off` of `arr`'s data into L1
(llvm.prefetch, read, high locality). The row kernels fetch a few rows ahead: streaming weights with the
unpacking arithmetic in between, the hardware prefetchers alone left the loads stalled.""")

prefetch_l2 = _prefetch(2, """`prefetch` into L2 only (prefetcht1), for weights streamed from DRAM: a gpt-oss-20b
decode step (1.9 GB of weights) ran 20% faster so, the small models' (L3-resident) products slower.""")


@intrinsic
def stack_f32(typingctx, n):
    """A pointer to `n` float32 on the stack (alloca in the entry block); wrap it with
    `numba.carray(stack_f32(16), 16)`. Only valid inside the function that calls it (use it in the
    kernel body itself, never return it). LLVM promotes it to registers when indexed with constants."""
    if not isinstance(n, types.IntegerLiteral):
        raise errors.RequireLiteralValue(n)
    size = n.literal_value

    def codegen(context, builder, sig, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=size)

    return types.CPointer(types.float32)(n), codegen


@intrinsic
def as_f32(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (LLVM trunc + bitcast)."""
    if not isinstance(bits, types.Integer):
        raise errors.TypingError("as_f32 takes an integer")

    def codegen(context, builder, sig, args):
        v = args[0]
        if bits.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif bits.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def lut16(typingctx, tbl, src, off, shift, out, ooff):
    """out[ooff + j] = tbl[(src[off + j] >> shift) & 15] for j = 0..15.

    tbl: 16 float32 (a global array); src: uint8 array; shift: literal 0 or 4; out: float32 array
    (a `stack_f32` carray). Emitted as one 16-byte vector load, a nibble mask and a 16-lane table
    permute: `vpermps` through the AVX-512 intrinsic when the host has AVX-512F, else 16
    extract-by-index from the table vector (which LLVM lowers as well as the target allows) -- a
    table lookup the auto-vectorizers would otherwise do with a gather or scalar loads.
    No bounds checks: the caller guarantees src[off:off+16], tbl[0:16] and out[ooff:ooff+16] exist."""
    if not isinstance(shift, types.IntegerLiteral):
        raise errors.RequireLiteralValue(shift)
    sh = shift.literal_value

    def codegen(context, builder, sig, args):
        tbl_a = context.make_array(sig.args[0])(context, builder, args[0])
        src_a = context.make_array(sig.args[1])(context, builder, args[1])
        out_a = context.make_array(sig.args[4])(context, builder, args[4])
        i32 = ir.IntType(32)
        i8x16 = ir.VectorType(ir.IntType(8), 16)
        i32x16 = ir.VectorType(i32, 16)
        f32x16 = ir.VectorType(ir.FloatType(), 16)
        off = context.cast(builder, args[2], sig.args[2], types.intp)
        b = builder.load(builder.bitcast(builder.gep(src_a.data, [off]), i8x16.as_pointer()), align=1)
        if sh:
            b = builder.lshr(b, ir.Constant(i8x16, [sh] * 16))
        idx = builder.zext(builder.and_(b, ir.Constant(i8x16, [15] * 16)), i32x16)
        table = builder.load(builder.bitcast(tbl_a.data, f32x16.as_pointer()), align=4)
        if HOST_AVX512F:
            fnty = ir.FunctionType(f32x16, [f32x16, i32x16])
            permute = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.permvar.sf.512")
            res = builder.call(permute, [table, idx])
        else:
            res = ir.Constant(f32x16, ir.Undefined)
            for k in range(16):
                e = builder.extract_element(idx, ir.Constant(i32, k))
                res = builder.insert_element(res, builder.extract_element(table, e), ir.Constant(i32, k))
        ooff = context.cast(builder, args[5], sig.args[5], types.intp)
        builder.store(res, builder.bitcast(builder.gep(out_a.data, [ooff]), f32x16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(tbl, src, off, shift, out, ooff), codegen


@njit(inline="always")
def f16_at(w, o):
    """The f16 stored little-endian at w[o], w[o+1], as float32 (table lookup)."""
    return F16_LUT[np.int64(w[o]) | (np.int64(w[o + 1]) << 8)]


@njit(inline="always")
def f16_bits_to_f32(h):
    """Vectorizable f16 -> f32 from the 16 bits (any integer type): exact for normals, subnormals,
    zeros, infinities and NaNs."""
    h = np.uint32(h)
    em = h & np.uint32(0x7FFF)
    mag = as_f32(em << np.uint32(13)) * np.float32(5.192296858534828e33)  # * 2**112 rebias
    inf = as_f32((em << np.uint32(13)) | np.uint32(0x7F800000))
    v = inf if em >= np.uint32(0x7C00) else mag
    return -v if (h & np.uint32(0x8000)) else v


@njit(inline="always")
def bf16_bits_to_f32(h):
    return as_f32(np.uint32(h) << np.uint32(16))


# --- compiling under SLP vectorization

_SLP_LOCK = threading.RLock()


@contextlib.contextmanager
def slp_compile_scope():
    """Numba compiles lazily on a call; wrap the first call of each driver in this so that the
    code is built with the SLP vectorizer on (see the module doc)."""
    with _SLP_LOCK:
        old = (config.SLP_VECTORIZE, config.LOOP_VECTORIZE)
        config.SLP_VECTORIZE, config.LOOP_VECTORIZE = 1, 1
        try:
            yield
        finally:
            config.SLP_VECTORIZE, config.LOOP_VECTORIZE = old
