"""llama.cpp as the oracle, through llama-cpp-python: logits and greedy continuations.

llama.cpp is run on the CPU with the same thread count we use; its KV cache is f16 and it rounds
activations to 8 bits for quantized products, so comparisons use cosine/top-1 bars, not equality.
"""

from __future__ import annotations

import functools

import numpy as np

from quant import GGMLType

# types whose products llama.cpp computes against Q8_K activations (bigger rounding): the looser bar
K_AND_IQ = {GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_XS,
            GGMLType.IQ4_NL, GGMLType.MXFP4}


@functools.lru_cache(maxsize=4)
def llama(path: str, n_ctx: int = 1024):
    import llama_cpp

    return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=2, logits_all=True,
                           verbose=False, seed=0)


def ref_logits(path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits for every position of `ids`, from an empty context: (len(ids), n_vocab)."""
    llm = llama(str(path))
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def ref_greedy(path, ids: list[int], n: int) -> list[int]:
    """llama.cpp's greedy continuation of `ids` (argmax of its logits, stopping at nothing)."""
    llm = llama(str(path))
    llm.reset()
    llm.eval(list(ids))
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    return out


def margins(logits: np.ndarray) -> np.ndarray:
    """top-1 minus top-2 logit per row: how firm llama.cpp's own choice is."""
    top2 = np.partition(logits, -2, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def bars(gguf) -> tuple[float, float]:
    """(minimum cosine, minimum margin) for a model: K/IQ types get the looser bar of the issue."""
    types = {GGMLType(t.type_id) for t in gguf.tensors.values() if len(t.ne) >= 2}
    return (0.97, 1.0) if types & K_AND_IQ else (0.995, 0.5)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
