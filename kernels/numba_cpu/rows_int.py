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

from .rows_common import E8M0_HALF, JIT_DOT, f16_at, stack_f32

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


def _unpack16(builder, context, kind, w_a, woff, aux_args, t_a):
    """u (32 unsigned bytes) of a 32-element block stored in 16 bytes at w[woff]: the low nibbles are
    elements 0-15, the high nibbles 16-31 (NIB, NIB5 and LUT; BYTE reads 32 int8 codes)."""
    if kind == BYTE:
        return builder.xor(_load(builder, w_a, woff, _V32), ir.Constant(_V32, [0x80] * 32))
    q = _load(builder, w_a, woff, _V16)
    lo = builder.and_(q, ir.Constant(_V16, [15] * 16))
    hi = builder.lshr(q, ir.Constant(_V16, [4] * 16))
    if kind == LUT:
        table = _load(builder, t_a, ir.Constant(ir.IntType(64), 0), _V16)
        lo, hi = _table16(builder, table, lo), _table16(builder, table, hi)
    u = _concat16(builder, lo, hi)
    if kind == NIB5:
        qh = _load(builder, w_a, aux_args, _I32)
        bits = builder.bitcast(qh, ir.VectorType(ir.IntType(1), 32))
        u = builder.or_(u, builder.select(bits, ir.Constant(_V32, [16] * 32), ir.Constant(_V32, [0] * 32)))
    return u


def _splat8(builder, value, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(_I32X8, [0] * 8))


def _biased_dot(builder, u, xv, bias):
    dp = _dpbusd(builder, u, xv)
    if bias:
        dp = builder.sub(dp, _dpbusd(builder, ir.Constant(_V32, [bias] * 32), xv))
    return dp


def _literals(*args):
    for a in args:
        if not isinstance(a, types.IntegerLiteral):
            raise errors.RequireLiteralValue(a)
    return [a.literal_value for a in args]


@intrinsic
def acc_block32(typingctx, kind, bias, acc, w, woff, aux, tbl, x, xoff, scale):
    """acc[0:8] += scale * (8 lanes of sum(u * xq) - bias * sum(xq)) for one block of 32 elements.

    kind (literal): NIB -- u = the 16 bytes at w[woff] as low nibbles (elements 0-15) then high
    nibbles (16-31); NIB5 -- the same, plus bit j of the little-endian u32 at w[aux] as 16 on element
    j; BYTE -- the 32 int8 codes at w[woff] plus 128; LUT -- tbl[nibble] (16 unsigned bytes).
    bias (literal): what the codes carry above the values (8, 16, 128 or 0).
    x: uint8 array whose bytes x[xoff:xoff+32] are the block's int8 codes; acc: 8 float32 (stack)."""
    k, b_ = _literals(kind, bias)

    def codegen(context, builder, sig, args):
        acc_a = context.make_array(sig.args[2])(context, builder, args[2])
        w_a = context.make_array(sig.args[3])(context, builder, args[3])
        t_a = context.make_array(sig.args[6])(context, builder, args[6])
        x_a = context.make_array(sig.args[7])(context, builder, args[7])
        woff = context.cast(builder, args[4], sig.args[4], types.intp)
        aux = context.cast(builder, args[5], sig.args[5], types.intp)
        xoff = context.cast(builder, args[8], sig.args[8], types.intp)
        u = _unpack16(builder, context, k, w_a, woff, aux, t_a)
        dp = _biased_dot(builder, u, _load(builder, x_a, xoff, _V32), b_)
        sv = _splat8(builder, args[9], _F32X8)
        ap = builder.bitcast(acc_a.data, _F32X8.as_pointer())
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32X8, [_F32X8] * 3), "llvm.fma.v8f32")
        builder.store(builder.call(fma, [sv, builder.sitofp(dp, _F32X8), builder.load(ap, align=4)]), ap, align=4)
        return context.get_dummy_value()

    return types.none(kind, bias, acc, w, woff, aux, tbl, x, xoff, scale), codegen


@intrinsic
def iacc_bits32(typingctx, bias, mask, hmask, hpos, iacc, w, woff, shift, hoff, hshift, x, xoff, sc0, sc1):
    """iacc[0:8] += (sc0 on lanes 0-3, sc1 on lanes 4-7) * (lanes of sum(u * xq) - bias * sum(xq)),
    the integer sums of a K-quant sub-block of 32 elements whose codes are bit fields of 32 bytes:
    u[j] = ((w[woff + j] >> shift) & mask) | (((w[hoff + j] >> hshift) & hmask) << hpos)
    (hmask 0: no high bits). Lanes 0-3 are elements 0-15, lanes 4-7 elements 16-31, so two
    16-element groups with their own scales share a call. bias, mask, hmask, hpos are literals."""
    b_, m_, hm, hp = _literals(bias, mask, hmask, hpos)

    def codegen(context, builder, sig, args):
        ia = context.make_array(sig.args[4])(context, builder, args[4])
        w_a = context.make_array(sig.args[5])(context, builder, args[5])
        x_a = context.make_array(sig.args[10])(context, builder, args[10])
        woff = context.cast(builder, args[6], sig.args[6], types.intp)
        xoff = context.cast(builder, args[11], sig.args[11], types.intp)

        def field(off_arg, off_ty, sh_arg, sh_ty, mask_):
            off = context.cast(builder, off_arg, off_ty, types.intp)
            sh = builder.trunc(context.cast(builder, sh_arg, sh_ty, types.intp), _I8)
            v = builder.lshr(_load(builder, w_a, off, _V32), _splat32(builder, sh))
            return builder.and_(v, ir.Constant(_V32, [mask_] * 32))

        u = field(args[6], sig.args[6], args[7], sig.args[7], m_)
        if hm:
            h = field(args[8], sig.args[8], args[9], sig.args[9], hm)
            u = builder.or_(u, builder.shl(h, ir.Constant(_V32, [hp] * 32)))
        del woff
        dp = _biased_dot(builder, u, _load(builder, x_a, xoff, _V32), b_)
        s0 = context.cast(builder, args[12], sig.args[12], types.int32)
        s1 = context.cast(builder, args[13], sig.args[13], types.int32)
        sv = builder.insert_element(ir.Constant(_I32X8, ir.Undefined), s0, ir.Constant(_I32, 0))
        sv = builder.insert_element(sv, s1, ir.Constant(_I32, 1))
        sv = builder.shuffle_vector(sv, sv, ir.Constant(_I32X8, [0, 0, 0, 0, 1, 1, 1, 1]))
        ap = builder.bitcast(ia.data, _I32X8.as_pointer())
        builder.store(builder.add(builder.load(ap, align=4), builder.mul(dp, sv)), ap, align=4)
        return context.get_dummy_value()

    return types.none(bias, mask, hmask, hpos, iacc, w, woff, shift, hoff, hshift, x, xoff, sc0, sc1), codegen


@intrinsic
def iacc_lut16(typingctx, iacc, w, woff, tbl, x, xoff, sc):
    """iacc[0:8] += sc * (lanes of sum(tbl[nibble] * xq) - 128 * sum(xq)): a codebook sub-block of 32
    (IQ4_XS) stored as IQ4_NL's 16 bytes at w[woff], tbl the codebook plus 128."""
    def codegen(context, builder, sig, args):
        ia = context.make_array(sig.args[0])(context, builder, args[0])
        w_a = context.make_array(sig.args[1])(context, builder, args[1])
        t_a = context.make_array(sig.args[3])(context, builder, args[3])
        x_a = context.make_array(sig.args[4])(context, builder, args[4])
        woff = context.cast(builder, args[2], sig.args[2], types.intp)
        xoff = context.cast(builder, args[5], sig.args[5], types.intp)
        u = _unpack16(builder, context, LUT, w_a, woff, None, t_a)
        dp = _biased_dot(builder, u, _load(builder, x_a, xoff, _V32), 128)
        sv = _splat8(builder, context.cast(builder, args[6], sig.args[6], types.int32), _I32X8)
        ap = builder.bitcast(ia.data, _I32X8.as_pointer())
        builder.store(builder.add(builder.load(ap, align=4), builder.mul(dp, sv)), ap, align=4)
        return context.get_dummy_value()

    return types.none(iacc, w, woff, tbl, x, xoff, sc), codegen


@intrinsic
def flush8(typingctx, acc, iacc, scale):
    """acc[0:8] += scale * float(iacc[0:8]); iacc[0:8] = 0 (a super-block's integer sums, scaled once)."""
    def codegen(context, builder, sig, args):
        fa = builder.bitcast(context.make_array(sig.args[0])(context, builder, args[0]).data, _F32X8.as_pointer())
        ia = builder.bitcast(context.make_array(sig.args[1])(context, builder, args[1]).data, _I32X8.as_pointer())
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32X8, [_F32X8] * 3), "llvm.fma.v8f32")
        lanes = builder.sitofp(builder.load(ia, align=4), _F32X8)
        builder.store(builder.call(fma, [_splat8(builder, args[2], _F32X8), lanes, builder.load(fa, align=4)]), fa,
                      align=4)
        builder.store(ir.Constant(_I32X8, [0] * 8), ia, align=4)
        return context.get_dummy_value()

    return types.none(acc, iacc, scale), codegen


@intrinsic
def stack_i32(typingctx, n):
    """`n` int32 on the stack, as rows_common.stack_f32."""
    (size,) = _literals(n)

    def codegen(context, builder, sig, args):
        return cgutils.alloca_once(builder, _I32, size=size)

    return types.CPointer(types.int32)(n), codegen


def _splat32(builder, v8):
    v = builder.insert_element(ir.Constant(_V32, ir.Undefined), v8, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 32), [0] * 32))


@intrinsic
def f32_at(typingctx, x, o):
    """The float32 stored little-endian at x[o:o+4] (uint8 array), as one unaligned load. (Built from
    four byte loads, LLVM did not always merge them: Q4_K, which reads 16 of x's block sums a
    super-block, ran at a third of Q6_K's speed.)"""
    def codegen(context, builder, sig, args):
        xa = context.make_array(sig.args[0])(context, builder, args[0])
        off = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(xa.data, [off]), ir.FloatType().as_pointer())
        return builder.load(ptr, align=1)

    return types.float32(x, o), codegen


@njit(inline="always")
def zero8(acc):
    for j in range(8):
        acc[j] = np.float32(0.0)


@njit(inline="always")
def izero8(acc):
    for j in range(8):
        acc[j] = np.int32(0)


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


# ---------------------------------------------------------------- the 256-element K-quants, against Q8_K
# x (uint8) is `activations.pack_q8_k`'s layout: n int8 codes, n / 256 float32 scales d, then n / 16
# float32 sums of 16 codes (llama.cpp's bsums; exact integers). A super-block's sub-block sums are
# integers times integer scales, accumulated in int32 lanes (`iacc_bits32`) and scaled once by
# d_w * d_x (`flush8`), as ggml's vec_dot_q*_K_q8_K do; the mins (Q2_K, Q4_K, Q5_K) multiply x's bsums.


@njit(inline="always")
def _k_setup(w, block_bytes):
    nbk = w.shape[0] // block_bytes
    n = 256 * nbk
    return nbk, n, n + 4 * nbk


@njit(inline="always")
def k4_scale_min(w, o, j):
    """get_scale_min_k4: the 6-bit scale and min of sub-block j of the Q4_K/Q5_K block at w[o]."""
    if j < 4:
        return np.int32(w[o + 4 + j] & 63), np.int32(w[o + 8 + j] & 63)
    sc = np.int32(w[o + 8 + j] & 15) | (np.int32(w[o + j] >> 6) << 4)
    mn = np.int32(w[o + 8 + j] >> 4) | (np.int32(w[o + 4 + j] >> 6) << 4)
    return sc, mn


def _make_dot_k45(block_bytes: int, qs_off: int, high: int):
    """Q4_K (high 0) and Q5_K (high 1: bit `is` of qh[l] at byte 16 is 16 on element l of sub-block is).
    The four 64-element chunks are written out with constant chunk numbers (`chunk`, inlined): with a
    run-time loop the scale decoding branched per chunk and Q4_K ran at half the speed of Q4_0."""

    @njit(inline="always")
    def chunk(w, o, c, x, xo, iacc, ob):
        sc0, m0 = k4_scale_min(w, o, 2 * c)
        sc1, m1 = k4_scale_min(w, o, 2 * c + 1)
        iacc_bits32(0, 15, high, 4, iacc, w, o + qs_off + 32 * c, 0, o + 16, 2 * c, x, xo + 64 * c, sc0, sc0)
        iacc_bits32(0, 15, high, 4, iacc, w, o + qs_off + 32 * c, 4, o + 16, 2 * c + 1, x, xo + 64 * c + 32, sc1, sc1)
        g = ob + 16 * c
        return np.float32(m0) * (f32_at(x, g) + f32_at(x, g + 4)) + np.float32(m1) * (f32_at(x, g + 8) + f32_at(x, g + 12))

    @njit(**JIT_DOT)
    def dot(w, x):
        acc = carray(stack_f32(8), 8)
        iacc = carray(stack_i32(8), 8)
        zero8(acc)
        izero8(iacc)
        nbk, n, ob = _k_setup(w, block_bytes)
        sm = np.float32(0.0)
        for b in range(nbk):
            o = block_bytes * b
            dx = f32_at(x, n + 4 * b)
            xo = 256 * b
            gb = ob + 64 * b  # x's 16 bsums of this super-block
            summ = chunk(w, o, 0, x, xo, iacc, gb) + chunk(w, o, 1, x, xo, iacc, gb)
            summ += chunk(w, o, 2, x, xo, iacc, gb) + chunk(w, o, 3, x, xo, iacc, gb)
            flush8(acc, iacc, f16_at(w, o) * dx)
            sm += f16_at(w, o + 2) * dx * summ
        return hsum8(acc) - sm

    return dot


dot_q4_k = _make_dot_k45(144, 16, 0)
dot_q5_k = _make_dot_k45(176, 48, 1)


@njit(**JIT_DOT)
def dot_q6_k(w, x):
    """ql at 0, qh at 128, int8 scales (one per 16) at 192, d at 208; codes q + 32 (bias 32)."""
    acc = carray(stack_f32(8), 8)
    iacc = carray(stack_i32(8), 8)
    zero8(acc)
    izero8(iacc)
    nbk, n, ob = _k_setup(w, 210)
    for b in range(nbk):
        o = 210 * b
        for h in range(2):
            for k in range(4):
                s = o + 192 + 8 * h + 2 * k
                iacc_bits32(32, 15, 3, 4, iacc, w, o + 64 * h + 32 * (k & 1), 4 * (k >> 1), o + 128 + 32 * h, 2 * k,
                            x, 256 * b + 128 * h + 32 * k, np.int8(w[s]), np.int8(w[s + 1]))
        flush8(acc, iacc, f16_at(w, o + 208) * f32_at(x, n + 4 * b))
    return hsum8(acc)


@njit(**JIT_DOT)
def dot_q2_k(w, x):
    """scales (4-bit scale, 4-bit min per 16) at 0, qs at 16, d at 80, dmin at 82."""
    acc = carray(stack_f32(8), 8)
    iacc = carray(stack_i32(8), 8)
    zero8(acc)
    izero8(iacc)
    nbk, n, ob = _k_setup(w, 84)
    sm = np.float32(0.0)
    for b in range(nbk):
        o = 84 * b
        dx = f32_at(x, n + 4 * b)
        for h in range(2):
            for k in range(4):
                g = o + 8 * h + 2 * k
                iacc_bits32(0, 3, 0, 0, iacc, w, o + 16 + 32 * h, 2 * k, o, 0, x, 256 * b + 128 * h + 32 * k,
                            w[g] & 15, w[g + 1] & 15)
        summ = np.float32(0.0)
        for g in range(16):
            summ += np.float32(w[o + g] >> 4) * f32_at(x, ob + 4 * (16 * b + g))
        flush8(acc, iacc, f16_at(w, o + 80) * dx)
        sm += f16_at(w, o + 82) * dx * summ
    return hsum8(acc) - sm


@njit(inline="always")
def q3k_scale(w, o, j):
    """The signed 6-bit scale (minus 32) of group j of the Q3_K block at w[o] (scales at o + 96)."""
    lo = np.int32(w[o + 96 + (j & 7)] >> (4 * (j >> 3))) & 15
    hi = np.int32(w[o + 104 + (j & 3)] >> (2 * (j >> 2))) & 3
    return (lo | (hi << 4)) - 32


@njit(**JIT_DOT)
def dot_q3_k(w, x):
    """hmask at 0, qs at 32, scales at 96, d at 108; q = low 2 bits + 4 * high bit - 4 (bias 4)."""
    acc = carray(stack_f32(8), 8)
    iacc = carray(stack_i32(8), 8)
    zero8(acc)
    izero8(iacc)
    nbk, n, ob = _k_setup(w, 110)
    for b in range(nbk):
        o = 110 * b
        for h in range(2):
            for k in range(4):
                j = 8 * h + 2 * k
                iacc_bits32(4, 3, 1, 2, iacc, w, o + 32 + 32 * h, 2 * k, o, 4 * h + k, x, 256 * b + 128 * h + 32 * k,
                            q3k_scale(w, o, j), q3k_scale(w, o, j + 1))
        flush8(acc, iacc, f16_at(w, o + 108) * f32_at(x, n + 4 * b))
    return hsum8(acc)


@njit(**JIT_DOT)
def dot_iq4_xs(w, x):
    """d at 0, scales_h (u16) at 2, scales_l at 4, qs at 8: sub-block ib's codebook values times ls - 32."""
    acc = carray(stack_f32(8), 8)
    iacc = carray(stack_i32(8), 8)
    zero8(acc)
    izero8(iacc)
    nbk, n, ob = _k_setup(w, 136)
    for b in range(nbk):
        o = 136 * b
        sh = np.int32(w[o + 2]) | (np.int32(w[o + 3]) << 8)
        for ib in range(8):
            ls = np.int32((w[o + 4 + (ib >> 1)] >> (4 * (ib & 1))) & 15) | (((sh >> (2 * ib)) & 3) << 4)
            iacc_lut16(iacc, w, o + 8 + 16 * ib, LUT_IQ4NL, x, 256 * b + 32 * ib, ls - 32)
        flush8(acc, iacc, f16_at(w, o) * f32_at(x, n + 4 * b))
    return hsum8(acc)
