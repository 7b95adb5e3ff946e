"""Quantized products on the CPU with Numba: the per-type row kernels behind parallel drivers.

`ROW_KERNELS[qtype] = (dot, dequant_row)` maps each GGML type to its row kernels (rows_*.py). For
each type two parallel drivers are compiled lazily, on first use, and cached on disk:

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
  chunk's rows once into a thread-local tile (<= TILE_BYTES, so it stays in L2) and multiplies it
  with the group's tokens in register blocks of 4 rows x 4 tokens (`tile_dot44`, ~75-110 GFLOP/s
  per AVX-512 core, about what single-threaded OpenBLAS does). Every weight byte is read once per
  call, whatever the batch.
* `dequant` -- selected rows dequantized (embedding lookups, `get_rows`; single-threaded).

No BLAS in the batched path: one thread pool (numba's) does all the work. With OpenBLAS' own
threads next to numba's, `x @ tile.T` ran 10-50x slower on the 2-vCPU test machine.

Threads: a product runs on all `n_threads` above PARALLEL_MIN_WORK multiply-adds. With GNU OpenMP's
default wait policy the workers are still spinning when the next of a token's ~200 products starts,
so waking them is cheap and even SmolLM2's 192x576 products gain from a second thread: SmolLM2 Q4_1
decode measured 31 t/s with a 2M threshold, 41 at 512K, 45 at 32K, no better below. (Under
OMP_WAIT_POLICY=PASSIVE a wake-up cost ~85 us on this VM and 2M was the break-even.)

Prefetch: the row loops ask for the bytes of the row PREFETCH_ROWS ahead (`rows_common.prefetch`,
llvm.prefetch). Weights streaming from L3/DRAM otherwise stalled the unpacking loops: in the model a
1536x576 Q4_1 matvec took 133 us against 57 us with the weight hot in L2; with the prefetch 72 us.
SmolLM2 decode went from 46 to 70 tokens/s, Gemma 3 from 29 to 46 (any distance from 2 to 32 rows
measured the same).

`matmul`, `matmul_experts` and `get_rows` below are the backend operations, with exactly the
semantics of kernels.reference.NumpyBackend.

Caching: the drivers are closures over two constants, the type id and a hash of the kernel sources
(`KERNEL_HASH`), so numba's on-disk cache (keyed by this file and the closure's values) is reused
across processes and invalidated when a row kernel changes. Compilation runs under
`slp_compile_scope` (SLP vectorizer on; see rows_common).
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from pathlib import Path

# Numba's OpenMP threading layer reads OMP_WAIT_POLICY when it first starts its threads. We leave GNU
# OpenMP's default (spin briefly, then sleep): measured on 2 cores (SmolLM2 Q4_1, 2 x 5 runs each),
# PASSIVE was slower, pp128 380-390 vs 418-421 t/s and tg64 29.5-30.2 vs 31.2-31.3 t/s, as every one of
# a token's ~200 parallel regions then wakes sleeping workers. Users may still set it themselves.

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import carray, njit, prange, types  # noqa: E402
from numba.core import errors  # noqa: E402
from numba.extending import overload  # noqa: E402

from quant import GGMLType, QTensor  # noqa: E402

from ..base import KernelError  # noqa: E402
from . import gemm_int, pool, rows_float, rows_int, rows_k, rows_legacy  # noqa: E402
from .activations import (for_weight, pack_q8_32, pack_q8_32_into, pack_q8_k, pack_q8_k_into,  # noqa: E402
                          q8_32_width, q8_k_width)
from .int_intrinsics import stack_i64  # noqa: E402
from .rows_common import FM_DOT, prefetch, prefetch_l2, slp_compile_scope, stack_f32  # noqa: E402
from .rows_float import tile_dot44  # noqa: E402
from .thin_drivers import thin  # noqa: E402

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

DIRECT_MAX = 4                  # groups of up to this many tokens dot straight from the blocks
# (a MoE prompt spreads its tokens thin: 16 tokens x top-4 of 32 experts is ~2 per expert, and
#  dequantizing a whole expert tile for 2 tokens cost more than dotting twice: gpt-oss-20b shape
#  pp16 7.3 -> 9.9 t/s going from 1 to 4; 8 measured no better)
ROWS_MAX = 1 << 30              # path="rows": every group dots from the blocks, however many tokens
TILE_BYTES = 512 << 10          # float32 bytes of a work item's dequantized tile (bigger groups)
PREFETCH_ROWS = 4               # matvec rows fetched ahead of the one being multiplied
STREAM_BYTES = 4 << 20          # a matrix (an expert's) this big is prefetched into L2 rather than L1
PARALLEL_MIN_WORK = 1 << 15     # below this many multiply-adds (weights x tokens), run on one thread


def _kernel_hash() -> str:
    h = hashlib.sha1()
    here = Path(__file__).resolve().parent
    for name in ("rows_common.py", "rows_legacy.py", "rows_k.py", "rows_float.py", "rows_int.py", "int_intrinsics.py",
                 "gemm_int.py"):
        h.update((here / name).read_bytes())
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

    With packed int8 activations the integer kernels take 4 tokens at a time (rows_int: each block
    unpacked once for the 4, each token's arithmetic that of the 1-token kernel)."""
    t = _literal_type(qt)
    if _is_packed(x2):
        if t not in INT_KERNELS:
            return lambda qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2, buf: None
        dot4 = INT_KERNELS[t][0][4]

        def impl_int(qt, w3, e, r0, r1, x2, m_x, m0, m1, m_out, out2, buf):
            xf = x2.reshape(-1)
            width = x2.shape[1]
            xo = carray(stack_i64(4), 4)
            res = carray(stack_f32(4), 4)
            for r in range(r0, r1):
                prefetch_ahead(w3, e, r, r1)
                wr = w3[e, r]
                for m in range(m0, m1, 4):  # the last four repeat the last token
                    for k in range(4):
                        xo[k] = m_x[min(m + k, m1 - 1)] * width
                    dot4(wr, xf, xo, res)
                    for k in range(min(4, m1 - m)):
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
                    fn = (_make_dequant(int(self.qt), KERNEL_HASH) if key == "dequant"
                          else _make_groups(int(self.qt), KERNEL_HASH, *key))
                    self._fns[key] = _Compiled(fn)
                    fn = self._fns[key]
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


# --- helpers


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view. Numba compiles one specialization per writability of each argument and
    memory-mapped weights are read-only, so every input array (weights, activations, indices)
    goes in read-only: one compilation per driver and type."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


_PREPARED: "weakref.WeakKeyDictionary[QTensor, tuple]" = weakref.WeakKeyDictionary()


def _prepared(w: QTensor, n_dims: int) -> tuple["_TypeDrivers", np.ndarray]:
    """(drivers, storage as a read-only (n_expert, n_out, row) array) of a weight, made once per
    QTensor (a weak cache: it goes with the tensor)."""
    try:
        p = _PREPARED.get(w)
    except TypeError:
        p = None
    if p is None:
        if not isinstance(w, QTensor):
            raise KernelError(f"cpu backend: expected a QTensor weight, got {type(w).__name__}")
        if len(w.shape) != n_dims:
            raise ValueError(f"weight {w.name or ''} has shape {w.shape}, expected {n_dims} dimensions")
        d = drivers(w.qtype)  # raises KernelError for an unsupported type
        data = _readonly(np.ascontiguousarray(w.data))
        p = (d, data.reshape(1, *data.shape) if n_dims == 2 else data)
        _PREPARED[w] = p
    elif len(w.shape) != n_dims:
        raise ValueError(f"weight {w.name or ''} has shape {w.shape}, expected {n_dims} dimensions")
    return p


_NO_ROWS: dict = {}


def _no_rows(width: int, dtype) -> np.ndarray:
    """A read-only (0, width) array: the driver argument for activations a call does not use."""
    key = (width, np.dtype(dtype).str)
    a = _NO_ROWS.get(key)
    if a is None:
        a = _NO_ROWS.setdefault(key, _readonly(np.empty((0, width), dtype)))
    return a


def _inputs(x2: np.ndarray, w: QTensor, activations: str, tiled: bool):
    """(rounded, xf) for the driver from float32 rows x2 (n, n_in): whether the driver rounds x2 to int8
    blocks for the type's integer kernels (the type has them and activations are rounded as llama.cpp
    rounds them); float rows (activations.for_weight: rounded or not, Q4_1/Q5_1 with block sums) for the
    float kernels, or an array of no rows when no group uses them."""
    rounded = activations == "llama.cpp" and w.qtype in INT_KERNELS
    if not rounded or (tiled and w.qtype not in gemm_int.GEMMS):
        xf = _readonly(np.ascontiguousarray(for_weight(x2, w.qtype, activations), np.float32))
    else:
        xf = _no_rows(_x_width(w), np.float32)
    return rounded, xf


def _kind(smallest: int, largest: int, direct_max: int) -> str:
    """The driver variant for groups of these sizes (see the drivers' comment)."""
    if largest == 1 and direct_max >= 1:
        return "one"
    return "wide" if smallest > direct_max else "mixed"


def _x_width(w: QTensor) -> int:
    """Values per row of float x the kernels take for w: n_in, plus n_in / 32 block sums for Q4_1/Q5_1."""
    n_in = w.shape[-1]
    return n_in + n_in // 32 if w.qtype in TILE_ROWS else n_in


def _index(a) -> np.ndarray:
    return _readonly(np.ascontiguousarray(a, dtype=np.int64))


def _threads_for(work: int, n_threads: int) -> int:
    """All threads for big products, one below PARALLEL_MIN_WORK multiply-adds: waking the pool
    costs 5-100 us (a virtual machine's idle vCPU is the slow case), more than a small product
    gains from a second thread."""
    return pool.use(n_threads if work >= PARALLEL_MIN_WORK else 1)


def _chunk_rows(n_out: int, n_in: int, n_items_other: int, batched: bool, n_threads: int) -> int:
    """Rows per work item: at least ~4 items per thread; with a batched group, a tile of at most
    TILE_BYTES (so it stays in L2), at most 64 rows and a multiple of 8 (the integer GEMM's panels,
    two of the float tiles' 4-row blocks); without, at most 256 rows."""
    per_item = -(-n_out * n_items_other // (4 * n_threads))
    if not batched:
        return int(max(1, min(256, per_item, n_out)))
    cap = max(8, min(64, TILE_BYTES // (4 * n_in)))
    return int(max(8, min(cap, per_item)) // 8 * 8)  # whole 8-row panels of the integer GEMM


_ONE_GROUP: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _one_group(n_tok: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(g_exp, g_off, members) of a plain matmul: one group, expert 0, tokens 0..n_tok-1."""
    v = _ONE_GROUP.get(n_tok)
    if v is None:
        v = (_index([0]), _index([0, n_tok]), _index(np.arange(n_tok)))
        if n_tok <= 4096:
            _ONE_GROUP[n_tok] = v
    return v


def _group_work(n_out: int, n_in: int, counts, direct_max: int = DIRECT_MAX) -> int:
    """Multiply-adds, counting a dequantized row as 4 token-rows' worth."""
    return int(sum(n_out * n_in * (c if c <= direct_max else c + 4) for c in counts))


# --- products


# How a call's tokens are grouped (`path`): None groups them as their number suggests (up to DIRECT_MAX
# tokens dot from the blocks, more share dequantized tiles); "rows" always dots from the blocks (one
# unpacking of each row for the whole group), "tiles" always goes through tiles. Either fixed path computes each token's row
# exactly as it would in a call of any other size (the batch invariance engine/batching.py relies on:
# a decode token's row does not depend on what else is in the step).
PATHS = (None, "rows", "tiles")


def _direct_max(path) -> int:
    """Groups of up to this many tokens dot from the blocks on `path`: DIRECT_MAX by default, every
    group on "rows" (`dot_rows_multi`: each row unpacked once for all of the group's tokens, each
    token's arithmetic that of a lone token), none on "tiles"."""
    if path not in PATHS:
        raise ValueError(f"unknown product path {path!r}; known: rows, tiles")
    return {None: DIRECT_MAX, "rows": ROWS_MAX, "tiles": 0}[path]


def matmul(x, w: QTensor, n_threads: int, path=None, activations: str = "f32") -> np.ndarray:
    """y = x @ W.T for W (n_out, n_in): x (n_tok, n_in) -> (n_tok, n_out), x (n_in,) -> (n_out,).
    `path`: how the tokens are grouped (PATHS); `activations`: "llama.cpp" rounds x as llama.cpp does
    (int8 blocks and integer dot products where the type has them), "f32" keeps it exact."""
    x = np.asarray(x, dtype=np.float32)
    n_tok = x.shape[0] if x.ndim == 2 else 1
    key = (n_tok, path, activations, n_threads)
    plans = _plans_of(w)
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = _MatmulPlan(w, n_tok, path, activations, n_threads)
    if x.ndim not in (1, 2) or x.shape[-1] != plan.n_in:
        raise ValueError(f"matmul: x has shape {x.shape}, weight {w.name or ''} expects (..., {plan.n_in})")
    x2 = x.reshape(n_tok, plan.n_in)
    if not x2.flags.c_contiguous:
        x2 = np.ascontiguousarray(x2)
    x2 = x2.view()
    x2.flags.writeable = False
    out = np.empty((n_tok, plan.n_out), np.float32)
    if n_tok and plan.n_out:
        xf = plan.xf
        if xf is None:
            xf = _readonly(np.ascontiguousarray(for_weight(x2, w.qtype, activations), np.float32))
        pool.use(plan.nt)
        plan.fn(plan.w3, x2, xf, plan.g_exp, plan.g_off, plan.members, plan.members, out, plan.chunk,
                plan.direct_max)
    return out.reshape(plan.n_out) if x.ndim == 1 else out


class _MatmulPlan:
    """What a plain product of a weight with n_tok tokens passes to its driver, worked out once: a
    decode token makes ~120 products, and working these out each time cost ~5 us a product."""

    def __init__(self, w: QTensor, n_tok: int, path, activations: str, n_threads: int):
        d, self.w3 = _prepared(w, 2)
        self.n_out, self.n_in = w.shape
        self.g_exp, self.g_off, self.members, self.direct_max, tiled = _plain_groups(n_tok, path)
        rounded = activations == "llama.cpp" and w.qtype in INT_KERNELS
        # float x for the float kernels, made per call; none when only the integer kernels run
        self.xf = None if not rounded or (tiled and w.qtype not in gemm_int.GEMMS) else _no_rows(_x_width(w),
                                                                                               np.float32)
        self.nt = _threads_for(self.n_out * self.n_in * (n_tok + 4 * (len(self.g_off) - 1) * tiled), n_threads)
        self.chunk = _chunk_rows(self.n_out, self.n_in, len(self.g_off) - 1, tiled, self.nt)
        fn = d._fn((rounded, _kind(n_tok, n_tok, self.direct_max)))
        self.fn = fn.fn if fn.ready else fn  # the jitted driver itself once it is compiled


_PLANS: dict = {}


def _plans_of(w: QTensor) -> dict:
    """The plans of a weight ({key: plan}), kept while the weight lives (by id, checked by a weak reference)."""
    e = _PLANS.get(id(w))
    if e is not None and e[0]() is w:
        return e[1]
    i = id(w)

    def gone(ref, i=i):
        if _PLANS.get(i, (None,))[0] is ref:
            del _PLANS[i]

    e = _PLANS[i] = (weakref.ref(w, gone), {})
    return e[1]


_PLAIN_GROUPS: dict = {}


def _plain_groups(n_tok: int, path):
    """(g_exp, g_off, members, direct_max, tiled) of a plain matmul of n_tok tokens on `path`, built
    once per (n_tok, path): every decode step of a batched server asks for the same few."""
    key = (n_tok, path)
    v = _PLAIN_GROUPS.get(key)
    if v is None:
        g_exp, g_off, members = _one_group(n_tok)
        direct_max = _direct_max(path)
        v = (g_exp, g_off, members, direct_max, n_tok > direct_max)
        if n_tok <= 4096:
            _PLAIN_GROUPS[key] = v
    return v


def matmul_experts(x, w: QTensor, ids, n_threads: int, path=None, activations: str = "f32") -> np.ndarray:
    """x (n_tok, n_in) shared by the chosen experts or (n_tok, n_used, n_in); W (n_expert, n_out, n_in);
    ids (n_tok, n_used) -> (n_tok, n_used, n_out). Only the chosen experts' rows are read: the
    (token, slot) pairs are grouped by expert and every group is one set of work items of a single
    parallel call (dynamically scheduled, as groups differ in size)."""
    d, data = _prepared(w, 3)
    n_expert, n_out, n_in = w.shape
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"matmul_experts: ids must be integers (n_tok, n_used), got {ids.dtype} {ids.shape}")
    n_tok, n_used = ids.shape
    x = np.asarray(x, dtype=np.float32)
    if x.shape == (n_tok, n_in):
        x2, shared = x, True
    elif x.shape == (n_tok, n_used, n_in):
        x2, shared = x.reshape(n_tok * n_used, n_in), False
    else:
        raise ValueError(f"matmul_experts: x has shape {x.shape}; "
                         f"expected ({n_tok}, {n_in}) or ({n_tok}, {n_used}, {n_in})")
    out = np.empty((n_tok, n_used, n_out), np.float32)
    n_pairs = n_tok * n_used
    if n_pairs == 0 or n_out == 0:
        return out
    flat = ids.reshape(-1).astype(np.int64)
    flat = np.where(flat < 0, flat + n_expert, flat)
    if flat.min() < 0 or flat.max() >= n_expert:
        raise IndexError(f"matmul_experts: expert id out of range for {n_expert} experts")
    # pair p = t * n_used + u writes out row p; group the pairs by expert
    order = np.argsort(flat, kind="stable")
    experts, counts = np.unique(flat[order], return_counts=True)
    g_off = np.zeros(len(experts) + 1, np.int64)
    np.cumsum(counts, out=g_off[1:])
    m_x = order // n_used if shared else order
    direct_max = _direct_max(path)
    tiled = bool(counts.max() > direct_max)
    x2 = _readonly(np.ascontiguousarray(x2))
    rounded, xf = _inputs(x2, w, activations, tiled)
    nt = _threads_for(_group_work(n_out, n_in, counts, direct_max), n_threads)
    chunk = _chunk_rows(n_out, n_in, len(experts), tiled, nt)
    kind = _kind(int(counts.min()), int(counts.max()), direct_max)
    args = (rounded, kind, data, x2, xf, _index(experts), _index(g_off), _index(m_x), _index(order),
            out.reshape(n_pairs, n_out), chunk, direct_max)
    if len(experts) > 1 and counts.min() != counts.max():
        with numba.parallel_chunksize(1):
            d.groups(*args)
    else:
        d.groups(*args)
    return out


def get_rows(w: QTensor, ids, n_threads: int) -> np.ndarray:
    """Rows `ids` (any shape) of a 2-D weight as float32 (*ids.shape, n_in); only those rows are read."""
    d, w3 = _prepared(w, 2)
    n_rows, n_in = w.shape
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"get_rows: ids must be integers, got {ids.dtype}")
    flat = ids.reshape(-1).astype(np.int64)
    out = np.empty((flat.size, n_in), np.float32)
    if flat.size:
        flat = np.where(flat < 0, flat + n_rows, flat)
        if flat.min() < 0 or flat.max() >= n_rows:
            raise IndexError(f"get_rows: row id out of range for {n_rows} rows")
        d.dequant(w3, 0, _index(flat), out)
    return out.reshape(*ids.shape, n_in)
