"""KV cache and attention on the device (mixin of `DeviceBackend`; kernels in src/attention.cl).

Semantics are `kernels.ops_numpy.NumpyOps.attention`: scores (q.k) * scale, causal mask
kv_pos <= q_pos, sliding window q_pos - kv_pos < window, optional per-head sinks as
ggml_soft_max_add_sinks, GQA (query head h reads kv head h // (n_head / n_head_kv)), and a query that
sees nothing gets zeros. Row j of a device cache holds position j, so no kv_pos array exists here.

The cache. `new_kv` allocates (n_ctx, n_head_kv, d) on the device: f16 in llama.cpp mode (the
cache type llama.cpp uses by default), f32 in f32 mode. `kv_store` writes the rows a forward pass
produced at positions read from device memory and returns the whole cache: attention bounds what it
reads by each query's position, so nothing about the current length is baked into a launch.

Why fixed launches. A decode step is captured once as a CUDA graph and replayed at every position
(see runtime_cuda.py), so grid sizes here depend only on n_tok and the cache capacity, never on
the position: work-groups whose keys are all invisible exit at once, and loops end at the last
visible key. The same sequence of launches is therefore right at positions 10, 11, 12, ...

Two kernels, chosen by n_tok:

* split-KV (decode, n_tok <= SPLIT_MAX_TOK). The cache is cut into chunks of 128 rows; work-group
  (chunk, head group, token) takes the query heads that share one kv head (up to 8 at once, so each
  K and V row is read once for all of them). Scores: K is staged through shared memory in slices of
  32 columns, read along rows (coalesced) and stored transposed, then one thread per key row sums
  its dot products with its neighbours' columns beside it (no bank conflicts). Weighted sum: threads
  across the head dimension read V rows directly (coalesced). A second small kernel (`attn_merge`)
  combines the chunks.
  - f32 mode, one pass (flash-decoding): each chunk writes its max m_c, its sum l_c of exp(s - m_c)
    and its partial output sum exp(s - m_c) V; the merge rescales by exp(m_c - M) and divides by
    the global sum (the sink's exp(sink - M) included).
  - llama.cpp mode, two passes: ggml without flash attention rounds each *normalised* probability
    to f16 before multiplying V, which needs the global max and sum first. Pass 1
    (`attn_split_scores_f16`) writes each visible score to a scratch (n_tok, n_head, n_kv) and the
    chunk's max and sum; pass 2 (`attn_split_pv_f16`) recomputes the global M and L from the chunk
    statistics (a few numbers per chunk), forms p = round_f16(exp(s - M) / L) exactly as the
    reference does and sums p V over its chunk; the merge adds the chunks. Keeping the scores costs
    4 bytes per (head, key), far less than reading the f16 K row again.
* tiled (prompts). Work-group (block of tokens, head group): its query rows are (token, head)
  pairs of the heads sharing a kv head (48 rows at head_dim 64, 12 at 256: `tiled_geometry`); K
  tiles (stored transposed, padded) and V tiles are staged in shared memory and shared by all rows;
  the tile loop runs from the block's first visible key to its last, and the output accumulators
  live in shared memory too (each owned by one thread). f32 mode: one pass, online softmax.
  llama.cpp mode: pass 0 computes each row's max and sum over all tiles, pass 1 recomputes the
  scores, rounds the normalised probabilities to f16 and multiplies V (the K tiles are read twice,
  the price of matching the reference's rounding).

Every accumulation is f32; in llama.cpp mode Q is rounded to f16 as it is loaded and K/V come from
the f16 cache. Head dimensions up to 256 (every model we load); larger ones raise a clear error.

PoCL (OpenCL on the CPU, where CI proves these kernels) miscompiled two earlier versions: a private
array kept across barriers inside a loop, and a pass loop around the tile loop, lost their values.
Hence the shapes above: accumulators that cross a barrier live in shared memory, and the two f16
passes of the tiled kernel are written out (`tiled_pass` called twice), not looped.

Inputs given on the host (positions, sinks, f32 K/V in tests) are uploaded here; a forward pass
that is captured as a CUDA graph passes device arrays, and host sinks are uploaded once and kept
(`_device_sinks`), so no upload happens inside a capture.
"""

from __future__ import annotations

import numpy as np

from kernels.ops_numpy import check_attention

from .array import DArray

F32 = np.float32

# launch geometry: must match the #defines of src/attention.cl
WG = 128            # ATT_WG: work-group of the split and tiled kernels
CH = 128            # ATT_CH: kv rows per chunk of the split kernels
HG = 8              # ATT_HG: query heads per split work-group
DMAX = 256          # largest head dimension (ATT_COLS * ATT_WG, and the split kernels' query buffer)
QBUF, KVBUF, SBUF, OBUF = 3072, 3072, 2048, 3072  # tiled kernel: floats of the query block, K/V tile,
#                                                    score tile and output block in shared memory
ROWS = 64           # tiled kernel: most query rows (tokens x heads) per work-group
MWG = 64            # ATT_MWG: work-group of the merge kernel
STORE_WG = 64
SPLIT_MAX_TOK = 4   # up to this many query tokens take the split-KV (decode) kernels


def tiled_geometry(group: int, dk: int, dv: int) -> tuple[int, int, int, int]:
    """(heads per work-group, their count per kv head, tokens per work-group, keys per tile) of the
    tiled kernel, within its shared-memory buffers."""
    rows = min(ROWS, QBUF // dk, OBUF // dv)
    hg = min(group, rows)
    n_hsub = -(-group // hg)
    bt = max(1, rows // hg)
    bk = max(1, min(64, KVBUF // dk - 1, KVBUF // dv, SBUF // (bt * hg)))
    return hg, n_hsub, bt, bk


class AttentionOps:
    """KV cache and attention ops of `DeviceBackend` (see the module doc)."""

    @property
    def half_attention(self) -> bool:
        """llama.cpp's default attention: f16 K/V cache, Q and normalised probabilities in f16."""
        return self.activations == "llama.cpp"

    @property
    def kv_dtype(self):
        return np.float16 if self.half_attention else np.float32

    # ------------------------------------------------------------------ cache
    def new_kv(self, n_ctx: int, n_head_kv: int, head_dim: int) -> DArray:
        """A zero-filled cache (n_ctx, n_head_kv, head_dim) on the device, f16 in llama.cpp mode."""
        if min(n_ctx, n_head_kv, head_dim) <= 0:
            raise ValueError(f"new_kv: bad cache shape ({n_ctx}, {n_head_kv}, {head_dim})")
        return self.zeros((n_ctx, n_head_kv, head_dim), self.kv_dtype)

    def kv_store(self, cache: DArray, x, pos) -> DArray:
        """Write x (n_tok, n_head_kv, d) f32 at rows pos (int32 (n_tok,), on the device) of `cache`,
        rounded to the cache's type; returns the cache. Positions held on the host are checked
        here; positions on the device outside the cache are skipped by the kernel."""
        self._check_cache(cache, "kv_store")
        x = self.asarray(x)
        if x.ndim != 3 or x.shape[1:] != cache.shape[1:]:
            raise ValueError(f"kv_store: rows {x.shape} do not fit a cache of {cache.shape}")
        n_tok = x.shape[0]
        if not isinstance(pos, DArray):
            host = np.asarray(pos).reshape(-1)
            if host.size and (host.min() < 0 or host.max() >= cache.shape[0]):
                raise ValueError(f"kv_store: positions {host.min()}..{host.max()} outside a cache of {cache.shape[0]}")
            pos = self.ints(host)
        if pos.size != n_tok or pos.dtype != np.int32:
            raise ValueError(f"kv_store: {pos.size} positions ({pos.dtype}) for {n_tok} rows (int32 wanted)")
        if n_tok:
            self._store(cache, x, pos)
        return cache

    def _store(self, cache: DArray, x: DArray, pos: DArray | None):
        row = cache.shape[1] * cache.shape[2]
        name = "kv_store_f16" if cache.dtype == np.float16 else "kv_store_f32"
        self.launch("attention", name, (row, x.shape[0]), (STORE_WG, 1), x, pos, cache, row, cache.shape[0],
                    pos is not None)

    def _check_cache(self, cache, what: str):
        if not isinstance(cache, DArray) or cache.ndim != 3:
            raise TypeError(f"{what}: the cache must be a device array (n_ctx, n_head_kv, d) from new_kv")
        if cache.dtype != self.kv_dtype:
            raise TypeError(f"{what}: a {cache.dtype} cache in {self.activations!r} mode "
                            f"(wants {np.dtype(self.kv_dtype)})")

    def _as_cache(self, a, what: str) -> DArray:
        """A K or V operand as a cache-typed device array: device caches pass through; f32 arrays
        (tests, or a caller without a cache) are converted once, rounded as the cache would."""
        if isinstance(a, DArray):
            if a.dtype == self.kv_dtype:
                return a
            if a.dtype != np.float32:
                raise TypeError(f"attention: {what} is {a.dtype}; wants {np.dtype(self.kv_dtype)} (or f32)")
            out = self.empty(a.shape, self.kv_dtype)
            self._store(out, a, None)
            return out
        host = np.ascontiguousarray(np.asarray(a, F32).astype(self.kv_dtype))
        out = self.empty(host.shape, self.kv_dtype)
        self.rt.write(out.buf, host)
        return out

    # ------------------------------------------------------------------ attention
    def attention(self, q, k, v, q_pos, *, scale: float, window: int = 0, sinks=None, kv_pos=None,
                  softcap: float = 0.0) -> DArray:
        """softmax(q k^T * scale, masked, sinks) v for q (n_tok, n_head, dk) against caches k, v
        (n_kv, n_head_kv, d) whose row j holds position j; q_pos int32 (n_tok,) on the device.
        softcap > 0 caps each raw score as cap * tanh(s / cap) before the scale (Gemma 2).
        Returns (n_tok, n_head, dv) f32 on the device."""
        q = self.asarray(q)
        k, v = (a if isinstance(a, DArray) else np.asarray(a, F32) for a in (k, v))
        check_attention(q, k, v)
        self._check_kv_pos(kv_pos, k.shape[0])
        n_tok, n_head, dk = q.shape
        n_kv, n_head_kv, dv = v.shape
        if max(dk, dv) > DMAX:
            raise ValueError(f"attention on the device supports head dimensions up to {DMAX}, not {max(dk, dv)}")
        k, v = self._as_cache(k, "k"), self._as_cache(v, "v")
        if not isinstance(q_pos, DArray):
            q_pos = self.ints(np.asarray(q_pos).reshape(-1))
        if q_pos.size != n_tok or q_pos.dtype != np.int32:
            raise ValueError(f"attention: {q_pos.size} query positions ({q_pos.dtype}) for {n_tok} tokens")
        if sinks is not None:
            sinks = self._device_sinks(sinks)
            if sinks.size != n_head:
                raise ValueError(f"attention: {sinks.size} sinks for {n_head} heads")
        out = self.empty((n_tok, n_head, dv))
        if n_tok == 0:
            return out
        window = int(window or 0)
        if n_tok <= SPLIT_MAX_TOK:
            self._split(q, k, v, q_pos, out, float(scale), window, sinks, float(softcap or 0.0))
        else:
            self._tiled(q, k, v, q_pos, out, float(scale), window, sinks, float(softcap or 0.0))
        return out

    def _device_sinks(self, sinks) -> DArray:
        """Sinks on the device: a model's host array is uploaded once and reused (keyed by value)."""
        if isinstance(sinks, DArray):
            return sinks
        host = np.ascontiguousarray(sinks, dtype=F32).reshape(-1)
        cache = self.__dict__.setdefault("_sinks_cache", {})
        key = host.tobytes()
        if key not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[key] = self.asarray(host)
        return cache[key]

    def _check_kv_pos(self, kv_pos, n_kv: int):
        if kv_pos is None:
            return
        kp = self.to_numpy(kv_pos) if isinstance(kv_pos, DArray) else np.asarray(kv_pos)
        if not np.array_equal(kp.reshape(-1), np.arange(n_kv)):
            raise ValueError("attention on the device reads row j of the cache as position j: kv_pos must be None "
                             "(or arange(n_kv)); ring buffers and holes are not supported")

    def _split(self, q, k, v, q_pos, out, scale, window, sinks, cap=0.0):
        n_tok, n_head, dk = q.shape
        n_kv, n_head_kv, dv = v.shape
        group = n_head // n_head_kv
        hg = min(group, HG)
        n_hsub = -(-group // hg)
        n_chunks = -(-n_kv // CH)
        grid = (n_chunks * WG, n_head_kv * n_hsub, n_tok)
        part_o = self.empty((n_tok, n_head, n_chunks, dv))
        part_m = self.empty((n_tok, n_head, n_chunks))
        part_l = self.empty((n_tok, n_head, n_chunks))
        common = (n_head, n_head_kv, n_kv)
        if self.half_attention:
            scores = self.empty((n_tok, n_head, n_kv))
            self.launch("attention", "attn_split_scores_f16", grid, (WG, 1, 1), q, k, q_pos, scores, part_m, part_l,
                        *common, dk, hg, n_hsub, window, scale, cap)
            self.launch("attention", "attn_split_pv_f16", grid, (WG, 1, 1), v, q_pos, scores, part_m, part_l, sinks,
                        part_o, *common, dv, hg, n_hsub, window, sinks is not None)
        else:
            self.launch("attention", "attn_split_f32", grid, (WG, 1, 1), q, k, v, q_pos, part_o, part_m, part_l,
                        *common, dk, dv, hg, n_hsub, window, scale, cap)
        self.launch("attention", "attn_merge", (MWG, n_head, n_tok), (MWG, 1, 1), part_o, part_m, part_l, q_pos,
                    sinks, out, n_head, n_kv, n_chunks, dv, window, sinks is not None, self.half_attention)

    def _tiled(self, q, k, v, q_pos, out, scale, window, sinks, cap=0.0):
        n_tok, n_head, dk = q.shape
        n_kv, n_head_kv, dv = v.shape
        hg, n_hsub, bt, bk = tiled_geometry(n_head // n_head_kv, dk, dv)
        name = "attn_tiled_f16" if self.half_attention else "attn_tiled_f32"
        self.launch("attention", name, (-(-n_tok // bt) * WG, n_head_kv * n_hsub), (WG, 1), q, k, v, q_pos, sinks,
                    out, n_tok, n_head, n_head_kv, n_kv, dk, dv, hg, n_hsub, bt, bk, window, scale, cap,
                    sinks is not None)
