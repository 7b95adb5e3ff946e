"""Random but valid GGML tensors for tests and benchmarks.

Random bytes are valid for every bit of a block except its float scales: a random f16 scale may be
NaN/inf or huge, which makes products meaningless. So we fill whole blocks with random bytes and then
overwrite each scale field with a modest finite value (and keep MXFP4's E8M0 exponents near 2^0).
"""

from __future__ import annotations

import numpy as np

from quant import GGMLType, QTensor, quant_type

# byte offsets of the f16 scale fields inside one block (ggml-common.h field order)
F16_SCALE_OFFSETS = {
    GGMLType.Q4_0: (0,), GGMLType.Q4_1: (0, 2), GGMLType.Q5_0: (0,), GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,), GGMLType.IQ4_NL: (0,),
    GGMLType.Q2_K: (80, 82), GGMLType.Q3_K: (108,), GGMLType.Q4_K: (0, 2), GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,), GGMLType.IQ4_XS: (0,),
}


def random_qtensor(qtype: GGMLType, shape: tuple[int, ...], rng: np.random.Generator, scale: float = 0.05) -> QTensor:
    """A QTensor of logical `shape` whose blocks hold random, finite values of order `scale`."""
    qt = quant_type(qtype)
    n = int(np.prod(shape))
    if qtype == GGMLType.F32:
        return QTensor.from_buffer(qtype, shape, (rng.standard_normal(n) * scale).astype(np.float32))
    if qtype == GGMLType.F16:
        return QTensor.from_buffer(qtype, shape, (rng.standard_normal(n) * scale).astype(np.float16))
    if qtype == GGMLType.BF16:
        f = (rng.standard_normal(n) * scale).astype(np.float32)
        return QTensor.from_buffer(qtype, shape, (f.view(np.uint32) >> 16).astype(np.uint16))
    n_blocks = n // qt.block_elems
    blocks = rng.integers(0, 256, size=(n_blocks, qt.block_bytes), dtype=np.uint8)
    for off in F16_SCALE_OFFSETS.get(qtype, ()):
        d = (rng.uniform(0.2, 1.0, n_blocks) * scale / 8 * rng.choice([-1, 1], n_blocks)).astype(np.float16)
        blocks[:, off:off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    if qtype == GGMLType.MXFP4:  # E8M0 exponent byte: 2^(e-127), keep values near `scale`
        blocks[:, 0] = rng.integers(118, 124, n_blocks, dtype=np.uint8)
    return QTensor.from_buffer(qtype, shape, blocks)
