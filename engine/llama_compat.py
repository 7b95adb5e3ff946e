"""`Llama`: llama-cpp-python's high-level class, on this engine. Switching is one line:

    from llama_cpp import Llama        ->        from engine import Llama

The constructor takes llama-cpp-python 0.3's arguments with its defaults (n_ctx=512, seed, chat_format,
verbose=True, ...); the methods are its methods with its defaults (`max_tokens=16` for completions,
`temperature=0.2` for chat, ...) and return its dicts: OpenAI-style completions, chat completions and
embeddings, or iterators of chunk dicts with `stream=True` (shapes in engine/llama_responses.py).
Greedy text equals llama.cpp's, token for token (tests/test_llama_compat.py runs the same script
through both and compares).

Constructor arguments, by what happens to them:

* used: model_path, n_ctx (0: the model's training context), n_batch (embedding truncation and `eval`
  batches), n_threads, n_gpu_layers (as llama.cpp's -ngl: 0, the default, runs on the CPU; -1 puts
  every layer on the best GPU here (backend "auto", which falls back to the CPU); N the last N
  layers), main_gpu (the GPU's index, `python -m engine devices`), seed, chat_format, chat_handler,
  verbose, embedding, logits_all, last_n_tokens_size, pooling_type, spm_infill; and our own
  `backend=` ("auto", "cuda", "rocm", "opencl", "cpu", "numpy"), which names the backend outright.
* accepted and ignored, as llama-cpp-python ignores them on a CPU build (they spread work over
  several GPUs, or offload parts that always go with their layer here): split_mode, tensor_split,
  offload_kqv, op_offload.
* accepted and ignored because they tune llama.cpp's speed or memory, never an answer: n_ubatch,
  n_threads_batch (one thread count serves both here), use_mmap (False copies the weights into memory,
  as llama.cpp does, in 2 MB pages; True keeps the file's map; not given, Engine.load decides), use_mlock, numa,
  flash_attn, swa_full, no_perf, vocab_only (the weights are mapped lazily, so loading them costs
  nothing), lora_scale (meaningless without lora_path).
* refused with a ValueError naming them unless left at the value that means "not used": kv_overrides,
  lora_base, lora_path, draft_model, tokenizer, rope_scaling_type, rope_freq_base, rope_freq_scale,
  yarn_* overrides, attention_type (non-causal), type_k / type_v other than f16.
* other keywords: llama-cpp-python swallows unknown keywords silently; here they are ignored with a
  warning naming them, so that a typo does not go unnoticed.

Known differences from llama-cpp-python:

* repeat, presence and frequency penalties in completions and chat cover the prompt too, as in
  llama-server (llama-cpp-python's cover only generated tokens; `generate()` here does the same as it);
* a GGUF without a chat template is chatted with ChatML (llama.cpp's choice), not "llama-2";
* `suffix` uses the model's own fill-in-the-middle tokens and is refused for a model that has none;
* chat prompts get BOS where llama-server adds it, and messages of models that separate them (gpt-oss)
  come back with `reasoning_content` and parsed `tool_calls`;
* `tools` are parsed into `tool_calls` for every model family the engine knows (engine/tool_calls.py),
  not only when `tool_choice` names a function; `response_format` takes OpenAI's "json_schema" too;
* streamed tool calls are OpenAI's deltas (engine/llama_responses.py says why); logprob values are
  Python floats (llama-cpp-python's are NumPy float32s);
* `from_pretrained` fetches through the model store (engine/store), so `local_dir`/`cache_dir` are
  not used;
* `logprobs` work without `logits_all=True`; `embed` works without `embedding=True`;
* token-level embeddings (pooling "none", the default of generative models) are right for every
  input of a list (llama-cpp-python's offsets after the first input are wrong);
* not here: save_state / load_state, set_cache's caches (prefix reuse is built in), LoRA, draft
  models; `logits_processor` and `stopping_criteria` work in `generate()` but the completion
  methods refuse them with NotImplementedError (the engine samples without Python callbacks).
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
import sys
import time
import uuid
import warnings
from typing import Iterator, Sequence

import numpy as np

from . import llama_responses as R
from .engine import ContextLengthError, Engine

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.h: "random seed"
GGML_TYPE_F16 = 1

# llama_pooling_type -> Engine.embed's pooling (-1, unspecified: the model's own, see _model_pooling)
_POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last"}

# accepted without a warning: GPU placement, which llama-cpp-python ignores on a CPU build (main_gpu
# picks the device when a GPU backend is used; the others spread work over several GPUs) ...
_GPU_PLACEMENT = ("split_mode", "main_gpu", "tensor_split", "offload_kqv", "op_offload")
# ... and these tune llama.cpp's speed or memory only, never an answer
_SPEED_OR_MEMORY = ("n_ubatch", "n_threads_batch", "use_mmap", "use_mlock", "numa", "flash_attn", "swa_full",
                    "no_perf", "vocab_only", "lora_scale")
# refused unless at a value that means "not used": name -> (such values, what honouring it would take)
_REFUSED = {
    "kv_overrides": ((None, {}), "overriding GGUF metadata"),
    "lora_base": ((None,), "LoRA adapters"),
    "lora_path": ((None,), "LoRA adapters"),
    "draft_model": ((None,), "speculative decoding with a draft model"),
    "tokenizer": ((None,), "a tokenizer other than the GGUF's own"),
    "rope_scaling_type": ((None, -1), "overriding the GGUF's RoPE scaling"),
    "rope_freq_base": ((0.0,), "overriding the GGUF's RoPE base"),
    "rope_freq_scale": ((0.0,), "overriding the GGUF's RoPE scale"),
    "yarn_ext_factor": ((-1.0,), "overriding the GGUF's YaRN parameters"),
    "yarn_attn_factor": ((1.0,), "overriding the GGUF's YaRN parameters"),
    "yarn_beta_fast": ((32.0,), "overriding the GGUF's YaRN parameters"),
    "yarn_beta_slow": ((1.0,), "overriding the GGUF's YaRN parameters"),
    "yarn_orig_ctx": ((0,), "overriding the GGUF's YaRN parameters"),
    "attention_type": ((-1, 0), "non-causal attention"),
    "type_k": ((None, GGML_TYPE_F16), "a KV cache in another type than f16"),
    "type_v": ((None, GGML_TYPE_F16), "a KV cache in another type than f16"),
}


def _check_options(options: dict) -> None:
    for name, value in options.items():
        if name in _REFUSED:
            allowed, what = _REFUSED[name]
            if not any(value == a for a in allowed):
                raise ValueError(f"Llama({name}={value!r}) is not supported: this engine has no {what}")
        elif name not in _GPU_PLACEMENT and name not in _SPEED_OR_MEMORY:
            warnings.warn(f"Llama() ignores the unknown keyword argument {name!r}", stacklevel=3)


def _gbnf_text(grammar) -> str:
    """A GBNF grammar as text: a string, or llama-cpp-python's LlamaGrammar (which keeps its source)."""
    if isinstance(grammar, str):
        return grammar
    text = getattr(grammar, "_grammar", None)
    if isinstance(text, str):
        return text
    raise TypeError(f"grammar must be GBNF text or a llama_cpp.LlamaGrammar, not {type(grammar).__name__}")


def _refuse_callbacks(where: str, **callbacks) -> None:
    for name, value in callbacks.items():
        if value is not None:
            raise NotImplementedError(f"{where} does not take {name} here: the engine samples without Python "
                                      f"callbacks (Llama.generate() does take {name})")


def _metadata_text(value) -> str | None:
    """llama.cpp's metadata string for a scalar GGUF value (arrays are left out, as llama.cpp's API does)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):f}"
    if isinstance(value, str):
        return value
    return None


class Llama:
    """llama-cpp-python's `Llama` on this engine (see the module docstring for every argument)."""

    def __init__(self, model_path: str, *, n_ctx: int = 512, n_batch: int = 512, n_threads: int | None = None,
                 n_gpu_layers: int = 0, seed: int = LLAMA_DEFAULT_SEED, chat_format: str | None = None,
                 chat_handler=None, verbose: bool = True, embedding: bool = False, logits_all: bool = False,
                 last_n_tokens_size: int = 64, pooling_type: int = -1, spm_infill: bool = False,
                 backend: str | None = None, **options):
        _check_options(options)
        if not os.path.exists(model_path):
            raise ValueError(f"Model path does not exist: {model_path}")
        if pooling_type != -1 and pooling_type not in _POOLING:
            raise ValueError(f"pooling_type {pooling_type} is not supported; supported: -1 (the model's), "
                             + ", ".join(f"{k} ({v})" for k, v in _POOLING.items()))
        self.model_path = str(model_path)
        self.verbose = verbose
        t0 = time.perf_counter()
        if backend is None:  # llama.cpp's -ngl: 0 keeps everything on the CPU, -1 offloads every layer
            backend = "cpu" if n_gpu_layers == 0 else "auto"
        gpu = backend not in ("cpu", "numpy")
        self._engine = Engine.load(model_path, n_ctx=n_ctx, n_threads=n_threads, backend=backend,
                                   n_gpu_layers=n_gpu_layers if gpu and n_gpu_layers > 0 else None,
                                   device=options.get("main_gpu") if gpu else None,
                                   mmap=None if options.get("use_mmap") is None else bool(options["use_mmap"]))
        self.n_batch = min(self._engine.n_ctx, n_batch)
        self.n_threads = n_threads or os.cpu_count()
        self._seed = seed or LLAMA_DEFAULT_SEED
        self._logits_all = logits_all
        self.embedding = embedding
        self.last_n_tokens_size = last_n_tokens_size
        self.spm_infill = spm_infill
        self._pooling = pooling_type if pooling_type != -1 else self._model_pooling()
        self.chat_handler = chat_handler
        self.chat_format = chat_format
        self._template = self._template_name(chat_format)
        self.metadata = {k: t for k, v in self._engine.gguf.metadata.items()
                         if (t := _metadata_text(v)) is not None}
        # llama-cpp-python's evaluation state: the tokens in the context and (with logits_all) their logits
        self.n_tokens = 0
        self._live = False  # whether scores hold the logits of the last token in the context
        self.input_ids = np.zeros((self.n_ctx(),), dtype=np.intc)
        self.scores = np.empty((self.n_ctx() if logits_all else self.n_batch, self.n_vocab()), dtype=np.single)
        if verbose:
            print(f"engine.Llama: {os.path.basename(self.model_path)} ({self.metadata.get('general.architecture')}) "
                  f"on {type(self._engine.backend).__name__}, n_ctx {self.n_ctx()}, loaded in "
                  f"{time.perf_counter() - t0:.2f} s", file=sys.stderr)

    def _model_pooling(self) -> int:
        arch = self._engine.gguf.metadata.get("general.architecture", "")
        return int(self._engine.gguf.metadata.get(f"{arch}.pooling_type", 0))  # llama.cpp: NONE if unset

    def _template_name(self, chat_format: str | None) -> str | None:
        """llama-cpp-python's chat_format -> a template name for Engine.chat_template (None: the GGUF's).
        "chat_template.default" and "chat_template.NAME" are the GGUF's own templates, as there."""
        if chat_format is None or chat_format == "chat_template.default":
            return None
        name = chat_format.removeprefix("chat_template.")
        self._engine.chat_template(name)  # an unknown name fails here, listing the known ones
        return name

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str | None, additional_files: list | None = None,
                        local_dir: str | None = None, local_dir_use_symlinks="auto", cache_dir: str | None = None,
                        **kwargs) -> "Llama":
        """A model from the Hugging Face Hub: `filename` is a file of the repository or a glob matching
        exactly one (None: the repository's default quant, as `-hf ORG/REPO` takes it); the other
        keywords go to the constructor. Files go to the model store (engine/store, `$GGUFPY_HOME`),
        shared with `python -m engine pull`, so `local_dir` and `cache_dir` are not used; the parts
        of a split model come with its first. `HF_ENDPOINT`, `HF_TOKEN` and offline mode apply."""
        try:
            from .store import resolve_model
        except ImportError:
            raise NotImplementedError(
                f"Llama.from_pretrained({repo_id!r}, {filename!r}) needs the model store (engine/store), which "
                "this installation lacks: download the .gguf and pass its path as Llama(model_path=...)") from None
        if local_dir is not None or cache_dir is not None:
            warnings.warn("Llama.from_pretrained keeps models in the model store ($GGUFPY_HOME); "
                          "local_dir and cache_dir are not used", stacklevel=2)
        path = resolve_model(cls._hf_ref(repo_id, filename))
        for extra in additional_files or []:
            resolve_model(cls._hf_ref(repo_id, extra))
        return cls(model_path=str(path), **kwargs)

    @staticmethod
    def _hf_ref(repo_id: str, filename: str | None) -> str:
        """hf://ORG/REPO[/FILE] for a file name or a glob (matched against the repository's files, which
        must give exactly one, as llama-cpp-python requires)."""
        if filename is None:
            return f"hf://{repo_id}"
        if not any(c in filename for c in "*?["):
            return f"hf://{repo_id}/{filename}"
        from huggingface_hub import HfApi

        api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=os.environ.get("HF_TOKEN") or None)
        files = [s.rfilename for s in api.model_info(repo_id).siblings or []]
        matches = fnmatch.filter(files, filename)
        if len(matches) != 1:
            raise ValueError(f"{'No' if not matches else 'Multiple'} files found in {repo_id} that match "
                             f"{filename}\n\nAvailable Files:\n{json.dumps(files)}")
        return f"hf://{repo_id}/{matches[0]}"

    # --- sizes and special tokens

    def n_ctx(self) -> int:
        return self._engine.n_ctx

    def n_vocab(self) -> int:
        return self._engine.n_vocab

    def n_embd(self) -> int:
        return int(self._engine.model.p.n_embd)

    def token_bos(self) -> int:
        bos = self._engine.tokenizer.bos_id
        return -1 if bos is None else bos

    def token_eos(self) -> int:
        eos = self._engine.tokenizer.eos_id
        return -1 if eos is None else eos

    def token_nl(self) -> int:
        ids = self._engine.tokenizer.tokenize("\n", add_bos=False)
        return ids[0] if len(ids) == 1 else -1

    def pooling_type(self) -> int:
        return self._pooling

    def set_seed(self, seed: int) -> None:
        self._seed = seed

    def close(self) -> None:
        """Nothing to free explicitly: the weights are a memory map released with this object."""

    # --- tokens

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """UTF-8 text -> token ids; `add_bos` adds BOS (and EOS) where the model's metadata says to,
        `special` matches control tokens' text (llama_tokenize's add_special / parse_special)."""
        return self._engine.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None,
                   special: bool = False) -> bytes:
        """Token ids -> bytes (a multi-byte character may be cut); a leading BOS drops the space its
        next token starts with, as llama-cpp-python does."""
        tok = self._engine.tokenizer
        out = b"".join(tok.token_to_piece(int(t), special) for t in tokens)
        if len(tokens) and tokens[0] == self.token_bos() and out[:1] == b" ":
            return out[1:]
        return out

    # --- evaluation state (llama-cpp-python's low-level loop: reset, eval, scores, generate)

    @property
    def _input_ids(self) -> np.ndarray:
        return self.input_ids[: self.n_tokens]

    @property
    def _scores(self) -> np.ndarray:
        return self.scores[: self.n_tokens, :]

    @property
    def eval_tokens(self):
        from collections import deque

        return deque(self._input_ids.tolist(), maxlen=self.n_ctx())

    @property
    def eval_logits(self):
        """Logits rows so far (with logits_all=False, only the last evaluated token's)."""
        from collections import deque

        return deque(self._scores.tolist(), maxlen=self.n_ctx() if self._logits_all else 1)

    def reset(self) -> None:
        self.n_tokens = 0
        self._live = False

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate `tokens` after the first `n_tokens` in the context, in batches of n_batch; their
        logits go to `scores` (all rows with logits_all=True, else the last row written)."""
        eng = self._engine
        eng.cache.truncate(self.n_tokens)
        tokens = [int(t) for t in tokens]
        self._live = False
        try:
            for i in range(0, len(tokens), self.n_batch):
                batch = tokens[i:i + self.n_batch]
                out = eng.model.place.output.to_numpy(
                    eng.model.forward(batch, eng.cache, last_only=not self._logits_all))
                n_past = self.n_tokens
                self.input_ids[n_past:n_past + len(batch)] = batch
                if self._logits_all:
                    self.scores[n_past:n_past + len(batch)] = out
                else:
                    self.scores[min(n_past + len(batch), len(self.scores)) - 1] = out[-1]
                self.n_tokens += len(batch)
            self._live = self.n_tokens > 0
        finally:
            # the engine's prefix reuse must know what its cache now holds (also when a batch did not
            # fit); these positions were not computed in the engine's own aligned batches, so none of
            # them is offered for reuse
            eng.cached_tokens = self._input_ids.tolist()
            eng._aligned = 0

    def _last_logits(self) -> np.ndarray:
        return self.scores[min(self.n_tokens, len(self.scores)) - 1]

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor=None, stopping_criteria=None,
                 grammar=None) -> Iterator[int]:
        """Yield sampled token ids after `tokens`, forever (the caller stops; EOS is not special here).
        Sending a list of tokens into the generator evaluates them after the yielded one. With
        reset=True the longest prefix already in the context is reused."""
        from .sampler import Sampler, SamplerParams

        if grammar is not None:
            raise NotImplementedError("Llama.generate does not take grammar here (no constrained sampler)")
        if temp < 0:  # llama-cpp-python: draw from the model's distribution, nothing cut
            temp, top_k, top_p, min_p, typical_p = 1.0, 0, 1.0, 0.0, 1.0
        sampler = Sampler(SamplerParams(
            temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
            repeat_penalty=repeat_penalty, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
            penalty_last_n=self.last_n_tokens_size, seed=self._seed, mirostat=mirostat_mode,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta))
        tokens = [int(t) for t in tokens]
        if not tokens and (reset or self.n_tokens == 0):
            raise ValueError("Llama.generate needs at least one token to start from")
        if reset:
            keep = self.longest_token_prefix(self._input_ids.tolist(), tokens)
            if keep == len(tokens) == self.n_tokens and self._live:
                tokens = []  # all in the context, its logits at hand: sample now, as llama-cpp-python does
            else:  # evaluate at least one token, for its logits
                self.n_tokens = max(min(keep, len(tokens) - 1), 0)
                tokens = tokens[self.n_tokens:]
        if not tokens and not self._live:
            raise ValueError("Llama.generate has no logits to start from: evaluate some tokens first")
        while True:
            if tokens:
                self.eval(tokens)
            logits = self._last_logits()
            if logits_processor is not None:
                logits = logits_processor(self._input_ids, logits)
            token = sampler.sample(logits)
            sampler.accept(token)
            if stopping_criteria is not None and stopping_criteria(self._input_ids, logits):
                return
            more = yield token
            tokens = [token, *(more or [])]

    # --- completions

    def __call__(self, *args, **kwargs):
        """The same as `create_completion`."""
        return self.create_completion(*args, **kwargs)

    def _sampling(self, temperature, top_k, top_p, min_p, typical_p, repeat_penalty, presence_penalty,
                  frequency_penalty, seed, logit_bias, mirostat_mode, mirostat_tau, mirostat_eta) -> dict:
        """Engine.generate's sampling keywords for llama-cpp-python's arguments.

        Without a seed llama-cpp-python draws the request's seed from its own, so that an instance gives
        the same sequence of answers every run: the same here."""
        self.set_seed(seed if seed is not None else random.Random(self._seed).randint(0, 2**32))
        kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                  repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                  frequency_penalty=frequency_penalty, penalty_last_n=self.last_n_tokens_size, seed=self._seed,
                  logit_bias={int(k): float(v) for k, v in logit_bias.items()} if logit_bias else None)
        if temperature < 0:  # llama-cpp-python: draw from the model's distribution, nothing cut
            kw.update(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0)
        if mirostat_mode:
            kw.update(mirostat=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta)
        return kw

    def _prompt_ids(self, prompt, suffix: str | None) -> list[int]:
        """llama-cpp-python's prompt tokens: text is tokenized with special tokens matched and BOS where
        the model wants one; a token list is taken as it is. With `suffix`, the model's fill-in-the-
        middle layout (prefix, suffix, middle; suffix first with spm_infill), as llama-server builds it."""
        tok = self._engine.tokenizer
        if suffix is None:
            return tok.tokenize(prompt, add_bos=True, special=True) if isinstance(prompt, str) else list(prompt)
        fim = [tok.special_id(n) for n in ("fim_pre", "fim_suf", "fim_mid")]
        if None in fim:
            raise ValueError(f"suffix= needs a model with fill-in-the-middle tokens; "
                             f"{os.path.basename(self.model_path)} has none")
        pre, suf, mid = fim
        head = tok.tokenize("", add_bos=True)[:1] if tok.add_bos else []
        body = tok.tokenize(prompt, add_bos=False) if isinstance(prompt, str) else list(prompt)
        tail = tok.tokenize(suffix, add_bos=False)
        parts = [suf, *tail, pre, *body] if self.spm_infill else [pre, *body, suf, *tail]
        return head + parts + [mid]

    def _check_fits(self, ids: list[int]) -> None:
        if len(ids) >= self.n_ctx():
            raise ContextLengthError(f"Requested tokens ({len(ids)}) exceed context window of {self.n_ctx()}")

    def _synced(self, pieces) -> Iterator:
        """Pass the engine's pieces through; when done, mirror what its cache holds in n_tokens/input_ids."""
        yield from pieces
        cached = self._engine.cached_tokens
        self.n_tokens = len(cached)
        self.input_ids[: self.n_tokens] = cached
        self._live = False  # the engine sampled from these logits itself; scores does not hold them

    @staticmethod
    def _finish(pieces):
        """Run the pieces to their end (so that `_synced` runs too); the final Completion."""
        done = None
        for p in pieces:
            done = p.completion or done
        return done

    def _report(self, done) -> None:
        if self.verbose:
            t = done.timings
            print(f"engine.Llama: prompt {t.prompt_n} tokens in {t.prompt_ms:.0f} ms ({t.cache_n} cached), "
                  f"{t.predicted_n} generated in {t.predicted_ms:.0f} ms", file=sys.stderr)

    def create_completion(self, prompt: str | list[int], suffix: str | None = None, max_tokens: int | None = 16,
                          temperature: float = 0.8, top_p: float = 0.95, min_p: float = 0.05,
                          typical_p: float = 1.0, logprobs: int | None = None, echo: bool = False,
                          stop: str | list[str] | None = None, frequency_penalty: float = 0.0,
                          presence_penalty: float = 0.0, repeat_penalty: float = 1.0, top_k: int = 40,
                          stream: bool = False, seed: int | None = None, tfs_z: float = 1.0, mirostat_mode: int = 0,
                          mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, model: str | None = None,
                          stopping_criteria=None, logits_processor=None, grammar=None,
                          logit_bias: dict | None = None):
        """Complete `prompt` (text or token ids): a text_completion dict, or with stream=True an
        iterator of chunks. max_tokens None or <= 0 means the rest of the context (and any value is
        cut to fit it, as llama-cpp-python does); tfs_z is ignored (llama.cpp dropped tail-free sampling)."""
        _refuse_callbacks("create_completion", stopping_criteria=stopping_criteria, logits_processor=logits_processor)
        ids = self._prompt_ids(prompt, suffix)
        self._check_fits(ids)
        room = self.n_ctx() - len(ids)
        n = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
        kw = self._sampling(temperature, top_k, top_p, min_p, typical_p, repeat_penalty, presence_penalty,
                            frequency_penalty, seed, logit_bias, mirostat_mode, mirostat_tau, mirostat_eta)
        if grammar is not None:
            kw["grammar"] = _gbnf_text(grammar)
        prompt_text = prompt if isinstance(prompt, str) else self._engine.detokenize(ids)
        head = R.Head(f"cmpl-{uuid.uuid4()}", int(time.time()), model if model is not None else self.model_path)
        pieces = self._synced(self._engine.generate(ids, max_tokens=n, stop=stop, logprobs=logprobs, stream=True,
                                                    **kw))
        if stream:
            return self._completion_chunks(head, pieces, len(prompt_text))
        done = self._finish(pieces)
        self._report(done)
        lp = None
        if logprobs is not None:
            lp = (R.echo_logprobs(self._prompt_logprobs(ids, logprobs), done.logprobs) if echo
                  else R.completion_logprobs(done.logprobs, len(prompt_text)))
        text = prompt_text + done.text if echo else done.text
        if suffix is not None:
            text += suffix
        return R.completion(head, text, done.finish_reason, lp, R.usage(len(ids), len(done.tokens)))

    def _completion_chunks(self, head: R.Head, pieces, offset: int) -> Iterator[dict]:
        for p in pieces:
            if p.completion is not None:
                self._report(p.completion)
                yield R.completion_chunk(head, "", p.completion.finish_reason)
            elif p.text:
                lp = R.completion_logprobs(p.logprobs, offset) if p.logprobs is not None else None
                offset += len(p.text)
                yield R.completion_chunk(head, p.text, logprobs=lp)

    def _prompt_logprobs(self, ids: list[int], k: int) -> list[dict]:
        """Logprob records of the prompt's tokens (echo=True), each under the logits before it; a leading
        BOS is left out, as llama-cpp-python leaves it out."""
        if not ids:
            return []
        logits = self._engine.logits(ids)
        records = [self._engine._logprob_entry(logits[i - 1], ids[i], k) for i in range(1, len(ids))]
        first = self._engine._logprob_entry(logits[0], ids[0], k)  # its numbers are replaced by None
        return records if ids[0] == self.token_bos() else [first, *records]

    # --- chat

    def create_chat_completion(self, messages: list[dict], functions: list | None = None, function_call=None,
                               tools: list | None = None, tool_choice=None, temperature: float = 0.2,
                               top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05, typical_p: float = 1.0,
                               stream: bool = False, stop: str | list[str] | None = None, seed: int | None = None,
                               response_format: dict | None = None, max_tokens: int | None = None,
                               presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                               repeat_penalty: float = 1.0, tfs_z: float = 1.0, mirostat_mode: int = 0,
                               mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, model: str | None = None,
                               logits_processor=None, grammar=None, logit_bias: dict | None = None,
                               logprobs: bool | None = None, top_logprobs: int | None = None):
        """Reply to `messages` with the model's chat template (or `chat_format`): a chat.completion
        dict, or with stream=True an iterator of chat.completion.chunk dicts. A `chat_handler` given to
        the constructor is called instead, as llama-cpp-python calls it. Legacy `functions` /
        `function_call` become `tools` / `tool_choice`. Log-probabilities come back when `logprobs`
        is true and `top_logprobs` is set (as in llama-cpp-python)."""
        if self.chat_handler is not None:
            args = {k: v for k, v in locals().items() if k not in ("self", "args")}
            return self.chat_handler(llama=self, **args)
        _refuse_callbacks("create_chat_completion", logits_processor=logits_processor)
        if functions is not None:
            tools = [{"type": "function", "function": f} for f in functions]
        if function_call is not None:
            tool_choice = (function_call if isinstance(function_call, str)
                           else {"type": "function", "function": {"name": function_call["name"]}})
        if isinstance(tool_choice, dict):
            name = tool_choice["function"]["name"]
            if not any(t["function"]["name"] == name for t in tools or []):
                raise ValueError(f"Tool choice '{name}' not found in tools.")
        kw = self._sampling(temperature, top_k, top_p, min_p, typical_p, repeat_penalty, presence_penalty,
                            frequency_penalty, seed, logit_bias, mirostat_mode, mirostat_tau, mirostat_eta)
        # the prompt, the tool-call syntax to parse and the constraint (response_format, grammar, or the
        # grammar a tool_choice asks for), made ready before anything is generated
        plan = self._engine.chat_plan(messages, template=self._template, tools=tools, tool_choice=tool_choice,
                                      response_format=response_format,
                                      grammar=_gbnf_text(grammar) if grammar is not None else None)
        ids = plan.ids
        self._check_fits(ids)
        room = self.n_ctx() - len(ids)
        n = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
        head = R.Head(f"cmpl-{uuid.uuid4()}", int(time.time()), model if model is not None else self.model_path)
        pieces = self._synced(self._engine.chat_ids(ids, stream=True, plan=plan, max_tokens=n, stop=stop,
                                                    logprobs=top_logprobs if logprobs else None, **kw))
        if stream:
            return R.chat_chunks(head, self._reported(pieces))
        done = self._finish(pieces)
        self._report(done)
        return R.chat_completion(head, done.message, done.finish_reason, R.chat_logprobs(done.logprobs),
                                 R.usage(len(ids), len(done.tokens)))

    def _reported(self, pieces) -> Iterator:
        for p in pieces:
            if p.completion is not None:
                self._report(p.completion)
            yield p

    def create_chat_completion_openai_v1(self, *args, **kwargs):
        """`create_chat_completion` as the `openai` package's types (ChatCompletion / ChatCompletionChunk)."""
        from openai.types.chat import ChatCompletion, ChatCompletionChunk

        if kwargs.get("stream", False):
            return (ChatCompletionChunk(**c) for c in self.create_chat_completion(*args, **kwargs))
        return ChatCompletion(**self.create_chat_completion(*args, **kwargs))

    # --- embeddings

    def embed(self, input: str | list[str], normalize: bool = False, truncate: bool = True,
              return_count: bool = False):
        """Embeddings of a text (or of each text of a list): one vector per text with mean/cls/last
        pooling, one per token with pooling "none" (generative models' default in llama.cpp);
        `truncate` cuts each text to n_batch tokens, as llama-cpp-python does."""
        pooling = _POOLING.get(self._pooling)
        if pooling is None:
            raise ValueError(f"{os.path.basename(self.model_path)} asks for pooling type {self._pooling}, which this "
                             f"engine does not have; pass pooling_type= one of {sorted(_POOLING)}")
        texts = [input] if isinstance(input, str) else list(input)
        out, total = [], 0
        for text in texts:
            ids = self.tokenize(text.encode("utf-8"))
            if truncate:
                ids = ids[: self.n_batch]
            if len(ids) > self.n_batch:
                raise ValueError(f"Requested tokens ({len(ids)}) exceed batch size of {self.n_batch}")
            total += len(ids)
            out.append(self._engine.embed(ids, pooling=pooling, normalize=normalize).tolist())
        self.reset()
        result = out[0] if isinstance(input, str) else out
        return (result, total) if return_count else result

    def create_embedding(self, input: str | list[str], model: str | None = None) -> dict:
        vectors, n_tokens = self.embed([input] if isinstance(input, str) else input, return_count=True)
        return R.embeddings(model if model is not None else self.model_path, vectors, n_tokens)

    # --- helpers llama-cpp-python offers as static methods

    @staticmethod
    def logits_to_logprobs(logits, axis: int = -1) -> np.ndarray:
        x = np.asarray(logits, dtype=np.single)
        m = np.amax(x, axis=axis, keepdims=True)
        m[~np.isfinite(m)] = 0
        shifted = x - m
        with np.errstate(divide="ignore"):
            return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    @staticmethod
    def longest_token_prefix(a: Sequence[int], b: Sequence[int]) -> int:
        from .generate import common_prefix

        return common_prefix(a, b)

    def __repr__(self) -> str:
        return f"Llama(model_path={self.model_path!r}, n_ctx={self.n_ctx()})"


__all__ = ["Llama", "LLAMA_DEFAULT_SEED"]
