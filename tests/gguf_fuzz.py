"""Seeded structural mutation fuzzing of the GGUF reader and the tokenizer built from its metadata.

    python tests/gguf_fuzz.py --count 5000 --seed 0 [--work DIR]

Base files (written by gguf-py's GGUFWriter, the reference writer): a model with every metadata value
type, tensors of several quantized types and a byte-level BPE vocabulary; one with a SentencePiece
vocabulary (scores, token types); a model split in three parts. Each case takes one base file, walks
its layout (header, every key, value type, string and array length, every tensor info: name, dims,
shape, type, offset) and applies one to three mutations chosen by a seeded RNG: a field set to a
boundary value (0, 1, -1, 2^31, 2^32, 2^63, 2^64-1, the file size, the old value +-1), bit flips, byte
runs, a truncation, inserted or deleted bytes, a duplicated key, and for split models a changed
split.count / split.no / split.tensors.count, a missing, swapped or truncated part.

Each mutated file is opened with `GGUF.open`, every tensor is viewed and decoded as a QTensor view, and
the tokenizer is built from its metadata. The only exceptions allowed are GGUFError (the reader),
TokenizerError (the vocabulary) and UnsupportedQuantType (a known type we do not decode); anything
else is reported with the case number that reproduces it. Runs in its own process so that a signal
(SIGSEGV, SIGBUS) or a hang (SIGALRM per case) shows as such.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

INTERESTING_U64 = [0, 1, 2, 3, 4, 7, 8, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


# --- base files


def _bpe_vocab(w, n=300):
    import make_tiny_gguf

    tokens, merges, types = make_tiny_gguf.train_bpe_vocab(n, ["<s>", "</s>"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")


def _spm_vocab(w):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "▁a", "a", "b", "▁ab", "ab"]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 3 + [-1000.0] * 256 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * 6)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def write_bases(work: Path) -> dict[str, list[Path]]:
    import gguf

    from qdata import random_qtensor
    from quant import GGMLType

    rng = np.random.default_rng(0)
    tensors = {"token_embd.weight": (GGMLType.Q4_0, (8, 64)), "blk.0.attn_q.weight": (GGMLType.Q4_K, (2, 256)),
               "output_norm.weight": (GGMLType.F32, (64,)), "blk.0.ffn_gate_exps.weight": (GGMLType.MXFP4, (2, 2, 32)),
               "blk.0.attn_k.weight": (GGMLType.Q8_0, (4, 32))}
    bases: dict[str, list[Path]] = {}
    for name, vocab, split in (("bpe", _bpe_vocab, 0), ("spm", _spm_vocab, 0), ("split", _spm_vocab, 2)):
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        w = gguf.GGUFWriter(str(d / f"{name}.gguf"), "llama", split_max_tensors=split)
        w.add_uint8("t.u8", 200)
        w.add_int16("t.i16", -30000)
        w.add_uint32("t.u32", 4_000_000_000)
        w.add_float32("t.f32", 0.25)
        w.add_uint64("t.u64", 2**63 + 5)
        w.add_float64("t.f64", 1e-300)
        w.add_bool("t.bool", True)
        w.add_string("t.str", "こんにちは 🌸")
        w.add_array("t.arr_i32", [1, -2, 3])
        w.add_array("t.arr_nested", [[1, 2], [3]])
        w.add_uint32("llama.context_length", 128)
        vocab(w)
        for tname, (qt, shape) in tensors.items():
            t = random_qtensor(qt, shape, rng)
            raw = t.data.view(np.uint8).reshape(*shape[:-1], -1) if qt != GGMLType.F32 else t.data
            w.add_tensor(tname, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType(int(qt)))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        bases[name] = sorted(d.glob("*.gguf"))
    return bases


# --- the layout of a valid file: (offset, size, kind) of every field


def layout(data: bytes) -> list[tuple[int, int, str]]:
    fields, pos = [], 4

    def take(size, kind):
        nonlocal pos
        fields.append((pos, size, kind))
        pos += size
        return data[pos - size:pos]

    take(4, "version")
    n_tensors = struct.unpack("<Q", take(8, "n_tensors"))[0]
    n_kv = struct.unpack("<Q", take(8, "n_kv"))[0]
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(kind):
        n = struct.unpack("<Q", take(8, kind + "_len"))[0]
        take(n, kind)

    def value(vt, depth=0):
        if vt == 8:
            string("str")
        elif vt == 9:
            et = struct.unpack("<i", take(4, "arr_type"))[0]
            count = struct.unpack("<Q", take(8, "arr_count"))[0]
            for _ in range(count):
                value(et, depth + 1)
        else:
            take(sizes[vt], "scalar")

    for _ in range(n_kv):
        string("key")
        vt = struct.unpack("<i", take(4, "value_type"))[0]
        value(vt)
    for _ in range(n_tensors):
        string("tensor_name")
        n_dims = struct.unpack("<I", take(4, "n_dims"))[0]
        for _ in range(n_dims):
            take(8, "ne")
        take(4, "tensor_type")
        take(8, "tensor_offset")
    fields.append((pos, 0, "end_of_header"))
    return fields


# --- mutations


def _set(data: bytearray, off: int, size: int, value: int):
    data[off:off + size] = (value % (1 << (8 * size))).to_bytes(size, "little")


def mutate_bytes(data: bytearray, rng: np.random.Generator, fields) -> str:
    header_end = min(fields[-1][0], len(data))  # an earlier mutation may have cut the file
    if len(data) < 8:
        return "noop (file too short)"
    kind = rng.integers(0, 8)
    if kind <= 2:  # a field to a boundary value
        off, size, name = fields[int(rng.integers(0, len(fields) - 1))]
        if size == 0 or off + size > len(data):
            return "noop"
        if size in (4, 8) or name in ("scalar",):
            old = int.from_bytes(data[off:off + size], "little")
            choices = INTERESTING_U64 + [len(data), len(data) - 1, len(data) + 1, old + 1, old - 1, old * 2,
                                         int(rng.integers(0, 1 << 62))]
            v = choices[int(rng.integers(0, len(choices)))]
        else:
            v = int(rng.integers(0, 1 << (8 * min(size, 7))))
        _set(data, off, min(size, 8), v)
        return f"set {name}@{off} to {v}"
    if kind == 3:  # bit flips in the header
        n = int(rng.integers(1, 9))
        for _ in range(n):
            p = int(rng.integers(4, max(5, header_end)))
            if p < len(data):
                data[p] ^= 1 << int(rng.integers(0, 8))
        return f"{n} bit flips"
    if kind == 4:  # a run of random bytes anywhere
        p = int(rng.integers(0, len(data)))
        n = int(rng.integers(1, 64))
        data[p:p + n] = rng.integers(0, 256, size=min(n, len(data) - p), dtype=np.uint8).tobytes()
        return f"random run @{p}+{n}"
    if kind == 5:  # truncate
        n = int(rng.integers(0, len(data)))
        del data[n:]
        return f"truncate to {n}"
    if kind == 6:  # insert or delete bytes in the header
        p = int(rng.integers(4, max(5, header_end)))
        n = int(rng.integers(1, 16))
        if rng.integers(0, 2):
            data[p:p] = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
            return f"insert {n} @{p}"
        del data[p:p + n]
        return f"delete {n} @{p}"
    # duplicate a key's name over another one (same length or not): duplicate keys, bad alignment...
    keys = [f for f in fields if f[2] == "key"]
    a, b = keys[int(rng.integers(0, len(keys)))], keys[int(rng.integers(0, len(keys)))]
    src = bytes(data[a[0]:a[0] + a[1]])
    n = min(len(src), b[1], max(0, len(data) - b[0]))
    data[b[0]:b[0] + n] = src[:n]
    return f"copy key {src[:24]!r} over @{b[0]}"


def make_case(i: int, seed: int, bases: dict, work: Path) -> tuple[Path, str]:
    rng = np.random.default_rng([seed, i])
    name = ["bpe", "spm", "split"][i % 3]
    files = bases[name]
    d = work / "case"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    out = [d / f.name for f in files]
    blobs = [bytearray(f.read_bytes()) for f in files]
    what = []
    target = int(rng.integers(0, len(files)))
    if name == "split" and rng.integers(0, 4) == 0:  # part-level faults
        k = int(rng.integers(0, 3))
        if k == 0:
            out_drop = int(rng.integers(1, len(files)))
            what.append(f"drop part {out_drop}")
            blobs[out_drop] = None
        elif k == 1:
            a, b = 1, len(files) - 1
            blobs[a], blobs[b] = blobs[b], blobs[a]
            what.append("swap parts")
        else:
            p = int(rng.integers(1, len(files)))
            del blobs[p][int(rng.integers(0, len(blobs[p]))):]
            what.append(f"truncate part {p}")
    else:
        fields = layout(bytes(blobs[target]))
        for _ in range(int(rng.integers(1, 4))):
            what.append(mutate_bytes(blobs[target], rng, fields))
    for path, blob in zip(out, blobs):
        if blob is not None:
            path.write_bytes(bytes(blob))
    return out[0], f"{name} part {target}: " + "; ".join(what)


# --- running one case


def exercise(path: Path):
    """Everything a load does with the file before any weight math: open, view and decode every
    tensor, build the tokenizer, read the chat template."""
    from engine.gguf_file import GGUF
    from engine.tokenizer import Tokenizer

    g = GGUF.open(path)
    for info in g.tensors.values():
        raw = info.raw()
        assert raw.nbytes == info.nbytes
        try:
            info.load()
        except Exception as e:
            if type(e).__name__ != "UnsupportedQuantType":
                raise
    _ = g.arch if "general.architecture" in g.metadata else None
    tok = Tokenizer.from_gguf(g)
    tok.tokenize("ab a", add_bos=True)
    tok.detokenize(list(range(min(tok.n_vocab, 50))))


ALLOWED = ("GGUFError", "TokenizerError", "UnsupportedQuantType")


def run(count: int, seed: int, work: Path, start: int = 0) -> dict:
    bases = write_bases(work / "bases")
    stats = {"cases": 0, "opened": 0, "errors": {}, "failures": []}

    def alarm(signum, frame):
        raise TimeoutError("case took longer than 20 s")

    signal.signal(signal.SIGALRM, alarm)
    t0 = time.time()
    for i in range(start, start + count):
        path, what = make_case(i, seed, bases, work)
        signal.alarm(20)
        try:
            exercise(path)
            stats["opened"] += 1
        except Exception as e:  # noqa: BLE001 -- sorted below: only the clear errors are allowed
            kind = type(e).__name__
            stats["errors"][kind] = stats["errors"].get(kind, 0) + 1
            if kind not in ALLOWED:
                stats["failures"].append({"case": i, "mutation": what, "error": f"{kind}: {e}",
                                          "traceback": traceback.format_exc(limit=6)[-2000:]})
        finally:
            signal.alarm(0)
        stats["cases"] += 1
    stats["seconds"] = round(time.time() - t0, 1)
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case number (to replay one: --start N --count 1)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    import tempfile

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gguf-fuzz-"))
    try:
        stats = run(args.count, args.seed, work, args.start)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(stats, indent=1))
    return 1 if stats["failures"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tools"))
    os.environ.setdefault("NUMBA_DISABLE_JIT", "0")
    raise SystemExit(main())
