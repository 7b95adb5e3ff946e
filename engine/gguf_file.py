"""Memory-mapped GGUF reader: metadata, tensor infos, and tensors as zero-copy views.

Layout per ggml's `docs/gguf.md` and `ggml/src/gguf.cpp` (shared formats.md §1):

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x (key: str, value_type: i32, value)
    n_tensors x (name: str, n_dims: u32, ne[n_dims]: i64, type: i32, offset: u64)
    zero padding to `general.alignment` (default 32) | tensor data

Why our own parser and not `gguf.GGUFReader` (which the tests use as the oracle): the library builds a
NumPy view for every element of every metadata array, which takes ~10 s on Gemma 3's 262k-token vocab;
this reader does the same work in a fraction of a second and checks every length and offset against the
file size, so a truncated or corrupt file gives a `GGUFError` naming the file and the problem instead
of an IndexError, a hang or a segfault.

Split models (`name-00001-of-00003.gguf`, from `gguf-split`) load from the first part: metadata comes
from part 1, tensors from all parts (llama.cpp's `llama_model_loader`).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from quant import GGML_BLOCK_SIZES, GGMLType, QTensor, type_name

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS


class GGUFError(ValueError):
    """A file that is not a readable GGUF; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# little-endian scalar formats and the matching NumPy dtypes (for arrays, read in one go)
_SCALAR = {
    ValueType.UINT8: "<B", ValueType.INT8: "<b", ValueType.UINT16: "<H", ValueType.INT16: "<h",
    ValueType.UINT32: "<I", ValueType.INT32: "<i", ValueType.FLOAT32: "<f", ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q", ValueType.INT64: "<q", ValueType.FLOAT64: "<d",
}
_DTYPE = {vt: np.dtype(fmt) for vt, fmt in _SCALAR.items()}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry. `ne` is ggml order (ne[0] = row length); `shape` is NumPy order."""

    name: str
    ne: tuple[int, ...]
    type_id: int
    offset: int        # absolute byte offset in its file
    nbytes: int
    part: "GGUFPart"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def type_name(self) -> str:
        return type_name(self.type_id)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64)) if self.ne else 1

    def raw(self) -> np.ndarray:
        """The tensor's bytes: a read-only uint8 view of the memory map (no copy)."""
        return self.part.buffer[self.offset:self.offset + self.nbytes]

    def load(self) -> QTensor:
        """A `QTensor` view (raises `UnsupportedQuantType` for a type we cannot decode)."""
        return QTensor.from_buffer(self.type_id, self.shape, self.raw(), self.name)


_U64 = struct.Struct("<Q")


class _Cursor:
    """Bounds-checked little-endian reads from a memory map."""

    def __init__(self, path: Path, buf: mmap.mmap):
        self.path, self.buf, self.pos, self.size = path, buf, 0, len(buf)

    def need(self, n: int, what: str):
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(self.path, f"truncated or corrupt: {what} at byte {self.pos} needs {n} bytes, "
                                       f"file has {self.size}")

    def scalar(self, vt: ValueType, what: str):
        fmt = _SCALAR[vt]
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what):
        return self.scalar(ValueType.UINT32, what)

    def u64(self, what):
        return self.scalar(ValueType.UINT64, what)

    def string(self, what: str, strict: bool = True) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            if strict:
                raise GGUFError(self.path, f"corrupt: {what} at byte {self.pos - n} is not UTF-8") from None
            return raw.decode("utf-8", errors="replace")

    def strings(self, count: int, what: str) -> list[str]:
        """`count` strings in a row (a vocabulary: ~50-260k of them), read in one tight loop: the same
        checks and errors as `string`, at a fifth of its per-element cost (a model's load waits on it)."""
        buf, pos, size, u64 = self.buf, self.pos, self.size, _U64.unpack_from
        out = []
        append = out.append
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, f"length of {what}[{i}]")
            (n,) = u64(buf, pos)
            pos += 8
            if pos + n > size:
                self.pos = pos
                self.need(n, f"{what}[{i}]")
            append(buf[pos:pos + n].decode("utf-8", errors="replace"))
            pos += n
        self.pos = pos
        return out

    def value(self, vt: int, what: str, depth: int = 0) -> Any:
        if vt == ValueType.STRING:
            return self.string(what, strict=False)
        if vt == ValueType.ARRAY:
            if depth > 2:
                raise GGUFError(self.path, f"corrupt: {what} nests arrays too deeply")
            et = self.scalar(ValueType.INT32, f"element type of {what}")
            count = self.u64(f"length of {what}")
            if et not in ValueType.__members__.values():
                raise GGUFError(self.path, f"corrupt: {what} has unknown element type {et}")
            et = ValueType(et)
            if et in _DTYPE:  # numeric: one bulk read
                dt = _DTYPE[et]
                self.need(count * dt.itemsize, what)
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos)
                self.pos += count * dt.itemsize
                return arr
            # strings or nested arrays: each element takes at least 8 bytes, so a bogus count fails fast
            self.need(count * 8, what)
            if et == ValueType.STRING:
                return self.strings(count, what)
            return [self.value(et, f"{what}[{i}]", depth + 1) for i in range(count)]
        if vt not in _SCALAR:
            raise GGUFError(self.path, f"corrupt: {what} has unknown value type {vt}")
        return self.scalar(ValueType(vt), what)


MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux's value; Python 3.11 does not name it


def _available_memory() -> int:
    """Bytes of memory available now without swapping (Linux's MemAvailable: free memory plus the page
    cache it may reclaim, this file's pages included); 0 where the platform cannot say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class GGUFPart:
    """One GGUF file, memory-mapped read-only."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 4:
                    raise GGUFError(self.path, f"not a GGUF file (only {size} bytes)")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(self.path, f"cannot open: {e.strerror or e}") from None
        self.buffer = np.frombuffer(self._mmap, dtype=np.uint8)  # zero-copy view of the whole file
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, tuple[ValueType, ...]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse(_Cursor(self.path, self._mmap))

    def prefetch(self) -> bool:
        """Read the tensor data ahead and map it, as llama.cpp's loader does (its maps are made with
        MAP_POPULATE): madvise(MADV_WILLNEED) starts reading the file; where the data fits in the memory
        available, MADV_POPULATE_READ (Linux 5.14+) then maps every page into this process now,
        so that the products do not take a page fault at each first touch of a page -- a gpt-oss-20b
        decode step touches new experts' pages for hundreds of tokens. False where the platform has
        no madvise."""
        advise = getattr(self._mmap, "madvise", None)
        if advise is None or not hasattr(mmap, "MADV_WILLNEED"):
            return False
        start = self.data_offset - self.data_offset % mmap.PAGESIZE
        size = len(self._mmap) - start
        try:
            advise(mmap.MADV_WILLNEED, start, size)
        except (OSError, ValueError):
            return False
        if size < _available_memory():
            try:
                advise(MADV_POPULATE_READ, start, size)
            except (OSError, ValueError):  # an older kernel: the pages fault in as they are used
                pass
        return True

    def _parse(self, c: _Cursor):
        magic = bytes(self._mmap[:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(self.path, f"not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
        c.pos = 4
        self.version = c.u32("version")
        if self.version & 0xFFFF == 0 and self.version > 0xFFFF:
            raise GGUFError(self.path, "big-endian GGUF files are not supported")
        if self.version not in (2, 3):
            raise GGUFError(self.path, f"unsupported GGUF version {self.version} (2 and 3 are supported)")
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # every kv takes >= 8+4 bytes and every tensor info >= 8+4+4+8 bytes: bound counts by file size
        if n_kv * 12 > c.size or n_tensors * 24 > c.size:
            raise GGUFError(self.path, f"truncated or corrupt header: {n_kv} metadata entries and {n_tensors} tensors "
                                       f"cannot fit in {c.size} bytes")
        for i in range(n_kv):
            key = c.string(f"metadata key #{i}")
            vt = c.scalar(ValueType.INT32, f"type of {key!r}")
            if key in self.metadata:
                raise GGUFError(self.path, f"corrupt: duplicate metadata key {key!r}")
            start = c.pos
            self.metadata[key] = c.value(vt, f"value of {key!r}")
            self.value_types[key] = _value_type_of(c, vt, start)
        self.alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(self.alignment, int) or self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise GGUFError(self.path, f"corrupt: general.alignment {self.alignment!r} is not a power of two")
        infos = [self._tensor_info(c, i) for i in range(n_tensors)]
        self.data_offset = c.pos + (-c.pos) % self.alignment
        for name, ne, type_id, rel in infos:
            self._add_tensor(name, ne, type_id, rel, c.size)

    def _tensor_info(self, c: _Cursor, i: int):
        name = c.string(f"name of tensor #{i}")
        n_dims = c.u32(f"dimension count of {name!r}")
        if n_dims > MAX_DIMS:
            raise GGUFError(self.path, f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        ne = tuple(c.scalar(ValueType.INT64, f"shape of {name!r}") for _ in range(n_dims))
        type_id = c.scalar(ValueType.INT32, f"type of {name!r}")
        rel = c.u64(f"offset of {name!r}")
        return name, ne, type_id, rel

    def _add_tensor(self, name: str, ne: tuple[int, ...], type_id: int, rel: int, size: int):
        def bad(problem):
            return GGUFError(self.path, f"tensor {name!r}: {problem}")

        if name in self.tensors:
            raise bad("appears twice")
        try:
            block_elems, block_bytes = GGML_BLOCK_SIZES[GGMLType(type_id)]
        except (ValueError, KeyError):
            raise bad(f"unknown tensor type {type_id}") from None
        if any(d < 0 for d in ne):
            raise bad(f"impossible shape {list(ne)}")
        n = 1
        for d in ne:
            n *= d
        if ne and ne[0] % block_elems:
            raise bad(f"impossible shape {list(ne)}: row length {ne[0]} is not a multiple of the "
                      f"{type_name(type_id)} block size {block_elems}")
        extent = 1  # as llama.cpp, the size must fit in int64 even where a zero dimension hides the others
        for d in ne:
            extent *= max(d, 1)
        if extent >= 1 << 63 or extent // block_elems * block_bytes >= 1 << 62:
            raise bad(f"impossible shape {list(ne)}: too large to address")
        nbytes = n // block_elems * block_bytes
        if rel % self.alignment:
            raise bad(f"offset {rel} is not aligned to {self.alignment}")
        start = self.data_offset + rel
        if nbytes >= 1 << 62 or start + nbytes > size:
            raise GGUFError(self.path, f"truncated: tensor {name!r} needs bytes {start}..{start + nbytes} "
                                       f"but the file has {size} bytes")
        self.tensors[name] = TensorInfo(name, ne, type_id, start, nbytes, self)


def _value_type_of(c: _Cursor, vt: int, start: int) -> tuple[ValueType, ...]:
    """(ARRAY, element type) for arrays, (type,) for scalars: what `inspect` prints."""
    if vt == ValueType.ARRAY:
        (et,) = struct.unpack_from("<i", c.buf, start)
        return ValueType.ARRAY, ValueType(et)
    return (ValueType(vt),)


_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_paths(path: Path, count: int) -> list[Path]:
    """All parts of a split model named like llama.cpp's `llama_split_path` (1-based numbers)."""
    m = _SPLIT_RE.match(path.name)
    if not m:
        raise GGUFError(path, f"split.count is {count} but the name does not look like PREFIX-00001-of-{count:05d}.gguf")
    return [path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


class GGUF:
    """A model file, or all parts of a split model: metadata from the first part, tensors from all.

    >>> g = GGUF.open("model.gguf")
    >>> g.arch, g.get("llama.block_count"), g.tensor("token_embd.weight").shape
    """

    def __init__(self, parts: list[GGUFPart]):
        self.parts = parts
        self.path = parts[0].path
        self.metadata = parts[0].metadata
        self.value_types = parts[0].value_types
        self.tensors: dict[str, TensorInfo] = {}
        for part in parts:
            for name, info in part.tensors.items():
                if name in self.tensors:
                    raise GGUFError(part.path, f"tensor {name!r} also appears in {self.tensors[name].part.path.name}")
                self.tensors[name] = info

    def prefetch(self) -> bool:
        """GGUFPart.prefetch on every part (a model about to be loaded, not a file being inspected)."""
        return all([part.prefetch() for part in self.parts])

    @classmethod
    def open(cls, path: str | os.PathLike) -> "GGUF":
        path = Path(path)
        first = GGUFPart(path)
        count = int(first.metadata.get("split.count", 0))
        if count <= 1:
            return cls([first])
        if int(first.metadata.get("split.no", 0)) != 0:
            raise GGUFError(path, f"this is part {int(first.metadata['split.no']) + 1} of a split model: "
                                  "load the first part (-00001-of-...)")
        paths = split_paths(path, count)
        parts = [first]
        for i, p in enumerate(paths[1:], start=1):
            if not p.exists():
                raise GGUFError(p, f"missing part {i + 1} of {count} of the split model {path.name}")
            part = GGUFPart(p)
            if int(part.metadata.get("split.no", -1)) != i:
                raise GGUFError(p, f"split.no is {part.metadata.get('split.no')}, expected {i}")
            parts.append(part)
        model = cls(parts)
        expected = first.metadata.get("split.tensors.count")
        if expected is not None and int(expected) != len(model.tensors):
            raise GGUFError(path, f"split model has {len(model.tensors)} tensors, split.tensors.count says {expected}")
        return model

    # --- metadata helpers
    @property
    def arch(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(self.path, "missing general.architecture")
        return arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise GGUFError(self.path, f"missing metadata key {key!r}")
        return self.metadata[key]

    # --- tensors
    def tensor(self, name: str) -> QTensor:
        """Tensor `name` as a zero-copy `QTensor`; KeyError lists nothing, GGUFError names the file."""
        try:
            info = self.tensors[name]
        except KeyError:
            raise GGUFError(self.path, f"no tensor named {name!r}") from None
        return info.load()

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def open_gguf(path: str | os.PathLike) -> GGUF:
    return GGUF.open(path)
