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


def run_script(script: str, tmp_path, *args: str, helper: bool = True) -> list[str]:
    """`script` in a fresh Python on the kernel cache tmp_path/cache (the op helper on, unless `helper` is
    False); its stdout lines."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    env.pop("GGUFPY_WARM_HELPER", None)
    if not helper:
        env["GGUFPY_WARM_HELPER"] = "0"
    r = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return r.stdout.split("\n")

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
    lines = run_script(SCRIPT, tmp_path)
    # Q4_0's prompt driver (the second of four) and Q8_0's (the fourth) came from the helper's entries
    assert "Q4_0 wide hits 1 misses 0" in lines, lines
    assert "Q8_0 wide hits 1 misses 0" in lines, lines


COMPILE_ONE = textwrap.dedent("""
    import sys
    import numpy as np
    from kernels.numba_cpu import NumbaBackend
    from qdata import random_qtensor
    from quant import GGMLType

    qt = GGMLType[sys.argv[1]]
    be = NumbaBackend(n_threads=2)
    w = random_qtensor(qt, (33, 1024), np.random.default_rng(0))
    be.matmul(np.ones((17, 1024), np.float32), w)  # the prompt driver, compiled into the cache
""")

CHECK_BOTH = textwrap.dedent("""
    import numpy as np
    from kernels.numba_cpu import NumbaBackend
    from kernels.reference import NumpyBackend
    from qdata import random_qtensor
    from quant import GGMLType

    be, ref = NumbaBackend(n_threads=2), NumpyBackend()
    rng = np.random.default_rng(1)
    for qt in (GGMLType.Q4_1, GGMLType.Q6_K):
        w = random_qtensor(qt, (33, 1024), rng)
        x = rng.standard_normal((17, 1024)).astype(np.float32)
        y, y_ref = be.matmul(x, w), ref.matmul(x, w)
        err = float(np.abs(y - y_ref).max() / np.abs(y_ref).max())
        print(qt.name, "finite", bool(np.all(np.isfinite(y))), "err", err)
        assert np.all(np.isfinite(y)) and err < 1e-2, (qt.name, err)
""")


def test_drivers_compiled_in_different_processes_load_together(tmp_path):
    """Q4_1's and Q6_K's prompt drivers compiled by two processes, then both loaded by a third: each
    computes its own type (kernels/numba_cpu/unique_symbols.py; with numba's per-process counter the
    two cached drivers carried different GEMMs under one symbol name, and the second ran the first's)."""
    for name in ("Q4_1", "Q6_K"):
        run_script(COMPILE_ONE, tmp_path, name, helper=False)
    run_script(CHECK_BOTH, tmp_path, helper=False)


DELEGATE = textwrap.dedent("""
    import numpy as np
    from kernels.numba_cpu import NumbaBackend, products, select, warm
    from kernels.reference import NumpyBackend
    from qdata import random_qtensor
    from quant import GGMLType

    be = NumbaBackend(n_threads=2)          # starts the op helper (empty cache)
    be._warmed = True
    assert warm.running()
    assert warm.delegate([f"rows:{int(GGMLType.Q8_0)}", "top_k"])
    warm.wait()
    w = random_qtensor(GGMLType.Q8_0, (40, 256), np.random.default_rng(0))
    ids = np.array([3, 0, 39], np.int32)
    assert np.array_equal(products.get_rows(w, ids, 2), NumpyBackend().get_rows(w, ids))
    fn = products.drivers(GGMLType.Q8_0)._fns["dequant"].fn
    print("rows hits", sum(fn.stats.cache_hits.values()), "misses", sum(fn.stats.cache_misses.values()))
    from engine.sampler import Sampler, SamplerParams
    from kernels.numba_cpu import sample_chain

    assert Sampler(SamplerParams(seed=1)).sample(np.array([0.5, 2.0, -1.0, 9.0], np.float32)) == 3
    top = select.top_k_desc(np.arange(select.GROUP * 200, dtype=np.float32), 2)
    assert list(top) == [select.GROUP * 200 - 1, select.GROUP * 200 - 2], top
    for name, fn in (("chain", sample_chain.top_k_chain), ("top_k", select.top_k_into)):
        print(name, "hits", sum(fn.stats.cache_hits.values()), "misses", sum(fn.stats.cache_misses.values()))
""")


def test_op_helper_compiles_what_it_is_handed(tmp_path):
    """`warm.delegate`: the op helper compiles the row lookup and the sampler's compiled chain it is handed after its
    op kernels, and this process loads both from the cache (a hit, no compile here)."""
    lines = run_script(DELEGATE, tmp_path)
    assert "rows hits 1 misses 0" in lines, lines
    assert "chain hits 1 misses 0" in lines, lines
    assert "top_k hits 1 misses 0" in lines, lines
