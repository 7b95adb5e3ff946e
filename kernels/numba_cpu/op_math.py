"""What the op kernels (ops.py) and the attention kernels (attention.py) share: Numba's options for
them, float32 constants, and a vectorizable expf."""

from __future__ import annotations

import numpy as np
from numba import njit

from .rows_common import as_f32

ZERO = np.float32(0.0)
ONE = np.float32(1.0)
TEN = np.float32(10.0)
NEG_INF = np.float32(-np.inf)
TWO24 = np.float32(16777216.0)
MIN_RAMP = np.float32(0.001)

_JIT = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")
# reductions and dot products: reassociation lets LLVM vectorize them; no 'ninf'/'nnan' (masked
# scores are -inf).
_JIT_FAST = dict(_JIT, fastmath={"reassoc", "contract", "nsz", "arcp"})

PAR_MIN = 1 << 15  # elements (or multiply-adds for attention) below which a kernel runs serially


# --- a vectorizable expf (Cephes polynomial, <= 3e-7 relative error; ggml's own SIMD silu and
# softmax use a polynomial exp too, ggml_v_expf)

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_LO = np.float32(-86.64)      # below: 0 (exp < 2.5e-38, near the subnormals)
_EXP_HI = np.float32(88.7228391)   # above: +inf (log FLT_MAX)
_TWO = np.float32(2.0)
_INF = np.float32(np.inf)
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)


@njit(inline="always", **_JIT_FAST)
def _exp(x):
    xc = min(max(x, _EXP_LO), _EXP_HI)
    n = np.rint(xc * _LOG2E)
    r = xc - n * _LN2_HI
    r = r - n * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * r * r + r + ONE
    y = (p * as_f32(np.uint32((np.int32(n) + np.int32(126)) << np.int32(23)))) * _TWO   # p * 2**n
    y = ZERO if x < _EXP_LO else y
    return _INF if x > _EXP_HI else y
