"""Integer row kernels: weights' integer codes times int8-rounded activations, as llama.cpp's `vec_dot`s.

llama.cpp rounds a product's activations to int8 blocks (Q8_0/Q8_1 for the 32-element types) and
multiplies them with the weights' integer codes in integer SIMD (`vpdpbusd` on AVX-512 VNNI / AVX-VNNI,
`vpmaddubsw` on AVX2), scaling each block's exact integer sum by `d_w * d_x`. The float kernels of
rows_legacy compute the same products from the dequantized values (d_w*q_w * d_x*q_x in float32 lanes),
which costs a float conversion and FMA per element: 2048x8192 Q4_1 took ~600 us on two cores against
~350 us this way. The integer sums are exact, so these kernels round only the per-block scaling --
closer to llama.cpp than the float kernels, never further.

The activation row (`x`, uint8) is `activations.pack_q8_32`'s layout: n int8 codes, then n / 32 float32
scales d (f16-rounded, as Q8_0/Q8_1 store them), then n / 32 float32 block sums s = f16(d32 * sum(q))
(Q8_1's, which Q4_1/Q5_1 multiply by their offsets m).

One block is one call of `acc_block32`, an LLVM intrinsic that unpacks the weight codes of 32 elements
to unsigned bytes u, takes the 8 lanes of 4-byte integer dot products with x's codes (vpdpbusd: u8 x s8,
exact int32 sums), subtracts the bias the codes carry (Q4_0's 8, Q5_0's 16; Q8_0 and the codebooks
are made unsigned by adding 128), converts to float and accumulates `scale * lanes` into an 8-lane
float accumulator (`llvm.fma.v8f32`). On a host without VNNI the same integer sums are written in
generic IR (widen, multiply, add in fours), which LLVM lowers as the target allows; integer sums do not
depend on the order, so every host computes the same lanes.

Lane order: lane k holds elements 4k..4k+3 of the block; a row's result is the 8 lanes summed in
order, then Q4_1/Q5_1's offsets. Each token's dot depends only on its own row of x, so a group of
tokens (products.dot_rows_multi) is bit for bit the same as each token alone.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils, config, errors
from numba.extending import intrinsic

from quant import nonlinear as _nonlinear

from .rows_common import E8M0_HALF, JIT_DOT, as_f32, f16_at, stack_f32

# How acc_block32 unpacks a block's codes (an integer literal): (kind, bias).
NIB, NIB5, BYTE, LUT = 0, 1, 2, 3
# the codebooks shifted to unsigned bytes (value + 128), for a 16-byte table shuffle
LUT_IQ4NL = (_nonlinear.KVALUES_IQ4NL.astype(np.int16) + 128).astype(np.uint8)
LUT_MXFP4 = (_nonlinear.KVALUES_MXFP4.astype(np.int16) + 128).astype(np.uint8)


def _host_features() -> set:
    if config.CPU_NAME or config.CPU_FEATURES:
        return set()  # compiling for another target: generic IR only
    try:
        import llvmlite.binding as ll

        return {f[1:] for f in ll.get_host_cpu_features().flatten().split(",") if f.startswith("+")}
    except Exception:  # pragma: no cover - feature query unavailable
        return set()


_FEATURES = _host_features()
HOST_VNNI = ("avx512vnni" in _FEATURES and "avx512vl" in _FEATURES) or "avxvnni" in _FEATURES
HOST_SSSE3 = "ssse3" in _FEATURES

_I8, _I32 = ir.IntType(8), ir.IntType(32)
_V16, _V32 = ir.VectorType(_I8, 16), ir.VectorType(_I8, 32)
_I32X8, _F32X8 = ir.VectorType(_I32, 8), ir.VectorType(ir.FloatType(), 8)


def _load(builder, arr, off, vty):
    return builder.load(builder.bitcast(builder.gep(arr.data, [off]), vty.as_pointer()), align=1)


def _concat16(builder, a, b):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 32), list(range(32))))


def _table16(builder, table, idx):
    """table[idx[j]] for 16 byte lanes (idx < 16): pshufb where the host has SSSE3."""
    if HOST_SSSE3:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16, _V16]),
                                            "llvm.x86.ssse3.pshuf.b.128")
        return builder.call(fn, [table, idx])
    res = ir.Constant(_V16, ir.Undefined)
    for k in range(16):
        e = builder.extract_element(idx, ir.Constant(_I32, k))
        res = builder.insert_element(res, builder.extract_element(table, e), ir.Constant(_I32, k))
    return res


def _dpbusd(builder, u, s):
    """8 int32 lanes, lane k = sum of u[4k+i] * s[4k+i] (u unsigned, s signed bytes): exact."""
    if HOST_VNNI:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32X8, [_I32X8] * 3),
                                            "llvm.x86.avx512.vpdpbusd.256")
        zero = ir.Constant(_I32X8, [0] * 8)
        return builder.call(fn, [zero, builder.bitcast(u, _I32X8), builder.bitcast(s, _I32X8)])
    v32 = ir.VectorType(_I32, 32)
    p = builder.mul(builder.zext(u, v32), builder.sext(s, v32))
    lanes = [builder.shuffle_vector(p, p, ir.Constant(_I32X8, [4 * k + i for k in range(8)])) for i in range(4)]
    return builder.add(builder.add(lanes[0], lanes[1]), builder.add(lanes[2], lanes[3]))


@intrinsic
def acc_block32(typingctx, kind, bias, acc, w, woff, aux, tbl, x, xoff, scale):
    """acc[0:8] += scale * (8 lanes of sum(u * xq) - bias * sum(xq)) for one block of 32 elements.

    kind (literal): NIB -- u = the 16 bytes at w[woff] as low nibbles (elements 0-15) then high
    nibbles (16-31); NIB5 -- the same, plus bit j of the little-endian u32 at w[aux] as 16 on element
    j; BYTE -- the 32 int8 codes at w[woff] plus 128; LUT -- tbl[nibble] (16 unsigned bytes).
    bias (literal): what the codes carry above the values (8, 16, 128 or 0).
    x: uint8 array whose bytes x[xoff:xoff+32] are the block's int8 codes; acc: 8 float32 (stack)."""
    for a in (kind, bias):
        if not isinstance(a, types.IntegerLiteral):
            raise errors.RequireLiteralValue(a)
    k, b_ = kind.literal_value, bias.literal_value

    def codegen(context, builder, sig, args):
        acc_a = context.make_array(sig.args[2])(context, builder, args[2])
        w_a = context.make_array(sig.args[3])(context, builder, args[3])
        t_a = context.make_array(sig.args[6])(context, builder, args[6])
        x_a = context.make_array(sig.args[7])(context, builder, args[7])
        woff = context.cast(builder, args[4], sig.args[4], types.intp)
        xoff = context.cast(builder, args[8], sig.args[8], types.intp)
        if k == BYTE:
            u = builder.xor(_load(builder, w_a, woff, _V32), ir.Constant(_V32, [0x80] * 32))
        else:
            q = _load(builder, w_a, woff, _V16)
            lo = builder.and_(q, ir.Constant(_V16, [15] * 16))
            hi = builder.lshr(q, ir.Constant(_V16, [4] * 16))
            if k == LUT:
                table = _load(builder, t_a, ir.Constant(ir.IntType(64), 0), _V16)
                lo, hi = _table16(builder, table, lo), _table16(builder, table, hi)
            u = _concat16(builder, lo, hi)
            if k == NIB5:
                aux = context.cast(builder, args[5], sig.args[5], types.intp)
                qh = _load(builder, w_a, aux, _I32)
                bits = builder.bitcast(qh, ir.VectorType(ir.IntType(1), 32))
                u = builder.or_(u, builder.select(bits, ir.Constant(_V32, [16] * 32), ir.Constant(_V32, [0] * 32)))
        xv = _load(builder, x_a, xoff, _V32)
        dp = _dpbusd(builder, u, xv)
        if b_:
            dp = builder.sub(dp, _dpbusd(builder, ir.Constant(_V32, [b_] * 32), xv))
        sv = builder.insert_element(ir.Constant(_F32X8, ir.Undefined), args[9], ir.Constant(_I32, 0))
        sv = builder.shuffle_vector(sv, sv, ir.Constant(_I32X8, [0] * 8))
        ap = builder.bitcast(acc_a.data, _F32X8.as_pointer())
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32X8, [_F32X8] * 3), "llvm.fma.v8f32")
        builder.store(builder.call(fma, [sv, builder.sitofp(dp, _F32X8), builder.load(ap, align=4)]), ap, align=4)
        return context.get_dummy_value()

    return types.none(kind, bias, acc, w, woff, aux, tbl, x, xoff, scale), codegen


@njit(inline="always")
def f32_at(x, o):
    """The float32 stored little-endian at x[o:o+4] (uint8 array)."""
    return as_f32(np.uint32(x[o]) | (np.uint32(x[o + 1]) << 8) | (np.uint32(x[o + 2]) << 16)
                  | (np.uint32(x[o + 3]) << 24))


@njit(inline="always")
def zero8(acc):
    for j in range(8):
        acc[j] = np.float32(0.0)


@njit(inline="always")
def hsum8(acc):
    s = np.float32(0.0)
    for j in range(8):
        s += acc[j]
    return s


def _make_dot(block_bytes: int, kind: int, bias: int, code_off: int, aux_off: int, tbl, scale_kind: str,
              offsets: bool):
    """The integer dot of one 32-block type against a packed q8 row: blocks of `block_bytes`, codes at
    `code_off` within a block (qh bits at `aux_off`), scale an f16 at 0 ("f16") or an E8M0 byte
    ("e8m0"); `offsets`: an f16 m at byte 2 multiplies x's block sums (Q4_1, Q5_1)."""

    @njit(**JIT_DOT)
    def dot(w, x):
        acc = carray(stack_f32(8), 8)
        zero8(acc)
        nb = w.shape[0] // block_bytes
        n = 32 * nb
        sm = np.float32(0.0)
        for b in range(nb):
            o = block_bytes * b
            dw = E8M0_HALF[w[o]] if scale_kind == "e8m0" else f16_at(w, o)
            acc_block32(kind, bias, acc, w, o + code_off, o + aux_off, tbl, x, 32 * b, dw * f32_at(x, n + 4 * b))
            if offsets:
                sm += f16_at(w, o + 2) * f32_at(x, n + 4 * nb + 4 * b)
        return hsum8(acc) + sm

    return dot


dot_q4_0 = _make_dot(18, NIB, 8, 2, 0, LUT_IQ4NL, "f16", False)
dot_q4_1 = _make_dot(20, NIB, 0, 4, 0, LUT_IQ4NL, "f16", True)
dot_q5_0 = _make_dot(22, NIB5, 16, 6, 2, LUT_IQ4NL, "f16", False)
dot_q5_1 = _make_dot(24, NIB5, 0, 8, 4, LUT_IQ4NL, "f16", True)
dot_q8_0 = _make_dot(34, BYTE, 128, 2, 0, LUT_IQ4NL, "f16", False)
dot_iq4_nl = _make_dot(18, LUT, 128, 2, 0, LUT_IQ4NL, "f16", False)
dot_mxfp4 = _make_dot(17, LUT, 128, 1, 0, LUT_MXFP4, "e8m0", False)
