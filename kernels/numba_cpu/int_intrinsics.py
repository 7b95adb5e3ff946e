"""The LLVM pieces of the integer row kernels (rows_int.py): unpack a block's codes, integer dot products
with int8 activations, scaled accumulation -- for NT tokens at once, each token exactly as alone.

Every intrinsic unpacks the weight codes of one 32-element block (or K-quant sub-block) once into 32
unsigned bytes u, then for each of NT tokens (a literal; 1 for a lone token, 4 for a group) takes the
8 lanes of 4-byte integer dot products with that token's codes (`vpdpbusd`: u8 x s8, exact int32 sums;
on hosts without AVX-512 VNNI / AVX-VNNI the same sums in generic IR), subtracts the bias the codes carry
(Q4_0's 8, Q5_0's 16, Q6_K's 32, Q3_K's 4; Q8_0 and the codebooks are made unsigned by adding 128),
and accumulates into that token's lanes of a stack accumulator. A token's operations and their order do
not depend on NT, so a group of tokens gets bit for bit what each gets alone (batch invariance) while
the unpacking is paid once per group.

Arguments shared by the intrinsics: `x` is the flat uint8 buffer of all packed activation rows
(activations.pack_q8_32 / pack_q8_k), `xo` a stack int64 array of each token's row offset in it, `xoff`
the block's byte offset within a row; accumulators are stack arrays (rows_common.stack_f32, `stack_i32`)
of 8 lanes per token, token t in lanes 8t..8t+7; scales a stack float32/int array of one per token.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config, errors
from numba.extending import intrinsic

from quant import nonlinear as _nonlinear

# How a block's codes are stored (acc_block32's `kind`): nibbles (16 bytes, low = elements 0-15), nibbles
# plus a high bit from a u32 (Q5_0/Q5_1), int8 bytes (Q8_0), nibbles through a 16-entry codebook.
NIB, NIB5, BYTE, LUT = 0, 1, 2, 3
FIELD = 4  # bit fields of 32 bytes (panel_codes: the K-quants' codes)
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
HOST_F16C = "f16c" in _FEATURES

_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_V16, _V32 = ir.VectorType(_I8, 16), ir.VectorType(_I8, 32)
_I32X8, _F32X8 = ir.VectorType(_I32, 8), ir.VectorType(ir.FloatType(), 8)


@intrinsic
def f16_round(typingctx, v):
    """float32 -> nearest f16 -> float32 as two conversions (`vcvtps2ph`/`vcvtph2ps` with F16C: IEEE
    round to nearest even, subnormals and overflow to inf included). Only where HOST_F16C: elsewhere
    LLVM would call a runtime helper the JIT may not link (activations.to_f16 computes it by hand there)."""
    if v != types.float32:
        raise errors.TypingError(f"f16_round takes a float32, not {v}")

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.float32), codegen


def _literals(*args):
    for a in args:
        if not isinstance(a, types.IntegerLiteral):
            raise errors.RequireLiteralValue(a)
    return [a.literal_value for a in args]


def _load(builder, arr, off, vty):
    return builder.load(builder.bitcast(builder.gep(arr.data, [off]), vty.as_pointer()), align=1)


def _concat16(builder, a, b):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 32), list(range(32))))


def _splat(builder, value, vty, n):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), [0] * n))


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


def _dpbusd_acc(builder, acc, u, s):
    """acc + lanes of u (unsigned bytes) times s (signed bytes), as one vpdpbusd where there is VNNI."""
    if HOST_VNNI:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32X8, [_I32X8] * 3),
                                            "llvm.x86.avx512.vpdpbusd.256")
        return builder.call(fn, [acc, builder.bitcast(u, _I32X8), builder.bitcast(s, _I32X8)])
    return builder.add(acc, _dpbusd(builder, builder.bitcast(u, _V32), builder.bitcast(s, _V32)))


def _biased_dot(builder, u, xv, bias):
    dp = _dpbusd(builder, u, xv)
    if bias:
        dp = builder.sub(dp, _dpbusd(builder, ir.Constant(_V32, [bias] * 32), xv))
    return dp


class _Args:
    """The intrinsic's arguments by name, as LLVM values (intp-cast integers, arrays' data pointers)."""

    def __init__(self, context, builder, sig, args, names):
        self.context, self.builder = context, builder
        self._v = dict(zip(names, zip(sig.args, args)))

    def array(self, name):
        ty, v = self._v[name]
        return self.context.make_array(ty)(self.context, self.builder, v)

    def intp(self, name):
        ty, v = self._v[name]
        return self.context.cast(self.builder, v, ty, types.intp)

    def value(self, name, to=None):
        ty, v = self._v[name]
        return v if to is None else self.context.cast(self.builder, v, ty, to)

    def element(self, name, t):
        """Element t of a stack array argument."""
        a = self.array(name)
        return self.builder.load(self.builder.gep(a.data, [ir.Constant(_I64, t)]))


def _token_codes(a, t, xoff):
    """The 32 int8 codes of token t's block: x[xo[t] + xoff:...]."""
    b = a.builder
    return _load(b, a.array("x"), b.add(a.element("xo", t), xoff), _V32)


def _unpack16(a, kind):
    """u (32 unsigned bytes) of a block stored in 16 bytes at w[woff] (low nibbles are elements 0-15,
    high 16-31) for NIB, NIB5, LUT; BYTE reads 32 int8 codes and adds 128."""
    b, w = a.builder, a.array("w")
    woff = a.intp("woff")
    if kind == BYTE:
        return b.xor(_load(b, w, woff, _V32), ir.Constant(_V32, [0x80] * 32))
    q = _load(b, w, woff, _V16)
    lo = b.and_(q, ir.Constant(_V16, [15] * 16))
    hi = b.lshr(q, ir.Constant(_V16, [4] * 16))
    if kind == LUT:
        table = _load(b, a.array("tbl"), ir.Constant(_I64, 0), _V16)
        lo, hi = _table16(b, table, lo), _table16(b, table, hi)
    u = _concat16(b, lo, hi)
    if kind == NIB5:
        qh = _load(b, w, a.intp("aux"), _I32)
        bits = b.bitcast(qh, ir.VectorType(ir.IntType(1), 32))
        u = b.or_(u, b.select(bits, ir.Constant(_V32, [16] * 32), ir.Constant(_V32, [0] * 32)))
    return u


def _lanes(a, name, vty, t):
    return a.builder.bitcast(a.builder.gep(a.array(name).data, [ir.Constant(_I64, 8 * t)]), vty.as_pointer())


def _fma8(builder):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32X8, [_F32X8] * 3), "llvm.fma.v8f32")


@intrinsic
def acc_block32(typingctx, kind, bias, nt, acc, w, woff, aux, tbl, x, xo, xoff, sc):
    """For each token t < nt: acc[8t:8t+8] += sc[t] * (lanes of sum(u * x_t) - bias * sum(x_t)), one
    32-element block whose codes are stored as `kind` (literal) at w[woff] (NIB5: qh at w[aux]; LUT:
    tbl, 16 unsigned bytes). bias, nt: literals."""
    k, b_, n = _literals(kind, bias, nt)
    names = ("kind", "bias", "nt", "acc", "w", "woff", "aux", "tbl", "x", "xo", "xoff", "sc")

    def codegen(context, builder, sig, args):
        a = _Args(context, builder, sig, args, names)
        u = _unpack16(a, k)
        xoff = a.intp("xoff")
        for t in range(n):
            dp = _biased_dot(builder, u, _token_codes(a, t, xoff), b_)
            ap = _lanes(a, "acc", _F32X8, t)
            sv = _splat(builder, a.element("sc", t), _F32X8, 8)
            builder.store(builder.call(_fma8(builder), [sv, builder.sitofp(dp, _F32X8), builder.load(ap, align=4)]),
                          ap, align=4)
        return context.get_dummy_value()

    return types.none(kind, bias, nt, acc, w, woff, aux, tbl, x, xo, xoff, sc), codegen


def _int_accumulate(a, t, dp, scale_vec):
    b = a.builder
    ap = _lanes(a, "iacc", _I32X8, t)
    b.store(b.add(b.load(ap, align=4), b.mul(dp, scale_vec)), ap, align=4)


@intrinsic
def iacc_bits32(typingctx, bias, mask, hmask, hpos, nt, iacc, w, woff, shift, hoff, hshift, x, xo, xoff, sc0, sc1):
    """For each token t < nt: iacc[8t:8t+8] += (sc0 on lanes 0-3, sc1 on lanes 4-7) * (lanes of
    sum(u * x_t) - bias * sum(x_t)), a K-quant sub-block of 32 whose codes are bit fields of 32 bytes:
    u[j] = ((w[woff + j] >> shift) & mask) | (((w[hoff + j] >> hshift) & hmask) << hpos) (hmask 0: no
    high bits). Lanes 0-3 are elements 0-15 and 4-7 elements 16-31, so two 16-element groups with their
    own scales share a call. bias, mask, hmask, hpos, nt are literals."""
    b_, m_, hm, hp, n = _literals(bias, mask, hmask, hpos, nt)
    names = ("bias", "mask", "hmask", "hpos", "nt", "iacc", "w", "woff", "shift", "hoff", "hshift", "x", "xo",
             "xoff", "sc0", "sc1")

    def codegen(context, builder, sig, args):
        a = _Args(context, builder, sig, args, names)
        w = a.array("w")

        def field(off, sh, mask_):
            shv = _splat(builder, builder.trunc(sh, _I8), _V32, 32)
            return builder.and_(builder.lshr(_load(builder, w, off, _V32), shv), ir.Constant(_V32, [mask_] * 32))

        u = field(a.intp("woff"), a.intp("shift"), m_)
        if hm:
            h = field(a.intp("hoff"), a.intp("hshift"), hm)
            u = builder.or_(u, builder.shl(h, ir.Constant(_V32, [hp] * 32)))
        sv = builder.insert_element(ir.Constant(_I32X8, ir.Undefined), a.value("sc0", types.int32), ir.Constant(_I32, 0))
        sv = builder.insert_element(sv, a.value("sc1", types.int32), ir.Constant(_I32, 1))
        sv = builder.shuffle_vector(sv, sv, ir.Constant(_I32X8, [0, 0, 0, 0, 1, 1, 1, 1]))
        xoff = a.intp("xoff")
        for t in range(n):
            _int_accumulate(a, t, _biased_dot(builder, u, _token_codes(a, t, xoff), b_), sv)
        return context.get_dummy_value()

    return types.none(bias, mask, hmask, hpos, nt, iacc, w, woff, shift, hoff, hshift, x, xo, xoff, sc0, sc1), codegen


@intrinsic
def iacc_lut16(typingctx, nt, iacc, w, woff, tbl, x, xo, xoff, sc):
    """For each token t < nt: iacc[8t:8t+8] += sc * (lanes of sum(tbl[nibble] * x_t) - 128 * sum(x_t)): a
    codebook sub-block of 32 (IQ4_XS) stored as IQ4_NL's 16 bytes at w[woff], tbl the codebook + 128."""
    (n,) = _literals(nt)
    names = ("nt", "iacc", "w", "woff", "tbl", "x", "xo", "xoff", "sc")

    def codegen(context, builder, sig, args):
        a = _Args(context, builder, sig, args, names)
        u = _unpack16(a, LUT)
        sv = _splat(builder, a.value("sc", types.int32), _I32X8, 8)
        xoff = a.intp("xoff")
        for t in range(n):
            _int_accumulate(a, t, _biased_dot(builder, u, _token_codes(a, t, xoff), 128), sv)
        return context.get_dummy_value()

    return types.none(nt, iacc, w, woff, tbl, x, xo, xoff, sc), codegen


@intrinsic
def flush8(typingctx, nt, acc, iacc, sc):
    """For each token t < nt: acc[8t:8t+8] += sc[t] * float(iacc[8t:8t+8]); iacc[8t:8t+8] = 0 (a
    super-block's integer sums, scaled once)."""
    (n,) = _literals(nt)
    names = ("nt", "acc", "iacc", "sc")

    def codegen(context, builder, sig, args):
        a = _Args(context, builder, sig, args, names)
        for t in range(n):
            fa, ia = _lanes(a, "acc", _F32X8, t), _lanes(a, "iacc", _I32X8, t)
            lanes = builder.sitofp(builder.load(ia, align=4), _F32X8)
            sv = _splat(builder, a.element("sc", t), _F32X8, 8)
            builder.store(builder.call(_fma8(builder), [sv, lanes, builder.load(fa, align=4)]), fa, align=4)
            builder.store(ir.Constant(_I32X8, [0] * 8), ia, align=4)
        return context.get_dummy_value()

    return types.none(nt, acc, iacc, sc), codegen


@intrinsic
def mins_fma(typingctx, nt, acc, w, woff, x, xo, xoff, s):
    """For each token t < nt: acc[8t + i] += s[t] * ((w[woff + 2i] >> 4) * bs_t[2i] + (w[woff + 2i + 1] >> 4)
    * bs_t[2i + 1]) for i < 8, bs_t the 16 float32 bsums at x[xo[t] + xoff]: Q2_K's group mins times x's
    sums into the lanes, as ggml's AVX2 vec_dot_q2_K_q8_K does (`_mm256_madd_epi16(mins, bsums)`, then an
    FMA with -d_x * dmin into the lanes before the block's integer sums). The pair sums are exact
    integers. nt: a literal. One FMA per token and super-block: the earlier scalar sum of the 16
    products (a 4-step reduction per super-block) cost a fifth of a Q2_K product."""
    (n,) = _literals(nt)
    names = ("nt", "acc", "w", "woff", "x", "xo", "xoff", "s")

    def codegen(context, builder, sig, args):
        a = _Args(context, builder, sig, args, names)
        f32x16 = ir.VectorType(ir.FloatType(), 16)
        m = builder.lshr(_load(builder, a.array("w"), a.intp("woff"), _V16), ir.Constant(_V16, [4] * 16))
        mf = builder.uitofp(m, f32x16)
        even = ir.Constant(_I32X8, list(range(0, 16, 2)))
        odd = ir.Constant(_I32X8, list(range(1, 16, 2)))
        xoff = a.intp("xoff")
        for t in range(n):
            bs = _load(builder, a.array("x"), builder.add(a.element("xo", t), xoff), f32x16)
            v = builder.fmul(mf, bs)
            pairs = builder.fadd(builder.shuffle_vector(v, v, even), builder.shuffle_vector(v, v, odd))
            fa = _lanes(a, "acc", _F32X8, t)
            sv = _splat(builder, a.element("s", t), _F32X8, 8)
            builder.store(builder.call(_fma8(builder), [sv, pairs, builder.load(fa, align=4)]), fa, align=4)
        return context.get_dummy_value()

    return types.none(nt, acc, w, woff, x, xo, xoff, s), codegen


@intrinsic
def q2k_scales(typingctx, w, woff, out):
    """out[j] = w[woff + j] & 15 for j < 16: the group scales of the Q2_K super-block at w[woff], in one
    vector (as q3k_scales; per group, two byte loads and masks per sub-block call)."""
    def codegen(context, builder, sig, args):
        a = _Args(context, builder, sig, args, ("w", "woff", "out"))
        b = builder
        i32x16 = ir.VectorType(_I32, 16)
        q = b.zext(_load(b, a.array("w"), a.intp("woff"), _V16), i32x16)
        b.store(b.and_(q, ir.Constant(i32x16, [15] * 16)), b.bitcast(a.array("out").data, i32x16.as_pointer()),
                align=4)
        return context.get_dummy_value()

    return types.none(w, woff, out), codegen


@intrinsic
def q3k_scales(typingctx, w, woff, out):
    """out[j] for j < 16: the signed 6-bit scale (minus 32) of group j of the Q3_K super-block at w[woff]
    -- low 4 bits from byte 96 + (j & 7) shifted by 4 * (j >> 3), high 2 bits from byte 104 + (j & 3)
    shifted by 2 * (j >> 2) -- all 16 in one vector. Decoded per group as scalars (rows_int.q3k_scale),
    the scales took about as many instructions as the super-block's integer dot products."""
    def codegen(context, builder, sig, args):
        a = _Args(context, builder, sig, args, ("w", "woff", "out"))
        b = builder
        i32x16 = ir.VectorType(_I32, 16)
        v8, v4 = ir.VectorType(_I8, 8), ir.VectorType(_I8, 4)
        w, off = a.array("w"), a.intp("woff")
        lo = _load(b, w, b.add(off, ir.Constant(off.type, 96)), v8)
        lo = b.zext(b.shuffle_vector(lo, lo, ir.Constant(ir.VectorType(_I32, 16), list(range(8)) * 2)), i32x16)
        lo = b.and_(b.lshr(lo, ir.Constant(i32x16, [0] * 8 + [4] * 8)), ir.Constant(i32x16, [15] * 16))
        hi = _load(b, w, b.add(off, ir.Constant(off.type, 104)), v4)
        hi = b.zext(b.shuffle_vector(hi, hi, ir.Constant(ir.VectorType(_I32, 16), list(range(4)) * 4)), i32x16)
        hi = b.and_(b.lshr(hi, ir.Constant(i32x16, [0] * 4 + [2] * 4 + [4] * 4 + [6] * 4)), ir.Constant(i32x16, [3] * 16))
        sc = b.sub(b.or_(lo, b.shl(hi, ir.Constant(i32x16, [4] * 16))), ir.Constant(i32x16, [32] * 16))
        b.store(sc, b.bitcast(a.array("out").data, i32x16.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(w, woff, out), codegen


@intrinsic
def panel_acc(typingctx, nt, xkind, halves, acc, codes, coff, sc, mn, wc, c, xu, xo, xoff, dxoff, xmoff):
    """One 32-element chunk c of an 8-row panel (gemm_int.py) against nt tokens: for each t < nt,
    acc[8t + r] += row r's chunk times token t's, all 8 rows in the lanes of one vector.

    The panel holds the rows interleaved by 4 elements -- codes[coff + 32k + 4r + i] is element 4k+i of
    row r, a signed byte -- so one vpdpbusd with 4 bytes of the token broadcast (xu: x's codes + 128,
    unsigned) takes 4 elements of all 8 rows and lane r is row r's exact integer sum: no lane sums.
    Then per half h of the chunk (elements 0-15, 16-31): (sum - wc[16c + 8h + r]: x's +128 taken back)
    times sc[16c + 8h + r] * d_x (d_x the float32 at xu[xo[t] + dxoff]), plus mn[8c + r] times x's
    chunk term: xkind 1 (Q8_1) the float32 at xmoff, 2 (Q8_K) d_x * the two float32 sums at xmoff;
    0: none. halves=1: the halves share one scale (one conversion and FMA). nt, xkind, halves: literals."""
    n, xk, same = _literals(nt, xkind, halves)
    names = ("nt", "xkind", "halves", "acc", "codes", "coff", "sc", "mn", "wc", "c", "xu", "xo", "xoff", "dxoff",
             "xmoff")

    def codegen(context, builder, sig, args):
        a = _Args(context, builder, sig, args, names)
        b = builder
        cw, coff = a.array("codes"), a.intp("coff")
        rows = [_load(b, cw, b.add(coff, ir.Constant(_I64, 32 * k)), _I32X8) for k in range(8)]
        c = a.intp("c")
        c8, c16 = b.mul(c, ir.Constant(_I64, 8)), b.mul(c, ir.Constant(_I64, 16))

        def vec(name, off, vty):
            return b.load(b.bitcast(b.gep(a.array(name).data, [off]), vty.as_pointer()), align=4)

        sc_lo = vec("sc", c16, _F32X8)
        sc_hi = vec("sc", b.add(c16, ir.Constant(_I64, 8)), _F32X8)
        wc_lo = vec("wc", c16, _I32X8)
        wc_hi = vec("wc", b.add(c16, ir.Constant(_I64, 8)), _I32X8)
        wc_all = b.add(wc_lo, wc_hi)
        mnv = vec("mn", c8, _F32X8) if xk else None
        xu = a.array("xu")
        xoff, dxoff, xmoff = a.intp("xoff"), a.intp("dxoff"), a.intp("xmoff")
        fma = _fma8(b)
        zero = ir.Constant(_I32X8, [0] * 8)

        def f32(off):
            return b.load(b.bitcast(b.gep(xu.data, [off]), ir.FloatType().as_pointer()), align=1)

        for t in range(n):
            xr = a.element("xo", t)
            base = b.add(xr, xoff)
            isum = [zero, zero]
            for k in range(8):
                xk_ = _load(b, xu, b.add(base, ir.Constant(_I64, 4 * k)), _I32)
                isum[k // 4] = _dpbusd_acc(b, isum[k // 4], _splat(b, xk_, _I32X8, 8), rows[k])
            dx = f32(b.add(xr, dxoff))
            dxv = _splat(b, dx, _F32X8, 8)
            ap = _lanes(a, "acc", _F32X8, t)
            acc = b.load(ap, align=4)
            if same:
                tot = b.sitofp(b.sub(b.add(isum[0], isum[1]), wc_all), _F32X8)
                acc = b.call(fma, [tot, b.fmul(sc_lo, dxv), acc])
            else:
                acc = b.call(fma, [b.sitofp(b.sub(isum[0], wc_lo), _F32X8), b.fmul(sc_lo, dxv), acc])
                acc = b.call(fma, [b.sitofp(b.sub(isum[1], wc_hi), _F32X8), b.fmul(sc_hi, dxv), acc])
            if xk == 1:
                acc = b.call(fma, [mnv, _splat(b, f32(b.add(xr, xmoff)), _F32X8, 8), acc])
            elif xk == 2:
                s2 = b.fadd(f32(b.add(xr, xmoff)), f32(b.add(xr, b.add(xmoff, ir.Constant(_I64, 4)))))
                acc = b.call(fma, [mnv, _splat(b, b.fmul(dx, s2), _F32X8, 8), acc])
            b.store(acc, ap, align=4)
        return context.get_dummy_value()

    return types.none(nt, xkind, halves, acc, codes, coff, sc, mn, wc, c, xu, xo, xoff, dxoff, xmoff), codegen


@intrinsic
def panel_codes(typingctx, kind, bias, mask, hmask, hpos, w, woff, aux, shift, hshift, tbl, codes, coff):
    """Unpack one row's 32-element chunk into a panel (gemm_int.py): its signed codes (code - bias) go
    to codes[coff + 32k : coff + 32k + 4], k = 0..7 (element 4k..4k+3; coff = 256 * chunk + 4 * row);
    returns the sums of elements 0-15 and 16-31 of (code - bias) as lo + 2^32 * hi (int64).

    kind (literal) is how the codes are stored at w[woff]: NIB (16 bytes, low nibbles elements 0-15);
    NIB5 (and the high bit from the u32 at w[aux]); LUT (NIB through the 16-byte codebook tbl, which
    holds values + 128); BYTE (32 int8, taken as they are); FIELD (32 bytes: ((w >> shift) & mask) |
    (((w[aux + j] >> hshift) & hmask) << hpos), the K-quants' bit fields). bias, mask, hmask, hpos:
    literals."""
    k_, b_, m_, hm, hp = _literals(kind, bias, mask, hmask, hpos)
    names = ("kind", "bias", "mask", "hmask", "hpos", "w", "woff", "aux", "shift", "hshift", "tbl", "codes", "coff")

    def codegen(context, builder, sig, args):
        a = _Args(context, builder, sig, args, names)
        b = builder
        w = a.array("w")
        if k_ == FIELD:
            def field(off, sh, mask_):
                shv = _splat(b, b.trunc(sh, _I8), _V32, 32)
                return b.and_(b.lshr(_load(b, w, off, _V32), shv), ir.Constant(_V32, [mask_] * 32))

            u = field(a.intp("woff"), a.intp("shift"), m_)
            if hm:
                u = b.or_(u, b.shl(field(a.intp("aux"), a.intp("hshift"), hm), ir.Constant(_V32, [hp] * 32)))
        elif k_ == BYTE:
            u = _load(b, w, a.intp("woff"), _V32)
        else:
            u = _unpack16(a, k_)  # NIB / NIB5 / LUT (reads w, woff, aux, tbl)
        if b_:
            u = b.sub(u, ir.Constant(_V32, [b_] * 32))
        v = b.bitcast(u, _I32X8)
        cw, coff = a.array("codes"), a.intp("coff")
        for k in range(8):
            ptr = b.bitcast(b.gep(cw.data, [b.add(coff, ir.Constant(_I64, 32 * k))]), _I32.as_pointer())
            b.store(b.extract_element(v, ir.Constant(_I32, k)), ptr, align=1)
        wide = b.sext(u, ir.VectorType(_I32, 32))
        sums = []
        for h in range(2):
            half = b.shuffle_vector(wide, wide, ir.Constant(ir.VectorType(_I32, 16), list(range(16 * h, 16 * h + 16))))
            for width in (8, 4, 2, 1):
                lo = b.shuffle_vector(half, half, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
                hi = b.shuffle_vector(half, half, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
                half = b.add(lo, hi)
            sums.append(b.zext(b.extract_element(half, ir.Constant(_I32, 0)), _I64))  # the i32's bits
        return b.or_(sums[0], b.shl(sums[1], ir.Constant(_I64, 32)))

    return types.int64(kind, bias, mask, hmask, hpos, w, woff, aux, shift, hshift, tbl, codes, coff), codegen


def _stack(ty):
    @intrinsic
    def stack(typingctx, n):
        (size,) = _literals(n)

        def codegen(context, builder, sig, args):
            return cgutils.alloca_once(builder, context.get_value_type(ty), size=size)

        return types.CPointer(ty)(n), codegen

    return stack


stack_i32 = _stack(types.int32)  # `n` int32 on the stack, as rows_common.stack_f32
stack_i64 = _stack(types.int64)


@intrinsic
def f32_at(typingctx, x, o):
    """The float32 stored little-endian at x[o:o+4] (uint8 array), as one unaligned load. (Built from
    four byte loads, LLVM did not always merge them: Q4_K, which reads 16 of x's block sums a
    super-block, ran at a third of Q6_K's speed.)"""
    def codegen(context, builder, sig, args):
        xa = context.make_array(sig.args[0])(context, builder, args[0])
        off = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.load(builder.bitcast(builder.gep(xa.data, [off]), ir.FloatType().as_pointer()), align=1)

    return types.float32(x, o), codegen
