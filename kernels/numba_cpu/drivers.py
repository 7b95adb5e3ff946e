"""The compiled side of the CPU products: per-type row kernels behind parallel drivers (products.py calls them).

`ROW_KERNELS[qtype] = (dot, dequant_row)` maps each GGML type to its row kernels (rows_*.py). For
each type the drivers are compiled lazily, on first use, and cached on disk:

* `groups` -- rows x groups of tokens. The weight is viewed as `(n_expert, n_out, row)` (a plain
  matrix is one expert); tokens come in groups that share an expert (a plain matmul is one group,
  a MoE product one group per chosen expert). `prange` runs over (group, chunk of rows). A group
  of one token takes the row kernel's `dot` straight from the quantized blocks (decode,
  matrix-vector): with activations rounded as llama.cpp rounds them, the *integer* dot of
  rows_int.py (`INT_KERNELS`: every quantized type; x rounded to int8 blocks once per call inside
  the driver, integer multiply-adds with VNNI, as ggml's vec_dot), else the float dot of rows_*.py
  (activations="f32", and F32/F16/BF16 weights). A bigger group (a prompt) goes through the
  integer GEMM of gemm_int.py where the type has one (every quantized type but Q2_K, with rounded
  activations: 8-row panels, vpdpbusd, ~200 GOP/s per core); otherwise it dequantizes the
  chunk's rows once into a thread-local tile (<= products.TILE_BYTES, so it stays in L2) and
  multiplies it with the group's tokens in register blocks of 4 rows x 4 tokens (`tile_dot44`,
  ~75-110 GFLOP/s per AVX-512 core, about what single-threaded OpenBLAS does). Every weight byte is
  read once per call, whatever the batch. Each type's `groups` comes in variants holding only the
  paths their calls take (see "the drivers" below).
* `dequant` -- selected rows dequantized (embedding lookups, `get_rows`; single-threaded).

No BLAS in the batched path: one thread pool (numba's) does all the work. With OpenBLAS' own
threads next to numba's, `x @ tile.T` ran 10-50x slower on the 2-vCPU test machine.

Prefetch: the row loops ask for the bytes of the row PREFETCH_ROWS ahead (`rows_common.prefetch`,
llvm.prefetch). Weights streaming from L3/DRAM otherwise stalled the unpacking loops: in the model a
1536x576 Q4_1 matvec took 133 us against 57 us with the weight hot in L2; with the prefetch 72 us.
SmolLM2 decode went from 46 to 70 tokens/s, Gemma 3 from 29 to 46 (any distance from 2 to 32 rows
measured the same).

Caching: the drivers are closures over constants (the type id, a hash of the kernel sources
`KERNEL_HASH`, the variant), so numba's on-disk cache (keyed by this file and the closure's values) is
reused across processes and invalidated when a row kernel changes. Compilation runs under
`slp_compile_scope` (SLP vectorizer on; see rows_common); the drivers are thin (thin_drivers.py).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
from numba import carray, njit, prange, types
from numba.core import errors
from numba.extending import overload

from quant import GGMLType

from ..base import KernelError
from . import gemm_int, rows_float, rows_int, rows_k, rows_legacy
from .activations import pack_q8_32, pack_q8_32_into, pack_q8_k, pack_q8_k_into, q8_32_width, q8_k_width
from .int_intrinsics import stack_i64
from .rows_common import FM_DOT, prefetch, prefetch_l2, slp_compile_scope, stack_f32
from .rows_float import tile_dot44
from . import unique_symbols
from .thin_drivers import thin

ROW_KERNELS: dict[GGMLType, tuple] = {
    GGMLType.F32: (rows_float.dot_f32, rows_float.dequant_row_f32),
    GGMLType.F16: (rows_float.dot_f16, rows_float.dequant_row_f16),
    GGMLType.BF16: (rows_float.dot_bf16, rows_float.dequant_row_bf16),
    GGMLType.Q4_0: (rows_legacy.dot_q4_0, rows_legacy.dequant_row_q4_0),
    GGMLType.Q4_1: (rows_legacy.dot_q4_1, rows_legacy.dequant_row_q4_1),
    GGMLType.Q5_0: (rows_legacy.dot_q5_0, rows_legacy.dequant_row_q5_0),
    GGMLType.Q5_1: (rows_legacy.dot_q5_1, rows_legacy.dequant_row_q5_1),
    GGMLType.Q8_0: (rows_legacy.dot_q8_0, rows_legacy.dequant_row_q8_0),
    GGMLType.Q2_K: (rows_k.dot_q2_k, rows_k.dequant_row_q2_k),
    GGMLType.Q3_K: (rows_k.dot_q3_k, rows_k.dequant_row_q3_k),
    GGMLType.Q4_K: (rows_k.dot_q4_k, rows_k.dequant_row_q4_k),
    GGMLType.Q5_K: (rows_k.dot_q5_k, rows_k.dequant_row_q5_k),
    GGMLType.Q6_K: (rows_k.dot_q6_k, rows_k.dequant_row_q6_k),
    GGMLType.IQ4_NL: (rows_legacy.dot_iq4_nl, rows_legacy.dequant_row_iq4_nl),
    GGMLType.IQ4_XS: (rows_k.dot_iq4_xs, rows_k.dequant_row_iq4_xs),
    GGMLType.MXFP4: (rows_legacy.dot_mxfp4, rows_legacy.dequant_row_mxfp4),
}

# Integer dot kernels (rows_int.py) against int8-rounded activations, used for the groups that dot
# straight from the blocks when activations are rounded as llama.cpp rounds them: ({tokens: dot}, how x
# is packed for it: Q8_0/Q8_1 blocks of 32 or Q8_K super-blocks, as llama.cpp's vec_dot_type).
INT_KERNELS: dict[GGMLType, tuple] = {
    GGMLType.Q4_0: (rows_int.dot_q4_0, pack_q8_32),
    GGMLType.Q4_1: (rows_int.dot_q4_1, pack_q8_32),
    GGMLType.Q5_0: (rows_int.dot_q5_0, pack_q8_32),
    GGMLType.Q5_1: (rows_int.dot_q5_1, pack_q8_32),
    GGMLType.Q8_0: (rows_int.dot_q8_0, pack_q8_32),
    GGMLType.IQ4_NL: (rows_int.dot_iq4_nl, pack_q8_32),
    GGMLType.MXFP4: (rows_int.dot_mxfp4, pack_q8_32),
    GGMLType.Q2_K: (rows_int.dot_q2_k, pack_q8_k),
    GGMLType.Q3_K: (rows_int.dot_q3_k, pack_q8_k),
    GGMLType.Q4_K: (rows_int.dot_q4_k, pack_q8_k),
    GGMLType.Q5_K: (rows_int.dot_q5_k, pack_q8_k),
    GGMLType.Q6_K: (rows_int.dot_q6_k, pack_q8_k),
    GGMLType.IQ4_XS: (rows_int.dot_iq4_xs, pack_q8_k),
}

# How the batched path lays out a weight row against x's row, where that is not the dequantized row:
# Q4_1/Q5_1 rows are (d * q, then the block offsets m) against x's (values, then block sums).
TILE_ROWS = {GGMLType.Q4_1: rows_legacy.tile_row_q4_1, GGMLType.Q5_1: rows_legacy.tile_row_q5_1}

PREFETCH_ROWS = 4               # matvec rows fetched ahead of the one being multiplied
STREAM_BYTES = 4 << 20          # a matrix (an expert's) this big is prefetched into L2 rather than L1


def _kernel_hash() -> str:
    h = hashlib.sha1()
    here = Path(__file__).resolve().parent
    for name in ("rows_common.py", "rows_legacy.py", "rows_k.py", "rows_float.py", "rows_int.py", "int_intrinsics.py",
                 "gemm_int.py", "activations.py"):
        h.update((here / name).read_bytes())
    h.update(unique_symbols.SCHEME.encode())  # drivers cached with per-process symbol names are not reused
    return h.hexdigest()[:16]


KERNEL_HASH = _kernel_hash()

# --- literal dispatch from a type id to its row kernels (resolved at compile time)
#
# The drivers call these once per work item; each is compiled as a separate (not inlined)
# function, so that a type's row kernel is compiled once, with its own fastmath flags, and the
# parallel loop bodies stay small (numba compiles big parfor bodies slowly: this halved the
# compile time). The row kernels are inlined into them, so the per-row views stay inside one
# function, where their reference counting is optimized away.


def dot_rows(qt, w3, e, r0, r1, x2, xi, out2, oi):  # pragma: no cover - overloaded below
    """out2[oi, r] = w3[e, r] . x2[xi] for r in r0..r1-1"""
    raise NotImplementedError


def dot_rows_multi(qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2, buf):  # pragma: no cover - overloaded below
    """out2[m_out[m], r] = w3[e, r] . x2[m_x[m]] for r in r0..r1-1 and every member m in m0..m1-1,
    each row unpacked once (into `buf`), with each token's arithmetic exactly `dot_rows`'."""
    raise NotImplementedError


def gemm_rows(qt, w3, e, r0, r1, n_in, xu, m_x, m0, m1, m_out, out2):  # pragma: no cover - overloaded below
    raise NotImplementedError


def dequant_range(qt, w3, e, r0, r1, out, o):  # pragma: no cover - overloaded below
    """out[o + r - r0] = dequantized w3[e, r] for r in r0..r1-1"""
    raise NotImplementedError


def pack_rows(qt, x2):  # pragma: no cover - overloaded below
    """x2 (float32 rows) packed as int8 blocks for qt's integer kernels (INT_KERNELS' packer); a
    uint8 array of no rows for a type without them."""
    raise NotImplementedError


def tile_range(qt, w3, e, r0, r1, out, o):  # pragma: no cover - overloaded below
    """out[o + r - r0] = w3[e, r] laid out for the batched path (TILE_ROWS) for r in r0..r1-1"""
    raise NotImplementedError


@njit(inline="always")
def prefetch_ahead(w3, e, r, r1):
    """Ask for the bytes of row r + PREFETCH_ROWS of expert e (if it is still in r..r1-1): see the
    module doc's Prefetch. Into L1 for a matrix of less than STREAM_BYTES (the products of a small
    model stay in L3 between tokens), into L2 for bigger ones (streamed from DRAM)."""
    ahead = r + PREFETCH_ROWS
    if ahead < r1:
        wa = w3[e, ahead]
        if w3.shape[1] * w3.shape[2] >= STREAM_BYTES:
            for k in range(0, w3.shape[2], 64):
                prefetch_l2(wa, k)
        else:
            for k in range(0, w3.shape[2], 64):
                prefetch(wa, k)


def _literal_type(qt) -> GGMLType:
    if not isinstance(qt, types.IntegerLiteral):
        raise errors.RequireLiteralValue(qt)
    return GGMLType(qt.literal_value)


_JIT_DOT_ROWS = dict(fastmath=FM_DOT, error_model="numpy", boundscheck=False)
_JIT_DEQ_ROWS = dict(error_model="numpy", boundscheck=False)


_BUILT: dict = {}


def _compiled_once(key, impl, jit_options):
    """A jitted function of `impl`, one per key. The per-item overloads below return a thin call of it
    rather than `impl` itself: numba builds an overload's impl anew for every caller's compile flags,
    and a prange loop is typed twice with different flags (in its function, then as the parfor body),
    so a row kernel returned as the impl was compiled twice; a jitted function compiles once per
    signature."""
    fn = _BUILT.get(key)
    if fn is None:
        fn = _BUILT.setdefault(key, njit(**jit_options)(impl))
    return fn


def _is_packed(x2) -> bool:
    """Whether x2 holds packed int8 activations (activations.pack_q8_32, uint8) rather than floats."""
    return isinstance(x2.dtype, types.Integer)


@overload(dot_rows, jit_options=_JIT_DOT_ROWS)
def _dot_rows(qt, w3, e, r0, r1, x2, xi, out2, oi):
    t = _literal_type(qt)
    if _is_packed(x2):
        if t not in INT_KERNELS:  # compiled into every driver, called only for the types in INT_KERNELS
            return lambda qt, w3, e, r0, r1, x2, xi, out2, oi: None
        dot1 = INT_KERNELS[t][0][1]

        def impl_int(qt, w3, e, r0, r1, x2, xi, out2, oi):
            xf = x2.reshape(-1)
            xo = carray(stack_i64(1), 1)
            res = carray(stack_f32(1), 1)
            xo[0] = xi * x2.shape[1]
            for r in range(r0, r1):
                prefetch_ahead(w3, e, r, r1)
                dot1(w3[e, r], xf, xo, res)
                out2[oi, r] = res[0]

        fn = _compiled_once(("dot_rows", t, True), impl_int, _JIT_DOT_ROWS)
    else:
        dot = ROW_KERNELS[t][0]

        def impl(qt, w3, e, r0, r1, x2, xi, out2, oi):
            xr = x2[xi]
            for r in range(r0, r1):
                prefetch_ahead(w3, e, r, r1)
                out2[oi, r] = dot(w3[e, r], xr)

        fn = _compiled_once(("dot_rows", t, False), impl, _JIT_DOT_ROWS)
    return lambda qt, w3, e, r0, r1, x2, xi, out2, oi: fn(qt, w3, e, r0, r1, x2, xi, out2, oi)


@overload(dot_rows_multi, jit_options=_JIT_DOT_ROWS)
def _dot_rows_multi(qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2, buf):
    """Several tokens against the same rows: each row is unpacked once into `buf` (TILE_ROWS or the
    dequantizer, inlined here and so compiled with the dot's flags: the weight values come out as the
    row kernel's `dot` computes them in registers, FMA contraction included), then each token's dot
    runs over it lane by lane in the dot kernels' order (element i into lane i % 32, blocks in order,
    `hsum32`; Q4_1/Q5_1's offsets times x's block sums after). So a token's result is bit for bit
    what `dot_rows` gives it alone (tests/test_batch_invariance.py), at one unpacking per row for the
    whole group instead of one per token: batched decode is no longer compute-bound on unpacking.

    With packed int8 activations the integer kernels take 4 tokens at a time, a group's last 1 or 2
    with the 1- or 2-token kernel (rows_int: each block unpacked once for the tokens, each token's
    arithmetic that of the 1-token kernel)."""
    t = _literal_type(qt)
    if _is_packed(x2):
        if t not in INT_KERNELS:
            return lambda qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2, buf: None
        dot1, dot2, dot4 = (INT_KERNELS[t][0][nt] for nt in (1, 2, 4))

        def impl_int(qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2, buf):
            xf = x2.reshape(-1)
            width = x2.shape[1]
            xo = carray(stack_i64(4), 4)
            res = carray(stack_f32(4), 4)
            for r in range(r0, r1):
                prefetch_ahead(w3, e, r, r1)
                wr = w3[e, r]
                for m in range(m0, m1, 4):
                    left = m1 - m
                    for k in range(4):  # (three left: the fourth repeats the last token)
                        xo[k] = m_x[min(m + k, m1 - 1)] * width
                    # a group's last one or two tokens take the 1- or 2-token kernel: a MoE prompt
                    # puts 1-3 tokens on most experts, and the 4-token kernel did 4 tokens' arithmetic
                    if left == 1:
                        dot1(wr, xf, xo, res)
                    elif left == 2:
                        dot2(wr, xf, xo, res)
                    else:
                        dot4(wr, xf, xo, res)
                    for k in range(min(4, left)):
                        out2[m_out[m + k], r] = res[k]

        fn = _compiled_once(("dot_rows_multi", t, True), impl_int, _JIT_DOT_ROWS)
        return lambda qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2, buf: fn(qt, w3, e, r0, r1, x2, m_x, m0, m1,
                                                                              m_out, out2, buf)
    row = TILE_ROWS.get(t, ROW_KERNELS[t][1])
    fdot4 = rows_float.fdot4
    split = t in TILE_ROWS  # Q4_1/Q5_1: n_in values, then n_in / 32 block offsets times x's block sums

    def impl(qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2, buf):
        width = buf.shape[0]
        n_val = (width // 33) * 32 if split else width
        bv = buf[:n_val]
        bm = buf[n_val:]
        for r in range(r0, r1):
            prefetch_ahead(w3, e, r, r1)
            row(w3[e, r], buf)
            for m in range(m0, m1, 4):  # 4 tokens at a time; the last four repeat the last token
                xa = x2[m_x[m]]
                xb = x2[m_x[min(m + 1, m1 - 1)]]
                xc = x2[m_x[min(m + 2, m1 - 1)]]
                xd = x2[m_x[min(m + 3, m1 - 1)]]
                sa, sb, sc, sd = fdot4(bv, xa[:n_val], xb[:n_val], xc[:n_val], xd[:n_val])
                if split:
                    ma = np.float32(0.0)
                    mb = np.float32(0.0)
                    mc = np.float32(0.0)
                    md = np.float32(0.0)
                    for b in range(width - n_val):
                        ma += bm[b] * xa[n_val + b]
                        mb += bm[b] * xb[n_val + b]
                        mc += bm[b] * xc[n_val + b]
                        md += bm[b] * xd[n_val + b]
                    sa += ma
                    sb += mb
                    sc += mc
                    sd += md
                out2[m_out[m], r] = sa
                if m + 1 < m1:
                    out2[m_out[m + 1], r] = sb
                if m + 2 < m1:
                    out2[m_out[m + 2], r] = sc
                if m + 3 < m1:
                    out2[m_out[m + 3], r] = sd

    fn = _compiled_once(("dot_rows_multi", t, False), impl, _JIT_DOT_ROWS)
    return lambda qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2, buf: fn(qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out,
                                                                          out2, buf)


@overload(gemm_rows, jit_options=_JIT_DOT_ROWS)
def _gemm_rows(qt, w3, e, r0, r1, n_in, xu, m_x, m0, m1, m_out, out2):
    """A group's tokens through the integer GEMM (gemm_int.py: 8-row panels, vpdpbusd) -- the prompt
    path where the type has a panel unpacker; nothing for the others (the drivers' GEMM constant tells them apart)."""
    t = _literal_type(qt)
    if t not in gemm_int.GEMMS:
        return lambda qt, w3, e, r0, r1, n_in, xu, m_x, m0, m1, m_out, out2: None
    run = gemm_int.GEMMS[t]

    def impl(qt, w3, e, r0, r1, n_in, xu, m_x, m0, m1, m_out, out2):
        run(w3, e, r0, r1, n_in, xu, m_x, m0, m1, m_out, out2)

    return impl


@overload(pack_rows, jit_options=_JIT_DEQ_ROWS)
def _pack_rows(qt, x2):
    t = _literal_type(qt)
    if t not in INT_KERNELS:
        return lambda qt, x2: np.empty((0, 1), np.uint8)
    k = INT_KERNELS[t][1] is pack_q8_k
    into, width = (pack_q8_k_into, q8_k_width) if k else (pack_q8_32_into, q8_32_width)

    def impl(qt, x2):
        out = np.empty((x2.shape[0], width(x2.shape[1])), np.uint8)
        into(x2, out)
        return out

    return impl


@overload(dequant_range, jit_options=_JIT_DEQ_ROWS)
def _dequant_range(qt, w3, e, r0, r1, out, o):
    deq = ROW_KERNELS[_literal_type(qt)][1]

    def impl(qt, w3, e, r0, r1, out, o):
        for r in range(r0, r1):
            prefetch_ahead(w3, e, r, r1)
            deq(w3[e, r], out[o + r - r0])

    return impl


@overload(tile_range, jit_options=_JIT_DEQ_ROWS)
def _tile_range(qt, w3, e, r0, r1, out, o):
    t = _literal_type(qt)
    row = TILE_ROWS.get(t, ROW_KERNELS[t][1])

    def impl(qt, w3, e, r0, r1, out, o):
        for r in range(r0, r1):
            prefetch_ahead(w3, e, r, r1)
            row(w3[e, r], out[o + r - r0])

    return impl


def tile_rows(qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2):  # pragma: no cover - overloaded below
    """out2[m_out[m], r] = w3[e, r] . x2[m_x[m]] for r in r0..r1-1 and members m0..m1-1 through a
    dequantized tile of the rows"""
    raise NotImplementedError


@overload(tile_rows, jit_options=_JIT_DEQ_ROWS)
def _tile_rows(qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2):
    """The float path of a bigger group: the chunk's rows dequantized once into a thread-local tile
    (<= TILE_BYTES, in L2), multiplied with the tokens in register blocks of 4 rows x 4 tokens."""

    def impl(qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2):
        nr = r1 - r0
        nr4 = (nr + 3) // 4 * 4     # rows padded to whole 4x4 blocks with zeros
        tile = np.empty((nr4, x2.shape[1]), np.float32)
        tile_range(qt, w3, e, r0, r1, tile, 0)
        for i in range(nr, nr4):
            tile[i, :] = 0.0
        for m in range(m0, m1, 4):  # 4 tokens at a time (the last block repeats its last token)
            xa = m_x[m]
            xb = m_x[min(m + 1, m1 - 1)]
            xc = m_x[min(m + 2, m1 - 1)]
            xd = m_x[min(m + 3, m1 - 1)]
            nj = min(4, m1 - m)
            for i in range(0, nr4, 4):
                t = tile_dot44(tile, i, x2, xa, xb, xc, xd)
                for k in range(min(4, nr - i)):
                    for j in range(nj):
                        out2[m_out[m + j], r0 + i + k] = t[4 * k + j]

    return impl


# --- the drivers
#
# A type's `groups` driver is compiled in variants, each holding only the paths its calls can take
# (closure constants, so numba prunes the others before typing them): a first run compiles what it
# uses and no more -- compiling every path into one driver cost ~9 s a type, most of a cold start.
#   rounded: activations rounded to int8 blocks, the type's integer kernels (INT_KERNELS; the GEMM
#            for bigger groups where gemm_int has the type), or the float kernels on float x.
#   kind:    "one"   every group is one token (decode: a plain matrix-vector product, a MoE token's
#                    experts);
#            "wide"  every group has more than direct_max tokens (a prompt's plain products);
#            "mixed" any sizes (a batched step's few rows, a MoE prompt).

KINDS = ("one", "wide", "mixed")


def _make_groups(qt: int, khash: str, rounded: bool, kind: str):
    ONE = kind == "one"
    WIDE = kind == "wide"
    GEMM = rounded and GGMLType(qt) in gemm_int.GEMMS
    PACK = rounded and (GEMM or not WIDE)  # x rounded to int8 blocks: direct groups or the GEMM use it

    @thin
    @njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
    def groups(w3, x, x2, g_exp, g_off, m_x, m_out, out2, chunk, direct_max):
        """out2[m_out[m], r] = w3[g_exp[g], r] . x2[m_x[m]] for every member m of every group g.

        x: the float32 rows as they come; rounded to int8 blocks here (`pack_rows`, serial, a few
        microseconds less per product than a call of its own) for the integer kernels. x2: float rows
        (activations.for_weight) for the float kernels; no rows when unused.

        Work items are (group, chunk of rows). Groups of up to `direct_max` tokens take the row
        kernel's dot straight from the blocks (one token: `dot_rows`; several: `dot_rows_multi`, each
        row unpacked once for all of them, bit for bit the same per token); bigger groups go through
        the integer GEMM or dequantize the chunk's rows once into a tile (`tile_rows`)."""
        khash  # noqa: B018  (part of the cache key: see the module doc)
        n_out = w3.shape[1]
        n_in = x2.shape[1]
        xq = pack_rows(qt, x) if PACK else np.empty((0, 1), np.uint8)
        # the GEMM takes x's codes + 128 (vpdpbusd's unsigned side)
        xu = gemm_int.unsigned_codes(xq, x.shape[1]) if GEMM and not ONE else xq
        n_chunks = (n_out + chunk - 1) // chunk
        for item in prange(g_exp.shape[0] * n_chunks):
            g = item // n_chunks
            r0 = (item - g * n_chunks) * chunk
            r1 = min(r0 + chunk, n_out)
            e = g_exp[g]
            m0 = g_off[g]
            m1 = g_off[g + 1]
            if ONE or (not WIDE and m1 - m0 <= direct_max):
                if rounded:
                    if ONE or m1 - m0 == 1:
                        dot_rows(qt, w3, e, r0, r1, xq, m_x[m0], out2, m_out[m0])
                    else:
                        dot_rows_multi(qt, w3, e, r0, r1, xq, m_x, m0, m1, m_out, out2, out2[0, :0])
                elif ONE or m1 - m0 == 1:
                    dot_rows(qt, w3, e, r0, r1, x2, m_x[m0], out2, m_out[m0])
                else:
                    buf = np.empty(n_in, np.float32)  # one unpacked row (n_in: x's width, sums included)
                    dot_rows_multi(qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2, buf)
            elif GEMM:
                gemm_rows(qt, w3, e, r0, r1, x.shape[1], xu, m_x, m0, m1, m_out, out2)
            else:
                tile_rows(qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2)

    return groups


def _make_dequant(qt: int, khash: str):
    @thin
    @njit(cache=True, error_model="numpy", boundscheck=False)
    def dequant(w3, e, rows, out):
        """out[i] = dequantized w3[e, rows[i]] (one thread: lookups are small, and a serial
        function compiles in half the time of a parallel one)."""
        khash  # noqa: B018
        for i in range(rows.shape[0]):
            dequant_range(qt, w3, e, rows[i], rows[i] + 1, out, i)

    return dequant


class _TypeDrivers:
    """The drivers of one type, each variant built and compiled (or loaded from the cache) on its first call."""

    def __init__(self, qt: GGMLType):
        self.qt = qt
        self._fns: dict = {}
        self._lock = threading.Lock()

    def _fn(self, key):
        fn = self._fns.get(key)
        if fn is None:
            with self._lock:
                fn = self._fns.get(key)
                if fn is None:
                    fn = self._fns[key] = _Compiled(_make_dequant(int(self.qt), KERNEL_HASH) if key == "dequant"
                                                    else _make_groups(int(self.qt), KERNEL_HASH, *key))
        return fn

    def groups(self, rounded: bool, kind: str, *args):
        self._fn((bool(rounded), kind))(*args)

    def dequant(self, *args):
        self._fn("dequant")(*args)


class _Compiled:
    """A driver whose first call compiles under the SLP scope and a lock; later calls go straight through
    (~200 a decode token)."""

    def __init__(self, fn):
        self.fn = fn
        self._lock = threading.Lock()
        self.ready = False

    def __call__(self, *args):
        if self.ready:
            return self.fn(*args)
        with self._lock, slp_compile_scope():
            self.fn(*args)
            self.ready = True


_DRIVERS: dict[GGMLType, _TypeDrivers] = {}
_DRIVERS_LOCK = threading.Lock()


def drivers(qtype) -> _TypeDrivers:
    """The drivers of a GGML type (built on first use); KernelError for a type without kernels."""
    try:
        qt = GGMLType(qtype)
    except ValueError:
        raise KernelError(f"cpu backend: unknown GGML type id {qtype}") from None
    d = _DRIVERS.get(qt)
    if d is None:
        if qt not in ROW_KERNELS:
            supported = ", ".join(t.name for t in ROW_KERNELS)
            raise KernelError(f"cpu backend: no kernels for GGML type {qt.name}; supported: {supported}")
        with _DRIVERS_LOCK:
            d = _DRIVERS.get(qt) or _DRIVERS.setdefault(qt, _TypeDrivers(qt))
    return d
