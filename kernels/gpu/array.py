"""Arrays that live on a device: `DArray` (activations, caches, indices) and `DeviceTensor` (weights).

A model's forward pass is written once for every backend, with a few NumPy habits: `h + x`,
`x * scale`, `x.reshape(...)`, `h[-1:]`. A `DArray` supports exactly those, each as a device kernel
(through its backend), and nothing else: in particular it never converts itself to a NumPy array
behind the caller's back (`np.asarray(darray)` raises), so every transfer is an explicit
`backend.to_numpy(x)`.

Storage is one untyped device buffer per array, always used from offset 0 (a row slice is a copy),
because OpenCL buffers cannot be offset like CUDA pointers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quant import GGMLType


class DArray:
    __slots__ = ("be", "buf", "shape", "dtype")
    __array_priority__ = 1000  # `np.float32(2) * x` defers to DArray.__rmul__

    def __init__(self, be, buf, shape, dtype=np.float32):
        self.be, self.buf = be, buf
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)

    # --- shape
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def reshape(self, *shape) -> "DArray":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = list(shape)
        if -1 in shape:
            i = shape.index(-1)
            rest = int(np.prod([s for j, s in enumerate(shape) if j != i], dtype=np.int64))
            shape[i] = self.size // max(rest, 1)
        if int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ValueError(f"cannot reshape {self.shape} to {tuple(shape)}")
        return DArray(self.be, self.buf, shape, self.dtype)

    def __getitem__(self, key) -> "DArray":
        """Rows along the first axis (`h[-1:]`, `h[2:5]`): a copy on the device."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"a device array takes only contiguous row slices like x[a:b], not {key!r}")
        start, stop, _ = key.indices(self.shape[0])
        return self.be.take_rows(self, start, max(start, stop))

    # --- arithmetic, each one kernel
    def __add__(self, other):
        return self.be.add(self, other)

    __radd__ = __add__

    def __mul__(self, other):
        return self.be.mul(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, DArray):
            raise TypeError("division of two device arrays is not a device op")
        return self.be.mul(self, 1.0 / float(other))

    def __array__(self, *a, **k):
        raise TypeError("a device array does not convert implicitly: use backend.to_numpy(x)")

    def __repr__(self) -> str:
        return f"DArray(shape={self.shape}, dtype={self.dtype}, on {self.be.name})"


@dataclass(frozen=True, eq=False)
class DeviceTensor:
    """A weight uploaded once, in its GGML block layout (rows of `row_bytes`, or f32/f16/bf16
    elements): kernels read the blocks directly, nothing is repacked.
    shape: NumPy order as QTensor, e.g. (n_out, n_in) or (n_expert, n_out, n_in)."""

    qtype: GGMLType
    shape: tuple[int, ...]
    row_bytes: int
    buf: object
    nbytes: int
    name: str = ""
