"""Quantized products on the CPU with Numba: the backend operations over the compiled drivers.

`matmul`, `matmul_experts` and `get_rows` below are the backend operations, with exactly the
semantics of kernels.reference.NumpyBackend. They group a call's tokens (a plain product is one
group; a MoE product one group per chosen expert), pick the driver variant, the threads and the rows
per work item, and call the type's compiled driver (drivers.py: the row kernels, the integer GEMM, the
float tiles).

Threads: a product runs on all `n_threads` above PARALLEL_MIN_WORK multiply-adds. With GNU OpenMP's
default wait policy the workers are still spinning when the next of a token's ~200 products starts,
so waking them is cheap and even SmolLM2's 192x576 products gain from a second thread: SmolLM2 Q4_1
decode measured 31 t/s with a 2M threshold, 41 at 512K, 45 at 32K, no better below. (Under
OMP_WAIT_POLICY=PASSIVE a wake-up cost ~85 us on this VM and 2M was the break-even.)

A decode token makes ~120 plain products; what each passes to its driver is worked out once per
(weight, tokens, path) (`_MatmulPlan`).
"""

from __future__ import annotations

import weakref

# Numba's OpenMP threading layer reads OMP_WAIT_POLICY when it first starts its threads. We leave GNU
# OpenMP's default (spin briefly, then sleep): measured on 2 cores (SmolLM2 Q4_1, 2 x 5 runs each),
# PASSIVE was slower, pp128 380-390 vs 418-421 t/s and tg64 29.5-30.2 vs 31.2-31.3 t/s, as every one of
# a token's ~200 parallel regions then wakes sleeping workers. Users may still set it themselves.

import numpy as np  # noqa: E402

from quant import QTensor  # noqa: E402

from ..base import KernelError  # noqa: E402
from . import gemm_int, pool  # noqa: E402
from .activations import for_weight  # noqa: E402
from .drivers import (INT_KERNELS, KERNEL_HASH, ROW_KERNELS, TILE_ROWS, _TypeDrivers, dot_rows_multi,  # noqa: E402
                      drivers, pack_rows)

# the kernel tables and drivers are drivers.py's; named here too, where tests and tools look for them
__all__ = ["INT_KERNELS", "KERNEL_HASH", "ROW_KERNELS", "TILE_ROWS", "dot_rows_multi", "drivers", "pack_rows",
           "matmul", "matmul_experts", "get_rows", "PATHS"]

DIRECT_MAX = 4                  # groups of up to this many tokens dot straight from the blocks
# (a MoE prompt spreads its tokens thin: 16 tokens x top-4 of 32 experts is ~2 per expert, and
#  dequantizing a whole expert tile for 2 tokens cost more than dotting twice: gpt-oss-20b shape
#  pp16 7.3 -> 9.9 t/s going from 1 to 4)
EXPERT_DIRECT_MAX = 6           # the same for an expert's group in matmul_experts: since a group's last
# 1-2 tokens take the 1- and 2-token integer kernels, 5-6 tokens dot for less than a GEMM (16 tokens'
# MXFP4 expert product, 32 x 2880 x 2880: 10.4-10.8 -> 9.7-10.0 ms on skewed and uniform routings, 8
# no better). Plain products keep 4: at 5-6 tokens both ways measured alike for every type, and a plain
# prompt of more than 4 tokens takes the batch scheduler's prompt path (tiles), bit for bit.
ROWS_MAX = 1 << 30              # path="rows": every group dots from the blocks, however many tokens
TILE_BYTES = 512 << 10          # float32 bytes of a work item's dequantized tile (bigger groups)
PARALLEL_MIN_WORK = 1 << 15     # below this many multiply-adds (weights x tokens), run on one thread
PLANNED_MAX_TOKENS = 64         # products of up to this many tokens keep their plan (decode, batched steps)


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


def _prepared(w: QTensor, n_dims: int, arena=None) -> tuple["_TypeDrivers", np.ndarray]:
    """(drivers, storage as a read-only (n_expert, n_out, row) array) of a weight, made once per
    QTensor (a weak cache: it goes with the tensor). With an `arena` (host_memory.HugePageArena: the
    backend's weights="memory") the storage is a copy in 2 MB pages, made at the weight's first
    product; `get_rows` passes none, so a token embedding that is only looked up stays mapped."""
    try:
        p = _PREPARED.get(w)
    except TypeError:
        p = None
    if p is None or (arena is not None and not p[2]):
        if not isinstance(w, QTensor):
            raise KernelError(f"cpu backend: expected a QTensor weight, got {type(w).__name__}")
        if len(w.shape) != n_dims:
            raise ValueError(f"weight {w.name or ''} has shape {w.shape}, expected {n_dims} dimensions")
        d = drivers(w.qtype)  # raises KernelError for an unsupported type
        data = arena.copy(w.data) if arena is not None else _readonly(np.ascontiguousarray(w.data))
        if p is not None:  # looked up (get_rows) before its first product: plans anew
            _PLANS.pop(id(w), None)
        p = (d, data.reshape(1, *data.shape) if n_dims == 2 else data, arena is not None)
        _PREPARED[w] = p
    elif len(w.shape) != n_dims:
        raise ValueError(f"weight {w.name or ''} has shape {w.shape}, expected {n_dims} dimensions")
    return p[0], p[1]


_NO_ROWS: dict = {}


def _no_rows(width: int, dtype) -> np.ndarray:
    """A read-only (0, width) array: the driver argument for activations a call does not use."""
    key = (width, np.dtype(dtype).str)
    a = _NO_ROWS.get(key)
    if a is None:
        a = _NO_ROWS.setdefault(key, _readonly(np.empty((0, width), dtype)))
    return a


def _modes(w: QTensor, activations: str, tiled: bool) -> tuple[bool, bool]:
    """(rounded, float x): whether the driver rounds x to int8 blocks for the type's integer kernels (the
    type has them and activations are rounded as llama.cpp rounds them), and whether some group takes
    the float kernels, which read float rows (activations.for_weight)."""
    rounded = activations == "llama.cpp" and w.qtype in INT_KERNELS
    return rounded, not rounded or (tiled and w.qtype not in gemm_int.GEMMS)


def _inputs(x2: np.ndarray, w: QTensor, activations: str, tiled: bool):
    """(rounded, xf) for the driver from float32 rows x2 (n, n_in) (`_modes`): xf the float rows
    (rounded or not, Q4_1/Q5_1 with block sums), or an array of no rows when no group uses them."""
    rounded, floats = _modes(w, activations, tiled)
    if floats:
        return rounded, _float_rows(x2, w, activations)
    return rounded, _no_rows(_x_width(w), np.float32)


def _float_rows(x2: np.ndarray, w: QTensor, activations: str) -> np.ndarray:
    return _readonly(np.ascontiguousarray(for_weight(x2, w.qtype, activations), np.float32))


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


def matmul(x, w: QTensor, n_threads: int, path=None, activations: str = "f32", arena=None) -> np.ndarray:
    """y = x @ W.T for W (n_out, n_in): x (n_tok, n_in) -> (n_tok, n_out), x (n_in,) -> (n_out,).
    `path`: how the tokens are grouped (PATHS); `activations`: "llama.cpp" rounds x as llama.cpp does
    (int8 blocks and integer dot products where the type has them), "f32" keeps it exact. `arena`: where
    the weight's bytes are copied at its first product (`_prepared`), None to read them where they are."""
    x = np.asarray(x, dtype=np.float32)
    n_tok = x.shape[0] if x.ndim == 2 else 1
    if n_tok <= PLANNED_MAX_TOKENS:
        key = (n_tok, path, activations, n_threads)
        plans = _plans_of(w)
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = _MatmulPlan(w, n_tok, path, activations, n_threads, arena)
    else:  # a prompt chunk: planning is nothing beside the product, and lengths vary without bound
        plan = _MatmulPlan(w, n_tok, path, activations, n_threads, arena)
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
            xf = _float_rows(x2, w, activations)
        pool.use(plan.nt)
        plan.fn(plan.w3, x2, xf, plan.g_exp, plan.g_off, plan.members, plan.members, out, plan.chunk,
                plan.direct_max)
    return out.reshape(plan.n_out) if x.ndim == 1 else out


class _MatmulPlan:
    """What a plain product of a weight with n_tok tokens passes to its driver, worked out once: a
    decode token makes ~120 products, and working these out each time cost ~5 us a product."""

    def __init__(self, w: QTensor, n_tok: int, path, activations: str, n_threads: int, arena=None):
        d, self.w3 = _prepared(w, 2, arena)
        self.n_out, self.n_in = w.shape
        self.g_exp, self.g_off, self.members, self.direct_max, tiled = _plain_groups(n_tok, path)
        rounded, floats = _modes(w, activations, tiled)
        # float x for the float kernels, made per call (None); an array of no rows when none runs
        self.xf = None if floats else _no_rows(_x_width(w), np.float32)
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


def matmul_experts(x, w: QTensor, ids, n_threads: int, path=None, activations: str = "f32",
                   arena=None) -> np.ndarray:
    """x (n_tok, n_in) shared by the chosen experts or (n_tok, n_used, n_in); W (n_expert, n_out, n_in);
    ids (n_tok, n_used) -> (n_tok, n_used, n_out). Only the chosen experts' rows are read: the
    (token, slot) pairs are grouped by expert and every group is one set of work items of a single
    parallel call (the groups ordered so that the threads' shares cost alike: `_balanced`). `arena`: as
    `matmul`'s."""
    d, data = _prepared(w, 3, arena)
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
    direct_max = EXPERT_DIRECT_MAX if path is None else _direct_max(path)
    tiled = bool(counts.max() > direct_max)
    nt = _threads_for(_group_work(n_out, n_in, counts, direct_max), n_threads)
    if nt > 1 and len(experts) > 1 and counts.min() != counts.max():
        experts, counts, order = _balanced(experts, counts, order, direct_max, nt)
    g_off = np.zeros(len(experts) + 1, np.int64)
    np.cumsum(counts, out=g_off[1:])
    m_x = order // n_used if shared else order
    x2 = _readonly(np.ascontiguousarray(x2))
    rounded, xf = _inputs(x2, w, activations, tiled)
    chunk = _chunk_rows(n_out, n_in, len(experts), tiled, nt)
    kind = _kind(int(counts.min()), int(counts.max()), direct_max)
    d.groups(rounded, kind, data, x2, xf, _index(experts), _index(g_off), _index(m_x), _index(order),
             out.reshape(n_pairs, n_out), chunk, direct_max)
    return out


def _group_cost(counts, direct_max: int):
    """A group of c tokens' cost per weight row, in token-rows: c + 1 where its tokens dot from the
    blocks (the row's unpacking ~ one token's dot), c + 4 where it dequantizes a tile."""
    return np.where(counts <= direct_max, counts + 1, counts + 4)


def _balanced(experts, counts, order, direct_max: int, nt: int):
    """The groups (experts, their pair counts, the pairs in group order) reordered so that each thread's
    share of the parallel loop costs about the same. The loop's items are (group, chunk of rows) in
    group order, and numba's OpenMP layer hands each thread one contiguous range of them, an equal
    number of items (static: `parallel_chunksize` only cuts that range finer -- measured, an uneven
    prange with chunk size 1 took as long as with 0). Groups weighed by `_group_cost` are dealt to the
    threads heaviest first, back and forth (1, 2, 2, 1, 1, 2...), and
    laid out thread by thread. A MoE prompt of 16 tokens puts 1-6 tokens on each of ~27 experts:
    in expert order the busier thread had ~6% more than the average (simulated over random routings;
    0.4% after)."""
    cost = _group_cost(counts, direct_max)
    heavy = np.argsort(-cost, kind="stable")
    lane = np.arange(len(heavy)) % (2 * nt)
    lane = np.where(lane < nt, lane, 2 * nt - 1 - lane)
    perm = heavy[np.argsort(lane, kind="stable")]
    if nt == 2:  # then the one swap between the halves that evens them most (an odd count's middle group is split)
        c = cost[perm]
        k = len(c) // 2
        d = c[:k].sum() - c[len(c) - k:].sum()
        after = np.abs(d - 2 * (c[:k, None] - c[None, len(c) - k:]))
        i, j = np.unravel_index(np.argmin(after), after.shape)
        if after[i, j] < abs(d):
            perm[[i, len(c) - k + j]] = perm[[len(c) - k + j, i]]
    g_off = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=g_off[1:])
    starts = np.repeat(g_off[perm], counts[perm])
    within = np.arange(len(order)) - np.repeat(np.cumsum(counts[perm]) - counts[perm], counts[perm])
    return experts[perm], counts[perm], order[starts + within]


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
