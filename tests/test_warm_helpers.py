"""A first run's product helper (kernels/numba_cpu/warm.py `products_for`): with four drivers to build, a
second process compiles every other one into the kernel cache and this process loads them from there
-- the right code for each (the drivers of one type differ only in closure constants, so a mixed-up
cache entry would run the wrong path)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import numpy as np
    from kernels.numba_cpu import NumbaBackend, products, warm
    from qdata import random_qtensor
    from quant import GGMLType

    be = NumbaBackend(n_threads=2)
    be._warmed = True
    types = {GGMLType.Q4_0: 5, GGMLType.Q8_0: 5}        # 2 types x (decode, prompt) = 4 drivers
    warm.products_for(be, types)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 256)).astype(np.float32)
    for qt in types:
        w = random_qtensor(qt, (64, 256), rng)
        wide = be.matmul(x, w)                             # the prompt driver: the helper's
        rows = be.matmul(x, w, path="rows")                # each token's row dot, compiled here
        assert np.allclose(wide, rows, rtol=1e-4, atol=1e-4), (qt, np.abs(wide - rows).max())
        fn = products.drivers(qt)._fns[(True, "wide")].fn
        print(qt.name, "wide hits", sum(fn.stats.cache_hits.values()), "misses", sum(fn.stats.cache_misses.values()))
""")


def test_product_helper_fills_the_cache(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    env.pop("GGUFPY_WARM_HELPER", None)
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.split("\n")
    # Q4_0's prompt driver (the second of four) and Q8_0's (the fourth) came from the helper's entries
    assert "Q4_0 wide hits 1 misses 0" in lines, r.stdout
    assert "Q8_0 wide hits 1 misses 0" in lines, r.stdout
