"""Pieces every architecture shares: GGUF tensors by name, the KV cache, FFN blocks, and the
decoder frame (DecoderModel) that qwen2, qwen3, qwen3moe, phi3 and gemma2 fill in.

Tensors are reached by their GGUF names (tinygrad style), so loading needs no name-mapping table:
`w.blk[3].attn_q` is `blk.3.attn_q.weight`, `w.blk[3].attn_q_bias` is `blk.3.attn_q.bias`.
`Weights.unused()` lists what a model never touched, which a test uses to prove nothing was skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from engine.gguf_file import GGUF, GGUFError
from quant import GGMLType, QTensor

# GGML types kept as plain float vectors (norm weights, biases, sinks): everything else is a matrix
_VECTOR_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


class _Tensors:
    """Attribute access to the tensors under one prefix (`""` or `"blk.3."`)."""

    def __init__(self, weights: "Weights", prefix: str):
        self._w, self._prefix, self._absent = weights, prefix, set()

    def _name(self, attr: str) -> str:
        return f"{self._prefix}{attr[:-5]}.bias" if attr.endswith("_bias") else f"{self._prefix}{attr}.weight"

    def __getattr__(self, attr: str):
        if attr.startswith("_"):
            raise AttributeError(attr)
        t = self._w.get(self._name(attr))
        # kept as a plain attribute: a decode token looks up ~6 tensors a layer, ~1.5 us each through here
        # (a model's placement does not change once loaded)
        self.__dict__[attr] = t
        return t

    def has(self, attr: str) -> bool:
        return self._name(attr) in self._w.gguf.tensors

    def get(self, attr: str, default=None):
        t = self.__dict__.get(attr)  # a tensor looked up before (see __getattr__)
        if t is not None:
            return t
        if attr in self._absent:  # (an optional tensor a layer asks for every token, e.g. a bias)
            return default
        if self.has(attr):
            return getattr(self, attr)
        self._absent.add(attr)
        return default


class Weights(_Tensors):
    """A model's tensors on the backends of a `Placement`: matrices stay quantized (`backend.upload`),
    1-D and small float tensors become float32 backend arrays. Each tensor is prepared once per
    backend; `blk.N.*` tensors go to layer N's backend, `output*` to the output's, the rest
    (token embeddings) to the input's."""

    def __init__(self, gguf: GGUF, place: "Placement", n_layer: int):
        self.gguf, self.place, self._cache, self._used = gguf, place, {}, set()
        super().__init__(self, "")
        self.blk = [_Tensors(self, f"blk.{i}.") for i in range(n_layer)]

    def _info(self, name: str):
        info = self.gguf.tensors.get(name)
        if info is None:
            raise GGUFError(self.gguf.path, f"missing tensor {name!r}")
        self._used.add(name)
        return info

    def get(self, name: str, backend=None):
        be = backend or self.place.backend_for(name)
        key = (name, id(be))
        if key not in self._cache:
            t = self._info(name).load()
            if len(t.shape) == 1 and t.qtype in _VECTOR_TYPES:
                self._cache[key] = be.asarray(t.dequantize())
            else:
                self._cache[key] = be.upload(t)
        return self._cache[key]

    def floats(self, name: str, backend=None):
        """A float tensor of any rank (e.g. per-expert biases (n_expert, n)) as a float32 backend array."""
        be = backend or self.place.backend_for(name)
        key = (name, id(be), "f32")
        if key not in self._cache:
            self._cache[key] = be.asarray(self._info(name).load().dequantize())
        return self._cache[key]

    def rows(self, name: str, start: int, stop: int, backend=None):
        """Rows start..stop of a tensor, prepared like `get`: how a fused weight (Phi-3's attn_qkv,
        its gate+up ffn_up) becomes separate Q/K/V or gate/up weights at load time. Each row of a
        GGML matrix is stored on its own, so a matrix slice is a zero-copy view of the file's blocks
        and the products are exactly those of the fused weight; a bias is sliced the same way."""
        be = backend or self.place.backend_for(name)
        key = (name, id(be), start, stop)
        if key not in self._cache:
            t = self._info(name).load()
            if not 0 <= start < stop <= t.shape[0]:
                raise GGUFError(self.gguf.path, f"tensor {name!r} has {t.shape[0]} rows, not {start}..{stop}")
            if len(t.shape) == 1:
                self._cache[key] = be.asarray(t.dequantize()[start:stop])
            else:
                part = QTensor(t.qtype, (stop - start, *t.shape[1:]), t.data[start:stop], f"{name}[{start}:{stop}]")
                self._cache[key] = be.upload(part)
        return self._cache[key]

    def stacked(self, names: list[str], backend=None):
        """One matrix holding the rows of the matrices `names` one after another (a copy, made once), for
        a backend that fuses products (`fuses_products`): Q/K/V or gate/up then take one product
        instead of two or three, and each row's result is what the separate product gives (rows are
        computed independently). None where the backend does not fuse or the matrices differ in type
        or row width (the caller then uses them separately)."""
        be = backend or self.place.backend_for(names[0])
        if not getattr(be, "fuses_products", False) or any(self.place.backend_for(n) is not be for n in names):
            return None
        key = (tuple(names), id(be), "stacked")
        if key not in self._cache:
            parts = [self._info(n).load() for n in names]
            t0 = parts[0]
            if len(t0.shape) != 2 or any(t.qtype != t0.qtype or len(t.shape) != 2 or t.shape[1] != t0.shape[1]
                                         for t in parts):
                self._cache[key] = None
            else:
                rows = sum(t.shape[0] for t in parts)
                data = np.concatenate([np.asarray(t.data) for t in parts])
                self._cache[key] = be.upload(QTensor(t0.qtype, (rows, t0.shape[1]), data, "+".join(names)))
        return self._cache[key]

    def stacked_bias(self, names: list[str], backend=None):
        """The biases `names` one after another as a float32 backend array (all present), else None."""
        if not all(n in self.gguf.tensors for n in names):
            return None
        be = backend or self.place.backend_for(names[0])
        return be.asarray(np.concatenate([self._info(n).load().dequantize().reshape(-1) for n in names]))

    def raw(self, name: str):
        """The QTensor itself, on the host."""
        self._used.add(name)
        return self.gguf.tensor(name)

    def unused(self) -> set[str]:
        return set(self.gguf.tensors) - self._used


class Placement:
    """Which backend runs what: the input embedding, each layer, the output head.

    One backend runs everything unless a device backend is given `n_gpu_layers` below the layer
    count plus one (llama.cpp's -ngl N): then, as llama.cpp assigns them, the last N layers run on
    the device and the others on `host` (the CPU backend); the output layer counts as layer
    n_layer, so it is on the device only when N > n_layer. The input embedding stays on the host
    unless everything is on the device. Activations cross a boundary once per forward pass.
    """

    def __init__(self, main, n_layer: int, n_gpu_layers: int | None = None, host=None):
        on_device = getattr(main, "is_device", False)
        n = n_layer + 1 if n_gpu_layers is None or n_gpu_layers < 0 or not on_device else min(n_gpu_layers, n_layer + 1)
        if on_device and n < n_layer + 1 and host is None:
            raise ValueError("a partial offload needs a host backend for the layers left on the CPU")
        self.main, self.host = main, host if n < n_layer + 1 else main
        first_dev = n_layer - min(n, n_layer)  # layers >= first_dev run on `main`
        self.layers = [main if i >= first_dev else self.host for i in range(n_layer)]
        self.output = main if n > n_layer else self.host
        self.input = main if n == n_layer + 1 else self.host
        self.n_gpu_layers = n if on_device else 0

    @property
    def single(self):
        """The one backend that runs everything, or None for a split model."""
        bes = {id(b) for b in (*self.layers, self.output, self.input)}
        return self.main if len(bes) == 1 else None

    def backends(self) -> list:
        seen, out = set(), []
        for b in (self.input, *self.layers, self.output):
            if id(b) not in seen:
                seen.add(id(b))
                out.append(b)
        return out

    def backend_for(self, name: str):
        if name.startswith("blk."):
            return self.layers[int(name.split(".")[1])]
        if name.startswith("output"):
            return self.output
        return self.input


class Pass:
    """One forward pass over a placement: the token ids and positions on the backends that need
    them (`backend.ints`, which a captured CUDA graph refills at replay), and the activations moved
    when the next layer runs on another backend."""

    def __init__(self, place: Placement, tokens, positions, view=None):
        """`positions`: the tokens' positions (n,), or an int: the position of the first of them.
        `view(backend)`: the backend as the model's code should see it (a batched pass's, see
        engine/batching.py); activations move between the backends themselves."""
        self.place, self._view = place, view or (lambda be: be)
        self._tokens = np.asarray(tokens, np.int32).reshape(-1)
        if np.ndim(positions) == 0:
            positions = np.arange(int(positions), int(positions) + len(self._tokens))
        self._pos = np.asarray(positions, np.int32).reshape(-1)
        self._pos_on: dict[int, object] = {}

    def input(self):
        """(backend, token ids on it) for the embedding lookup."""
        be = self.place.input
        return self._view(be), be.ints(self._tokens, "tokens")

    def positions(self, be):
        if id(be) not in self._pos_on:
            self._pos_on[id(be)] = be.ints(self._pos, "pos")
        return self._pos_on[id(be)]

    @staticmethod
    def move(h, be):
        src = getattr(h, "be", None)
        if src is be:
            return h
        host = src.to_numpy(h) if src is not None else h
        return be.asarray(host)

    def layer(self, i: int, h):
        """(backend of layer i, h on it, positions on it)."""
        be = self.place.layers[i]
        return self._view(be), self.move(h, be), self.positions(be)

    def output(self, h):
        be = self.place.output
        return self._view(be), self.move(h, be)


class KVCache:
    """Keys and values of every layer, for positions 0..n_ctx-1, on each layer's backend.

    k[l], v[l]: (n_ctx, n_head_kv, head_dim) backend arrays (`backend.new_kv`: f16 in llama.cpp mode,
    llama.cpp's default cache type, on the devices and on the CPU, kernels/numba_cpu/half.py). `n_past`
    counts the positions filled; a forward pass writes its tokens at n_past.. (`store`, through
    `backend.kv_store`, at the positions the pass gives) and then advances it.
    """

    pool: KVPool | None = None  # the pooled cache this one is a region of (batched serving), if any
    base = 0                     # the first row of that region

    def __init__(self, place: Placement, n_layer: int, n_ctx: int, n_head_kv: int, head_dim_k: int,
                 head_dim_v: int, pool: KVPool | None = None, base: int = 0):
        self.n_ctx, self.n_past = n_ctx, 0
        self.backends = place.layers
        if pool is None:
            self.k = [be.new_kv(n_ctx, n_head_kv, head_dim_k) for be in self.backends]
            self.v = [be.new_kv(n_ctx, n_head_kv, head_dim_v) for be in self.backends]
        else:  # rows base..base+n_ctx-1 of the pool's arrays (views: writes land in the pool)
            self.pool, self.base = pool, base
            self.k = [a[base:base + n_ctx] for a in pool.k]
            self.v = [a[base:base + n_ctx] for a in pool.v]

    def check_room(self, n_new: int):
        if self.n_past + n_new > self.n_ctx:
            raise ContextFull(self.n_past, n_new, self.n_ctx)

    def store(self, layer: int, k, v, pos):
        """Write this step's k, v (n_tok, n_head_kv, d) at `pos`; return the keys/values attention reads."""
        be = self.backends[layer]
        return be.kv_store(self.k[layer], k, pos), be.kv_store(self.v[layer], v, pos)

    def rope_store(self, layer: int, be, q, k, v, pos, rope, q_scale=None):
        """RoPE on q and k (q then times q_scale), k and v into layer's cache at `pos`: (q, keys, values)
        for attention. One backend call where the backend has `rope_kv_store` (the Numba CPU backend: a
        decode token's two ropes and two stores were four kernel calls and ~10 us of Python a layer),
        else rope, rope and `store`."""
        fused = getattr(be, "rope_kv_store", None)
        if fused is not None:
            return fused(self.k[layer], self.v[layer], q, k, v, pos, rope, q_scale)
        q, k = rope_qk(be, q, k, pos, rope, q_scale)
        keys, values = self.store(layer, k, v, pos)
        return q, keys, values

    # --- what a forward pass asks of the cache it runs in (engine/batching.BatchCache answers the same
    # for several sequences in one pass)
    def positions(self, n: int) -> np.ndarray:
        return np.arange(self.n_past, self.n_past + n, dtype=np.int32)

    @staticmethod
    def view(be):
        """The backend as a pass over this cache uses it (itself; a batched pass's differs)."""
        return be

    def attend(self, layer: int, be, q, k, v, pos, **kw):
        """k, v into the cache at `pos`, then attention of q over what the cache holds."""
        keys, values = self.store(layer, k, v, pos)
        return be.attention(q, keys, values, pos, **kw)

    def advance(self, n: int):
        self.n_past += n

    @staticmethod
    def logit_rows(h, last_only: bool):
        """The rows whose logits the pass returns: the last token's, or all."""
        return h[-1:] if last_only else h

    def truncate(self, n: int):
        """Forget positions >= n (prefix reuse: keep a shared prompt prefix, recompute the rest)."""
        self.n_past = min(self.n_past, n)


class KVPool:
    """One cache array per layer for the sequences of a batch scheduler's slots: slot s owns rows
    s*n_ctx..(s+1)*n_ctx-1 (`caches()`: a KVCache over each region). A batched step then writes every
    sequence's keys and values with one `kv_scatter` and runs one attention call over the pool, each
    query token limited to its sequence's rows by `spans`, instead of a store and an attention call per
    sequence and layer. `kv_pos[j]` is row j's position within its sequence, so a token sees the rows
    it sees in its own cache, in the same order: the same scores and sums as alone."""

    def __init__(self, place: Placement, n_seq: int, n_ctx: int, n_head_kv: int, head_dim_k: int, head_dim_v: int):
        self.place, self.n_seq, self.n_ctx = place, n_seq, n_ctx
        self.shape = (n_head_kv, head_dim_k, head_dim_v)
        self.k = [be.new_kv(n_seq * n_ctx, n_head_kv, head_dim_k) for be in place.layers]
        self.v = [be.new_kv(n_seq * n_ctx, n_head_kv, head_dim_v) for be in place.layers]
        self.kv_pos = np.tile(np.arange(n_ctx, dtype=np.int64), n_seq)

    def caches(self) -> list[KVCache]:
        nh, dk, dv = self.shape
        return [KVCache(self.place, len(self.k), self.n_ctx, nh, dk, dv, pool=self, base=s * self.n_ctx)
                for s in range(self.n_seq)]


class ContextFull(ValueError):
    def __init__(self, n_past: int, n_new: int, n_ctx: int):
        super().__init__(f"context is full: {n_past} tokens in the cache + {n_new} new > n_ctx {n_ctx}")


def swa_layers_from_gguf(g: GGUF, prefix: str, n_layer: int, n_swa: int, default_period: int) -> tuple[bool, ...]:
    """Which layers use the sliding window: `{prefix}.attention.sliding_window_pattern` as per-layer
    bools or a period n (llama_hparams::set_swa_pattern: layer il is windowed iff il % n < n - 1)."""
    pattern = g.get(f"{prefix}.attention.sliding_window_pattern", default_period)
    if isinstance(pattern, (list, tuple, np.ndarray)):
        return tuple(bool(x) for x in pattern)[:n_layer]
    period = int(pattern)
    return tuple(n_swa > 0 and (period == 0 or il % period < period - 1) for il in range(n_layer))


def gated_ffn(be, x, gate, up, down, glu: str = "swiglu", gate_up=None):
    """down(act(gate x) * up x): SwiGLU with glu="swiglu" (silu), GeGLU with "geglu" (gelu)
    (llama.cpp LLM_FFN_PAR); the backend's glu op fuses the activation and the product. `gate_up`:
    the two stacked (Weights.stacked), one product whose halves are gate x and up x."""
    if gate_up is None:
        return be.matmul(getattr(be, glu)(be.matmul(x, gate), be.matmul(x, up)), down)
    y = be.matmul(x, gate_up)
    n_ff = y.shape[-1] // 2
    return be.matmul(getattr(be, glu)(be.asarray(y[:, :n_ff]), be.asarray(y[:, n_ff:])), down)


def moe_ffn(be, x, router, gate_exps, up_exps, down_exps, n_used: int, glu: str = "swiglu", norm: bool = True):
    """Mixtral-style experts: softmax over all router logits, top-k, renormalised weights
    (llama.cpp build_moe_ffn with norm_w), sum of the chosen experts' gated FFNs.
    x: (n_tok, n_embd) -> (n_tok, n_embd). Routing stays on the backend (expert ids never visit the
    host on a device); only the chosen experts' weights are read."""
    ids, w = be.moe_route(be.matmul(x, router), n_used, "softmax", norm=norm)   # (n_tok, n_used) each
    g = be.matmul_experts(x, gate_exps, ids)                                      # (n_tok, n_used, n_ff)
    u = be.matmul_experts(x, up_exps, ids)
    d = be.matmul_experts(getattr(be, glu)(g, u), down_exps, ids)                # (n_tok, n_used, n_embd)
    return be.moe_combine(d, w)


# --- the decoder frame shared by qwen2, qwen3, qwen3moe, phi3 and gemma2 (models/<arch>.py holds
# only what differs: its Params and its `layer`)


@dataclass(frozen=True)
class DecoderParams:
    """The hyperparameters every decoder reads alike (llama_model::load_hparams); an architecture's
    Params extends it with its own (RoPE, windows, experts, soft-caps)."""

    n_vocab: int         # rows of token_embd
    n_embd: int          # {arch}.embedding_length
    n_layer: int         # {arch}.block_count
    n_head: int          # {arch}.attention.head_count
    n_head_kv: int       # {arch}.attention.head_count_kv (default n_head)
    head_dim: int        # {arch}.attention.key_length (default n_embd / n_head)
    n_ctx_train: int     # {arch}.context_length
    rms_eps: float       # {arch}.attention.layer_norm_rms_epsilon

    @staticmethod
    def fields_from_gguf(g: GGUF, arch: str, rms_eps: float = 1e-6) -> dict:
        n_embd, n_head = int(g.require(f"{arch}.embedding_length")), int(g.require(f"{arch}.attention.head_count"))
        if "token_embd.weight" not in g.tensors:
            raise GGUFError(g.path, "missing tensor 'token_embd.weight'")
        return dict(
            n_vocab=g.tensors["token_embd.weight"].ne[1], n_embd=n_embd, n_layer=int(g.require(f"{arch}.block_count")), n_head=n_head,
            n_head_kv=int(g.get(f"{arch}.attention.head_count_kv", n_head)),
            head_dim=int(g.get(f"{arch}.attention.key_length", n_embd // n_head)),
            n_ctx_train=int(g.get(f"{arch}.context_length", 4096)),
            rms_eps=float(g.get(f"{arch}.attention.layer_norm_rms_epsilon", rms_eps)),
        )


@dataclass(frozen=True)
class QKV:
    """One layer's Q, K and V projections (weights and optional biases)."""

    q: object
    k: object
    v: object
    q_bias: object = None
    k_bias: object = None
    v_bias: object = None
    qkv: object = None       # the three stacked (Weights.stacked) where the backend fuses products
    qkv_bias: object = None

    def project(self, be, x, p: DecoderParams):
        """x (n, n_embd) -> q (n, n_head, head_dim), k and v (n, n_head_kv, head_dim)."""
        n = x.shape[0]
        if self.qkv is not None:
            y = be.matmul(x, self.qkv, self.qkv_bias)
            a, b = p.n_head * p.head_dim, (p.n_head + p.n_head_kv) * p.head_dim
            return (be.asarray(y[:, :a]).reshape(n, p.n_head, p.head_dim),
                    be.asarray(y[:, a:b]).reshape(n, p.n_head_kv, p.head_dim),
                    be.asarray(y[:, b:]).reshape(n, p.n_head_kv, p.head_dim))
        return (be.matmul(x, self.q, self.q_bias).reshape(n, p.n_head, p.head_dim),
                be.matmul(x, self.k, self.k_bias).reshape(n, p.n_head_kv, p.head_dim),
                be.matmul(x, self.v, self.v_bias).reshape(n, p.n_head_kv, p.head_dim))


def load_qkv(w: Weights, i: int, p: DecoderParams) -> QKV:
    """Layer i's projections as llama.cpp's create_tensor_qkv finds them: a fused `attn_qkv` (Phi-3)
    split into its Q, K and V rows (Weights.rows: zero-copy), or separate `attn_q/k/v`; biases
    (`attn_qkv.bias`, or `attn_{q,k,v}.bias` as Qwen 2 has them) where the file holds them."""
    L = w.blk[i]
    n_q, n_kv = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
    if not L.has("attn_qkv"):
        qkv = QKV(L.attn_q, L.attn_k, L.attn_v, L.get("attn_q_bias"), L.get("attn_k_bias"), L.get("attn_v_bias"))
        biases = [f"blk.{i}.attn_{x}.bias" for x in "qkv"]
        has_bias = [b in w.gguf.tensors for b in biases]
        if any(has_bias) and not all(has_bias):
            return qkv  # some biased, some not: kept apart
        stacked = w.stacked([f"blk.{i}.attn_{x}.weight" for x in "qkv"])
        if stacked is None or stacked.shape[0] != n_q + 2 * n_kv:
            return qkv
        return replace(qkv, qkv=stacked, qkv_bias=w.stacked_bias(biases) if all(has_bias) else None)
    name = f"blk.{i}.attn_qkv.weight"
    if w.gguf.tensors[name].ne[1] != n_q + 2 * n_kv:
        raise GGUFError(w.gguf.path, f"{name} has {w.gguf.tensors[name].ne[1]} rows; the heads need {n_q + 2 * n_kv}")
    bounds = ((0, n_q), (n_q, n_q + n_kv), (n_q + n_kv, n_q + 2 * n_kv))
    mats = [w.rows(name, a, b) for a, b in bounds]
    if L.has("attn_qkv_bias"):
        biases = [w.rows(f"blk.{i}.attn_qkv.bias", a, b) for a, b in bounds]
    else:
        biases = [L.get(f"attn_{x}_bias") for x in "qkv"]
    return QKV(*mats, *biases)


def attend(be, cache: KVCache, i: int, q, k, v, pos, rope, *, scale: float, q_scale: float | None = None,
           window: int = 0, softcap: float = 0.0, sinks=None):
    """RoPE on q and k, k and v into layer i's cache, attention over it: (n, n_head * head_dim).
    `q_scale` multiplies q after RoPE (Phi-3, Gemma 2 scale Q there and attend with scale 1, so the
    f16 rounding of Q in llama.cpp's attention sees the scaled values); `softcap` is Gemma 2's
    attention soft-capping (passed only when set: backends without it still run the others)."""
    extra = {"softcap": softcap} if softcap else {}
    if sinks is not None:
        extra["sinks"] = sinks
    rope_store = getattr(cache, "rope_store", None)
    if rope_store is not None:  # a sequence's own cache: RoPE and the cache write in one call where fused
        q, keys, values = rope_store(i, be, q, k, v, pos, rope, q_scale)
        o = be.attention(q, keys, values, pos, scale=scale, window=window, **extra)
        return o.reshape(q.shape[0], -1)
    q, k = rope_qk(be, q, k, pos, rope, q_scale)
    o = cache.attend(i, be, q, k, v, pos, scale=scale, window=window, **extra)
    return o.reshape(q.shape[0], -1)


def rope_qk(be, q, k, pos, rope, q_scale=None):
    """RoPE on q and k as separate backend calls, then q times q_scale: what `rope_kv_store` fuses."""
    q, k = be.rope(q, pos, rope), be.rope(k, pos, rope)
    return (q if q_scale is None else q * np.float32(q_scale)), k


class DecoderModel:
    """The model protocol (see models/__init__.py) for a pre-norm decoder: token embedding, n_layer
    blocks, output RMSNorm, LM head (`output.weight`, or the tied `token_embd.weight`; `output.bias`
    where present). An architecture sets `Params` and defines `load_layer` (prepare layer i's
    weights now, not on the first token; the Q/K/V projections are `self.qkv[i]`, see load_qkv)
    and `layer` (one block on backend `be`); `embed` and `logits` are hooks for embedding scaling
    and logit soft-capping."""

    Params: type = DecoderParams
    n_ctx: int | None = None  # the context the engine serves (set by Engine), not a cache's size

    def __init__(self, gguf: GGUF, backend, place: Placement | None = None):
        self.p = p = self.Params.from_gguf(gguf)
        gguf.prefetch()  # read the tensor data ahead while the weights are prepared
        self.place = place or Placement(backend, p.n_layer)
        self.w = w = Weights(gguf, self.place, p.n_layer)
        self.token_embd = w.get("token_embd.weight")
        self.output = w.output if w.has("output") else w.get("token_embd.weight", self.place.output)
        self.output_bias = w.get("output.bias") if w.has("output_bias") else None
        self.qkv = [load_qkv(w, i, p) for i in range(p.n_layer)]
        # gate and up stacked for one product (Weights.stacked), where the backend fuses products
        self.ffn_gate_up = [w.stacked([f"blk.{i}.ffn_gate.weight", f"blk.{i}.ffn_up.weight"])
                            if w.blk[i].has("ffn_gate") and w.blk[i].has("ffn_up") else None
                            for i in range(p.n_layer)]
        for i, L in enumerate(w.blk):
            self.load_layer(i, L)
        w.output_norm

    def load_layer(self, i: int, L) -> None:
        raise NotImplementedError

    def layer(self, be, i: int, L, h, pos, cache: KVCache):
        raise NotImplementedError

    def embed(self, be, tok):
        return be.get_rows(self.token_embd, tok)

    def logits(self, be, h):
        return be.matmul(h, self.output, self.output_bias)

    def new_cache(self, n_ctx: int) -> KVCache:
        p = self.p
        return KVCache(self.place, p.n_layer, n_ctx, p.n_head_kv, p.head_dim, p.head_dim)

    def new_caches(self, n_ctx: int, n: int) -> list[KVCache]:
        """`n` caches of `n_ctx` positions for the slots of a batch scheduler: regions of one KVPool
        where every backend takes attention spans, separate caches elsewhere."""
        if n > 1 and all(getattr(be, "attention_spans", False) for be in self.place.backends()):
            p = self.p
            return KVPool(self.place, n, n_ctx, p.n_head_kv, p.head_dim, p.head_dim).caches()
        return [self.new_cache(n_ctx) for _ in range(n)]

    def forward(self, tokens, cache: KVCache, last_only: bool = True, embeddings: bool = False):
        """Run `tokens` (n_tok,) at cache positions n_past..; return logits (1 or n_tok, n_vocab), or
        with `embeddings` the output-normed hidden states (llama.cpp's t_embd) instead. On a backend
        with a `compute_thread` (the Numba CPU backend) the pass runs on that one thread, whichever
        thread calls."""
        on = self.compute_thread()
        if on is not None:
            return on(self._forward, tokens, cache, last_only, embeddings)
        return self._forward(tokens, cache, last_only, embeddings)

    def compute_thread(self):
        """The runner of the backend's one compute thread (kernels/numba_cpu/compute_thread.py), or None."""
        on = getattr(self, "_on_thread", False)
        if on is False:
            on = self._on_thread = next((be.compute_thread for be in self.place.backends()
                                         if getattr(be, "compute_thread", None) is not None), None)
        return on

    def _forward(self, tokens, cache: KVCache, last_only: bool, embeddings: bool):
        n = len(tokens)
        cache.check_room(n)
        run = Pass(self.place, tokens, cache.positions(n), cache.view)
        be, tok = run.input()
        h = self.embed(be, tok)                                                   # (n, n_embd)
        for i, L in enumerate(self.w.blk):
            be, h, pos = run.layer(i, h)
            h = self.layer(be, i, L, h, pos, cache)
        cache.advance(n)
        be, h = run.output(h)
        h = cache.logit_rows(h, last_only)
        h = be.rms_norm(h, self.w.output_norm, self.p.rms_eps)
        return h if embeddings else self.logits(be, h)
