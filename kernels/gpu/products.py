"""Quantized products on the device: `upload`, `matmul`, `matmul_experts`, `get_rows`.

Weights are uploaded once, as the GGUF file stores them: the GGML blocks of each row, byte for byte,
no repacking (`DeviceTensor`). The kernels (src/products.cl, decoders in src/quant_blocks.h,
quant_legacy.h, quant_kquants.h) read those blocks directly, 32 elements ("a unit") at a time. The
products family is compiled once per weight type (`-DQTYPE=<ggml id>`), so only the types a model
uses are built.

Which kernel runs:

    n_tok <= 8 (decode)   matrix-vector: each weight unit decoded once, dotted with every token.
                          In "llama.cpp" mode for the 13 block types this is the *integer path*
                          (as llama.cpp's GPU mmvq): the activations are quantized once per product
                          into int8 codes + a scale per block (x_quant), the weight unit into int8
                          codes + per-16/32 scales (and mins), and the dots are DP4A integer sums
                          scaled per (sub-)block. Otherwise (f32 mode, F32/F16/BF16 weights, or
                          `use_dp4a = False`) the *float path*: decoded codes times float x.
    n_tok > 8 (prompts)   tiled matrix-matrix, float path: a work-group decodes a 64-row x 64-element
                          tile of weights once into shared memory and multiplies it by 32 tokens.
    experts               the same kernels with the expert id of each (token, slot) read from device
                          memory: one matrix-vector per pair for n_tok <= 8; for prompts the pairs
                          are grouped by expert on the device (moe_group) and tiled.

Activations, "llama.cpp" mode: rounded on the device exactly as quant/activations.py rounds them
(llama.cpp's CPU vec_dot types: Q8_0/Q8_1 blocks of 32 with d = f16(amax / 127) and q = rint(x * 127
/ amax); Q8_K blocks of 256 with iscale = -127 / (signed largest), q = min(127, rint(iscale * x)),
d = 1 / iscale; f16 / bf16 rounding for F16 / BF16 weights; nothing for F32), once per product. The
float path multiplies the rounded values d * q, the integer path the codes, so both equal the NumPy
reference up to the order of the float sums. "f32" mode: x exact, float path everywhere.
"""

from __future__ import annotations

import numpy as np

from kernels.base import KernelError
from quant import GGMLType, QTensor, quant_type

from .array import DArray, DeviceTensor

T = GGMLType
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
BLOCK_TYPES = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
               T.IQ4_NL, T.IQ4_XS, T.MXFP4)
PRODUCT_TYPES = FLOAT_TYPES + BLOCK_TYPES   # every type with kernels (src/quant_blocks.h)
# how llama.cpp rounds x for each block type: blocks of 32 (Q8_0 / Q8_1) or of 256 (Q8_K)
X_BLOCK = {t: 256 if quant_type(t).block_elems == 256 else 32 for t in BLOCK_TYPES}

# geometry, as src/products.cl defines it
MV_WG, MV_TPR, MV_MAXT = 64, 32, 8
MV_RPW = MV_WG // MV_TPR
MM_TM, MM_TN, MM_WG = 64, 32, 128
XQ_WG = 64
MOE_WG, MOE_MAX_EXPERT = 256, 512
UPLOAD_CHUNK = 1 << 28   # bytes per write of a large weight (progress bar steps)
GET_ROWS_WG = 64
MAX_GRID_Y = 65535       # CUDA's limit on the second grid dimension


def _check_type(qtype) -> GGMLType:
    try:
        t = GGMLType(qtype)
    except ValueError:
        raise KernelError(f"GGML type id {int(qtype)} has no device kernels") from None
    if t not in PRODUCT_TYPES:
        raise KernelError(f"GGML type {t.name} has no device kernels; supported: "
                          + ", ".join(x.name for x in PRODUCT_TYPES))
    return t


def _defines(t: GGMLType) -> dict:
    return {"QTYPE": int(t)}


class ProductOps:
    """Mixin of DeviceBackend (needs `launch`, `empty`, `asarray`, `ints`, `rt`, `activations`)."""

    use_dp4a = True   # the integer path at decode sizes in "llama.cpp" mode (False: float path)

    # ------------------------------------------------------------------ weights
    def upload(self, t) -> DeviceTensor:
        """Copy a QTensor's GGML storage to the device once, unchanged (block layout, no repack)."""
        if isinstance(t, DeviceTensor):
            return t
        qt = _check_type(t.qtype)
        from .backend import progress

        raw = np.ascontiguousarray(t.data).reshape(-1).view(np.uint8)
        buf = self.rt.alloc(raw.nbytes)
        for off in range(0, raw.nbytes, UPLOAD_CHUNK):
            self.rt.write(buf, raw[off:off + UPLOAD_CHUNK], off)
            progress(min(off + UPLOAD_CHUNK, raw.nbytes), raw.nbytes, f"uploading {t.name or 'weight'}")
        self._uploaded += raw.nbytes
        return DeviceTensor(qt, tuple(t.shape), quant_type(qt).row_bytes(t.shape[-1]), buf, raw.nbytes, t.name)

    def _weight(self, w) -> DeviceTensor:
        if isinstance(w, DeviceTensor):
            _check_type(w.qtype)
            return w
        if isinstance(w, QTensor):
            return self.upload(w)   # convenience (tests): a model uploads its weights once at load
        raise TypeError(f"a product needs a weight from upload(), not {type(w).__name__}")

    # ------------------------------------------------------------------ activations
    def _x2d(self, x, n_in: int, what: str) -> DArray:
        x = self.asarray(x)
        if x.dtype != np.float32:
            raise TypeError(f"{what}: activations must be float32, not {x.dtype}")
        if x.shape[-1] != n_in:
            raise ValueError(f"{what}: x of shape {x.shape} for a weight of {n_in} inputs")
        return x.reshape(-1, n_in)

    def _integer_path(self, t: GGMLType) -> bool:
        return self.activations == "llama.cpp" and self.use_dp4a and t in BLOCK_TYPES

    def _rounded(self, x: DArray, t: GGMLType) -> DArray:
        """x (rows, n_in) as the float path multiplies it: rounded like llama.cpp, or unchanged."""
        if self.activations != "llama.cpp" or t == T.F32:
            return x
        out = self.empty(x.shape)
        if t in FLOAT_TYPES:
            self.launch("products", "x_half", x.size, 256, x, out, x.size, defines=_defines(t))
        else:
            n_chunks = x.size // 32
            self.launch("products", "x_quant", n_chunks, XQ_WG, x, out, None, None, n_chunks, 1, 0,
                        defines=_defines(t))
        return out

    def _codes(self, x: DArray, t: GGMLType) -> tuple[DArray, DArray]:
        """x (rows, n_in) quantized for the integer path: int8 codes, one float scale per block."""
        n_chunks = x.size // 32
        xq = self.empty((x.size,), np.int8)
        xd = self.empty((x.size // X_BLOCK[t],))
        self.launch("products", "x_quant", n_chunks, XQ_WG, x, None, xq, xd, n_chunks, 0, 1, defines=_defines(t))
        return xq, xd

    def round_activations(self, x, qtype) -> DArray:
        """x rounded as llama.cpp's CPU rounds it for `qtype` weights (quant.activations), on the device.
        The products do this themselves; exposed for tests and for callers that reuse one rounding."""
        t = _check_type(qtype)
        x = self.asarray(x)
        if t in BLOCK_TYPES and x.shape[-1] % X_BLOCK[t]:
            raise ValueError(f"rows of {x.shape[-1]} do not split into {t.name}'s activation blocks of {X_BLOCK[t]}")
        if t == T.F32:
            return x
        saved, self.activations = self.activations, "llama.cpp"
        try:
            return self._rounded(x.reshape(-1, x.shape[-1]), t).reshape(x.shape)
        finally:
            self.activations = saved

    # ------------------------------------------------------------------ products
    def matmul(self, x, w, bias=None, path=None) -> DArray:
        """y = x @ W.T (+ bias): x (n_tok, n_in) or (n_in,), w (n_out, n_in) -> (n_tok, n_out) or (n_out,).
        `path` (the CPU's token grouping, kernels/numba_cpu/products.PATHS) is accepted and not used: the
        device kernels are not batch-invariant (`batch_invariant = False`), which /props reports."""
        w = self._weight(w)
        if len(w.shape) != 2:
            raise ValueError(f"matmul: weight of shape {w.shape} (expected (n_out, n_in))")
        n_out, n_in = w.shape
        one_d = (x.ndim if isinstance(x, DArray) else np.ndim(x)) == 1
        x2 = self._x2d(x, n_in, "matmul")
        n_tok = x2.shape[0]
        bias = self._bias(bias, (n_out,), "matmul")
        y = self.empty((n_tok, n_out))
        if n_tok > 0:
            self._product(x2, w, bias, y, n_tok, n_out, n_in, experts=None)
        return y.reshape(n_out) if one_d else y

    def matmul_experts(self, x, w, ids, bias=None, path=None) -> DArray:
        """y[t, u] = x[t] (or x[t, u]) @ W[ids[t, u]].T (+ bias[ids[t, u]]).

        x (n_tok, n_in) shared by the slots, or (n_tok, n_used, n_in) one row per slot; w (n_expert,
        n_out, n_in); ids (n_tok, n_used) int32, a DArray on the device (read there: no host round
        trip) or host integers (checked, then uploaded). -> (n_tok, n_used, n_out). An id out of range
        on the device gives a NaN row."""
        w = self._weight(w)
        if len(w.shape) != 3:
            raise ValueError(f"matmul_experts: weight of shape {w.shape} (expected (n_expert, n_out, n_in))")
        n_expert, n_out, n_in = w.shape
        if n_expert > MOE_MAX_EXPERT or n_out * w.row_bytes >= 1 << 31:
            raise KernelError(f"matmul_experts: {n_expert} experts of {n_out} x {n_in} {w.qtype.name} (the device "
                              f"kernels take at most {MOE_MAX_EXPERT} experts of under 2 GiB each)")
        ids = self._expert_ids(ids, n_expert)
        n_tok, n_used = ids.shape
        x = self.asarray(x)
        if x.ndim not in (2, 3) or x.shape[:x.ndim - 1] != (n_tok, n_used)[:x.ndim - 1]:
            raise ValueError(f"matmul_experts: x of shape {x.shape} for ids of shape {ids.shape}")
        x_shared = x.ndim == 2
        x2 = self._x2d(x, n_in, "matmul_experts")
        bias = self._bias(bias, (n_expert, n_out), "matmul_experts")
        y = self.empty((n_tok, n_used, n_out))
        if n_tok * n_used > 0:
            self._product(x2, w, bias, y, n_tok, n_out, n_in, experts=(ids, n_used, x_shared, n_expert))
        return y

    def _product(self, x2, w: DeviceTensor, bias, y, n_tok, n_out, n_in, experts):
        t = w.qtype
        dfn = _defines(t)
        ids, n_used, x_shared, n_expert = experts if experts else (None, 1, 0, 0)
        expert_bytes = n_out * w.row_bytes if experts else 0
        n_pairs = n_tok * n_used
        if n_tok <= MV_MAXT:
            groups = -(-n_out // MV_RPW)
            grid = (groups * MV_WG, n_pairs if experts else 1)
            per = 1 if experts else n_tok
            tail = (n_out, w.row_bytes, per, bias is not None, ids, n_used, x_shared, n_expert, expert_bytes)
            if self._integer_path(t):
                xq, xd = self._codes(x2, t)
                self.launch("products", "mv_q", grid, (MV_WG, 1), xq, xd, w, bias, y, n_in, *tail, defines=dfn)
            else:
                self.launch("products", "mv_f", grid, (MV_WG, 1), self._rounded(x2, t), w, bias, y, n_in, *tail,
                            defines=dfn)
            return
        xr = self._rounded(x2, t)
        row_tiles = -(-n_out // MM_TM) * MM_WG
        if not experts:
            self.launch("products", "mm_f", (row_tiles, -(-n_tok // MM_TN)), (MM_WG, 1), xr, w, bias, y, n_in, n_out,
                        w.row_bytes, n_tok, bias is not None, None, None, 1, 0, 0, 0, defines=dfn)
            return
        max_tiles = n_pairs // MM_TN + min(n_expert, n_pairs) + 1
        order = self.empty((n_pairs,), np.int32)
        tiles = self.empty((max_tiles, 3), np.int32)
        self.launch("products", "moe_group", MOE_WG, MOE_WG, ids, order, tiles, y, n_pairs, n_expert, max_tiles,
                    n_out, defines=dfn)
        self.launch("products", "mm_f", (row_tiles, max_tiles), (MM_WG, 1), xr, w, bias, y, n_in, n_out, w.row_bytes,
                    n_tok, bias is not None, order, tiles, n_used, x_shared, n_expert, expert_bytes, defines=dfn)

    def _bias(self, bias, shape, what):
        if bias is None:
            return None
        b = self.asarray(bias)
        if b.size != int(np.prod(shape)):
            raise ValueError(f"{what}: bias of shape {b.shape} (expected {shape})")
        return b

    def _expert_ids(self, ids, n_expert: int) -> DArray:
        if isinstance(ids, DArray):
            if ids.dtype != np.int32 or ids.ndim != 2:
                raise ValueError(f"matmul_experts: ids must be int32 (n_tok, n_used), not {ids.dtype} {ids.shape}")
            return ids
        a = np.asarray(ids)
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"matmul_experts: ids must be integers of shape (n_tok, n_used), not {a.dtype} {a.shape}")
        if a.size and (a.min() < 0 or a.max() >= n_expert):
            raise IndexError(f"matmul_experts: expert ids must be in 0..{n_expert - 1}, got {a.min()}..{a.max()}")
        return self.ints(a)

    # ------------------------------------------------------------------ embedding rows
    def get_rows(self, w, ids) -> DArray:
        """Rows `ids` of a 2-D weight as float32, ids.shape + (n_in,), bit-exact with quant's dequantizer.
        Host ids are checked (IndexError) with NumPy's negative indexing; device ids (int32 DArray) are
        read on the device, negatives count from the end, out of range gives a NaN row."""
        w = self._weight(w)
        if len(w.shape) != 2:
            raise ValueError(f"get_rows: weight of shape {w.shape} (expected (n_rows, n_in))")
        n_rows, n_in = w.shape
        if isinstance(ids, DArray):
            if ids.dtype != np.int32:
                raise ValueError(f"get_rows: device ids must be int32, not {ids.dtype}")
            dids, shape = ids, ids.shape
        else:
            a = np.asarray(ids)
            if not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"get_rows: ids must be integers, not {a.dtype}")
            if a.size and (a.min() < -n_rows or a.max() >= n_rows):
                raise IndexError(f"get_rows: row ids must be in -{n_rows}..{n_rows - 1}, got {a.min()}..{a.max()}")
            dids, shape = self.ints(np.where(a < 0, a + n_rows, a).reshape(-1)), a.shape
        n = int(np.prod(shape, dtype=np.int64))
        y = self.empty((*shape, n_in))
        if n:
            per_row = n_in if w.qtype in FLOAT_TYPES else n_in // 32
            self.launch("products", "get_rows", (per_row, min(n, MAX_GRID_Y)), (GET_ROWS_WG, 1), w, dids, y, n_rows,
                        n_in, w.row_bytes, n, defines=_defines(w.qtype))
        return y
