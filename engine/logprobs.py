"""Log-probabilities of the raw distribution: what the API returns as `logprobs`/`top_logprobs`.

llama-server reports them from the model's logits before any sampler (`n_probs` with
`post_sampling_probs: false`, the OpenAI default), so these take the logits as the forward pass made them.
"""

from __future__ import annotations

import math

import numpy as np

from engine.sampler import _desc_order


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log(softmax(logits)) over the whole vocabulary, in float64."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = x.max()
    return x - (m + math.log(np.exp(x - m).sum()))


def top_ids(lp: np.ndarray, k: int) -> np.ndarray:
    """The ids of the `k` highest entries, highest first (ties: lower token id first)."""
    return _desc_order(lp, max(0, min(int(k), len(lp))))


def logprobs(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The `k` most probable tokens of the raw distribution as (token, log-probability), highest first."""
    lp = log_softmax(logits)
    return [(int(i), float(lp[i])) for i in top_ids(lp, k)]
