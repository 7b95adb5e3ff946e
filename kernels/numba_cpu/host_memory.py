"""The CPU backend's weights in memory backed by 2 MB pages, instead of the file's 4 KB-page memory map.

A decode step reads every weight once: SmolLM2 Q4_1's ~100 MB are ~24,000 pages of 4 KB, Gemma 3
270M's ~250 MB ~60,000, far more than the TLB holds, so the products' reads also walk the page
tables, and after a prompt or a pause those walks miss the caches too. The same bytes in anonymous
memory advised MADV_HUGEPAGE (Linux's transparent huge pages) take ~50 and ~125 pages of 2 MB.
Measured on the project's 2-vCPU Xeon VM, two processes alternating, 6-8 rounds: `bench` tg128
SmolLM2 +7% (8/8 rounds ahead), Gemma 3 +13% (6/6), and the first 24 decode steps after a 40-token
prompt 7-12% faster; the same copy without the advice (4 KB pages) gained nothing, so it is the pages.
The file's own mapping cannot have them here: ext4 page cache is not mapped with 2 MB pages, and
MADV_COLLAPSE refuses a read-only file mapping.

The copy costs what llama.cpp's `--no-mmap` costs: the bytes are read once more, and processes
no longer share the file's page cache pages. So `Engine.load` makes it (engine.backends.cpu_weights)
only where the kernel hands out huge pages and the weights fit in the memory available with room to
spare, and `--mmap` / `--no-mmap` (llama.cpp's flags) decide it outright.
"""

from __future__ import annotations

import mmap

import numpy as np

PAGE = 2 << 20        # the huge page size on x86-64 and most arm64 kernels
CHUNK = 64 << 20      # memory reserved at a time; untouched parts of a chunk cost no memory
ALIGN = 64            # each tensor starts on a cache line, as ggml aligns tensor data (GGUF's default is 32)


class HugePageArena:
    """Copies arrays into anonymous memory advised MADV_HUGEPAGE, packed one after another (most of a
    small model's weights are a few hundred KB each: packed, they share the 2 MB pages).

    The copies are read-only views that keep their chunk of memory alive; the arena itself need not
    outlive them."""

    def __init__(self, chunk: int = CHUNK):
        self.chunk = int(chunk)
        self.bytes = 0          # bytes copied in
        self._free = None       # the current chunk's unused part (a uint8 array)

    def copy(self, a: np.ndarray) -> np.ndarray:
        n = a.nbytes
        if self._free is None or n > len(self._free):
            self._free = self._reserve(max(self.chunk, n))
        dst = self._free[:n].view(a.dtype).reshape(a.shape)
        np.copyto(dst, a)
        dst.flags.writeable = False
        self._free = self._free[-(-n // ALIGN) * ALIGN:]
        self.bytes += n
        return dst

    @staticmethod
    def _reserve(size: int) -> np.ndarray:
        """`size` bytes of fresh anonymous memory starting on a 2 MB boundary (a mapping is only
        page-aligned; THP maps a 2 MB page only over an aligned 2 MB range), advised MADV_HUGEPAGE."""
        size = -(-size // PAGE) * PAGE
        if not hasattr(mmap, "MAP_ANONYMOUS"):  # Windows: plain memory (`--no-mmap` there copies, no more)
            return np.empty(size, np.uint8)
        m = mmap.mmap(-1, size + PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf = np.frombuffer(m, np.uint8)
        skip = -buf.ctypes.data % PAGE
        try:
            m.madvise(mmap.MADV_HUGEPAGE, skip, size)
        except (OSError, ValueError, AttributeError):  # no THP here: still correct, just 4 KB pages
            pass
        return buf[skip:skip + size]

