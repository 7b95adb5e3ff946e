"""The GGUF reader against gguf-py's GGUFReader (the oracle), and its errors on bad files."""

from __future__ import annotations

import resource
import shutil
import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest

from engine.gguf_file import GGUF, GGUFError
from quant import GGMLType

from qdata import random_qtensor


def write_tiny(path, *, alignment=None, tensors=None, split_max_tensors=0):
    """A small GGUF with every metadata value type and a few tensors of several types."""
    w = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.25)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 1e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "こんにちは 🌸")
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_f32", [0.5, 1.5])
    w.add_array("t.arr_str", ["a", "", "日本"])
    w.add_array("t.arr_nested", [[1, 2], [3]])
    rng = np.random.default_rng(0)
    tensors = tensors or {
        "token_embd.weight": (GGMLType.Q4_0, (16, 64)),
        "blk.0.attn_q.weight": (GGMLType.Q4_K, (8, 256)),
        "output_norm.weight": (GGMLType.F32, (64,)),
        "blk.0.ffn_gate_exps.weight": (GGMLType.MXFP4, (2, 4, 32)),
    }
    written = {}
    for name, (qt, shape) in tensors.items():
        t = random_qtensor(qt, shape, rng)
        raw = t.data.view(np.uint8).reshape(*shape[:-1], -1) if qt != GGMLType.F32 else t.data
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType(int(qt)))
        written[name] = t
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.gguf"
    return path, write_tiny(path)


def test_metadata_and_tensors_match_gguf_reader(tiny):
    path, written = tiny
    g, ref = GGUF.open(path), gguf.GGUFReader(str(path))
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        ours = g.metadata[key]
        ours = ours.tolist() if isinstance(ours, np.ndarray) else ours
        if key == "t.arr_nested":
            ours = [list(map(int, x)) for x in ours]
            continue  # gguf-py's contents() does not decode nested arrays; checked below
        assert ours == field.contents(), key
    assert [list(x) for x in g.metadata["t.arr_nested"]] == [[1, 2], [3]]
    assert g.metadata["t.str"] == "こんにちは 🌸" and g.metadata["t.bool"] is True
    assert g.metadata["t.u64"] == 2**63 + 5
    for t in ref.tensors:
        info = g.tensors[t.name]
        assert info.ne == tuple(int(d) for d in t.shape)
        assert info.type_id == int(t.tensor_type) and info.offset == t.data_offset and info.nbytes == t.n_bytes
        np.testing.assert_array_equal(info.raw(), np.asarray(t.data).reshape(-1).view(np.uint8))
    for name, t in written.items():
        q = g.tensor(name)
        assert q.shape == t.shape and q.qtype == t.qtype
        np.testing.assert_array_equal(q.data.view(np.uint8), t.data.view(np.uint8))


def test_tensors_are_zero_copy_views_of_the_map(tiny):
    path, _ = tiny
    g = GGUF.open(path)
    q = g.tensor("token_embd.weight")
    assert not q.data.flags.writeable
    assert q.data.flags.c_contiguous
    assert np.shares_memory(q.data, g.parts[0].buffer)


def test_prefetch_advises_the_data_region_and_changes_nothing(tiny):
    """Loading a model asks for the tensor data ahead and maps it (madvise WILLNEED, then
    MADV_POPULATE_READ where it fits in memory, as llama.cpp's MAP_POPULATE): on Linux it succeeds,
    and the tensors read the same afterwards."""
    path, _ = tiny
    g = GGUF.open(path)
    before = g.tensor("token_embd.weight").data.copy()
    assert g.prefetch() is True
    np.testing.assert_array_equal(g.tensor("token_embd.weight").data, before)


def test_custom_alignment(tmp_path):
    path = tmp_path / "aligned.gguf"
    written = write_tiny(path, alignment=64)
    g = GGUF.open(path)
    assert g.parts[0].alignment == 64 and g.parts[0].data_offset % 64 == 0
    for name, t in written.items():
        assert g.tensors[name].offset % 64 == 0
        np.testing.assert_array_equal(g.tensor(name).data.view(np.uint8), t.data.view(np.uint8))


def test_split_model_loads_from_first_part(tmp_path):
    base = tmp_path / "split.gguf"
    written = write_tiny(base, split_max_tensors=1)
    parts = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(parts) == 4, parts
    g = GGUF.open(parts[0])
    assert len(g.parts) == 4 and set(g.tensors) == set(written)
    assert g.metadata["t.str"] == "こんにちは 🌸"
    for name, t in written.items():
        np.testing.assert_array_equal(g.tensor(name).data.view(np.uint8), t.data.view(np.uint8))
    with pytest.raises(GGUFError, match="load the first part"):
        GGUF.open(parts[1])
    parts[2].unlink()
    with pytest.raises(GGUFError, match="missing part 3 of 4"):
        GGUF.open(parts[0])


def test_truncated_file_at_every_region(tiny, tmp_path):
    path, _ = tiny
    data = path.read_bytes()
    data_end = max(t.offset + t.nbytes for t in GGUF.open(path).tensors.values())  # then only padding
    cut = tmp_path / "cut.gguf"
    for n in sorted({0, 3, 4, 7, 8, 20, 24, 100, 400, len(data) // 2, data_end - 1, *range(0, data_end, 97)}):
        cut.write_bytes(data[:n])
        with pytest.raises(GGUFError) as e:
            GGUF.open(cut)
        assert str(cut) in str(e.value)


def test_random_corruption_never_escapes_as_another_error(tiny, tmp_path):
    path, _ = tiny
    data = bytearray(path.read_bytes())
    header_end = GGUF.open(path).parts[0].data_offset
    rng = np.random.default_rng(1)
    bad = tmp_path / "bad.gguf"
    for _ in range(300):
        d = bytearray(data)
        for pos in rng.integers(4, header_end, size=rng.integers(1, 4)):
            d[pos] = rng.integers(0, 256)
        bad.write_bytes(bytes(d))
        try:
            GGUF.open(bad)
        except GGUFError:
            pass


def _patch_first_tensor(path, tmp_path, *, ne0=None, type_id=None):
    """Rewrite the first tensor info's ne[0] or type in place (its header position is known)."""
    g = GGUF.open(path)
    data = bytearray(path.read_bytes())
    name = next(iter(g.tensors)).encode()
    pos = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, pos)[0]
    if ne0 is not None:
        struct.pack_into("<q", data, pos + 4, ne0)
    if type_id is not None:
        struct.pack_into("<i", data, pos + 4 + 8 * n_dims, type_id)
    out = tmp_path / "patched.gguf"
    out.write_bytes(bytes(data))
    return out


def test_unknown_tensor_type(tiny, tmp_path):
    with pytest.raises(GGUFError, match="unknown tensor type 77"):
        GGUF.open(_patch_first_tensor(tiny[0], tmp_path, type_id=77))


def test_impossible_shapes(tiny, tmp_path):
    with pytest.raises(GGUFError, match="not a multiple of the Q4_0 block size"):
        GGUF.open(_patch_first_tensor(tiny[0], tmp_path, ne0=33))
    with pytest.raises(GGUFError, match="impossible shape"):
        GGUF.open(_patch_first_tensor(tiny[0], tmp_path, ne0=-64))
    with pytest.raises(GGUFError, match="truncated"):
        GGUF.open(_patch_first_tensor(tiny[0], tmp_path, ne0=64 * 2**40))


def test_not_gguf_and_missing(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUF.open(p)
    with pytest.raises(GGUFError, match="cannot open"):
        GGUF.open(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="cannot open"):
        GGUF.open(tmp_path)


def test_unsupported_but_known_type_is_listed_then_refused(tiny, tmp_path):
    # IQ2_XXS is a real type we cannot decode: the file opens (inspect lists it), loading the tensor fails clearly
    path = tmp_path / "iq2.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("w", np.zeros((2, 66), np.uint8), raw_shape=(2, 66), raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    g = GGUF.open(path)
    assert g.tensors["w"].type_name == "IQ2_XXS" and g.tensors["w"].shape == (2, 256)
    with pytest.raises(NotImplementedError, match="IQ2_XXS"):
        g.tensor("w")


# --- the real models -------------------------------------------------------------------------------

def test_real_models_match_gguf_reader(real_model_path):
    g, ref = GGUF.open(real_model_path), gguf.GGUFReader(str(real_model_path))
    assert len(g.tensors) == len(ref.tensors)
    for t in ref.tensors:
        info = g.tensors[t.name]
        assert (info.ne, info.type_id, info.offset, info.nbytes) == (
            tuple(int(d) for d in t.shape), int(t.tensor_type), t.data_offset, t.n_bytes)
    for key in ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens"):
        ours = g.metadata[key]
        assert (ours.tolist() if isinstance(ours, np.ndarray) else ours) == ref.fields[key].contents()
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if key in ref.fields:
            np.testing.assert_array_equal(g.metadata[key], ref.fields[key].contents())


def test_loading_does_not_read_the_weights(gemma3_path):
    # run in a fresh process: resident memory after opening a 250 MB model stays far below its size
    code = (
        "import resource, sys\n"
        "from engine import GGUF\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"g = GGUF.open({str(gemma3_path)!r})\n"
        "ts = [g.tensor(n) for n in g.tensors]\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) // 1024)\n"
    )
    grown_mib = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown_mib < 64, f"opening the model grew resident memory by {grown_mib} MiB"


def test_inspect_cli_on_real_models(real_model_path):
    out = subprocess.run([sys.executable, "-m", "engine", "inspect", str(real_model_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "general.architecture" in out and "token_embd.weight" in out
    g = GGUF.open(real_model_path)
    for t in g.tensors.values():  # one table row per tensor: name, type, shape, bytes
        assert any(line.split()[:2] == [t.name, t.type_name] and line.split()[-1] == str(t.nbytes)
                   for line in out.splitlines()), t.name


def test_inspect_cli_on_truncated_copy(real_model_path, tmp_path):
    cut = tmp_path / real_model_path.name
    with open(real_model_path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(real_model_path.stat().st_size // 2))
    r = subprocess.run([sys.executable, "-m", "engine", "inspect", str(cut)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {cut}: truncated"), r.stderr
