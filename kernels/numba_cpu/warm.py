"""A first run compiles on two cores: a helper process builds the op kernels while this one builds the products.

With an empty kernel cache (kernel_cache.py) a first `run` spends ~13 s of CPU compiling (SmolLM2): the
product drivers of each weight type present (drivers.py) and the op kernels (ops.py). Numba
compiles one function at a time per process (a global compiler lock), so the wall time is the sum.
Split in two it is about halved on a machine with a second core:

* `start()` (NumbaBackend's constructor) spawns a Python running `main` below: it calls attention,
  the activations, RMSNorm and RoPE (`ops`), small and big, on arrays of the forward pass's dtypes
  and layouts, so that their drivers land in the disk cache with the signatures the model will ask
  for; then it writes a stamp file (later processes spawn nothing), and compiles what this process
  hands over (`delegate`) until its stdin closes.
* meanwhile this process goes on loading the model; at the first op (`NumbaOps._warm`, before the
  first forward pass) it compiles the decode and prompt drivers of the types the model uploaded
  (`products_for`; with four or more, a second helper takes every other one), hands the embedding's
  row lookup and the sampler's top-k to the first helper, then waits for the helpers and loads
  their kernels from the cache. SmolLM2 on a 2-vCPU Xeon VM: both processes finish compiling at
  ~7 s, first token at 7.3 s.

The helper only fills the cache: if it fails, is slow (WAIT_S) or is switched off
(GGUFPY_WARM_HELPER=0), this process compiles whatever it still lacks itself, as before. It is not
started on a one-core machine, with Numba's JIT disabled, or without a writable kernel cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

ENV_SWITCH = "GGUFPY_WARM_HELPER"
WAIT_S = 300.0  # longest wait for the helper (a slow machine compiles the ops in ~20-60 s)

_lock = threading.Lock()
_proc: subprocess.Popen | None = None
_started = False


def _stamp_path() -> Path | None:
    """The helper's stamp: named by everything that invalidates Numba's entries for the op kernels
    (their sources, Numba, Python, the CPU)."""
    cache = os.environ.get("NUMBA_CACHE_DIR")
    if not cache:
        return None
    import llvmlite.binding as ll
    import numba

    h = hashlib.sha1()
    here = Path(__file__).resolve().parent
    for name in ("ops.py", "attention.py", "op_math.py", "activations.py", "rows_common.py", "warm.py"):
        h.update((here / name).read_bytes())
    h.update(f"{numba.__version__} {sys.version} {ll.get_host_cpu_name()} {ll.get_host_cpu_features().flatten()}"
             .encode())
    h.update(str(here).encode())  # Numba's entries are per source directory
    return Path(cache) / f"ops-warm-{h.hexdigest()[:16]}"


def _wanted() -> bool:
    if os.environ.get(ENV_SWITCH, "1") == "0" or os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
        return False
    return (os.cpu_count() or 1) >= 2


def _spawn(entry: str, args: list[str], fed: bool = False) -> subprocess.Popen:
    """A Python running `entry(args)` of this module with this process's kernel cache, 2 threads, no
    helper of its own; `fed`: its stdin a pipe for `delegate`."""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding `kernels`
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["NUMBA_NUM_THREADS"] = "2"
    env[ENV_SWITCH] = "0"  # a helper spawns no helper
    code = f"import sys; from kernels.numba_cpu.warm import {entry}; raise SystemExit({entry}(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                            stdin=subprocess.PIPE if fed else subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def start() -> None:
    """Spawn the helper unless the op kernels are known to be cached (or see the module doc)."""
    global _proc, _started
    with _lock:
        if _started:
            return
        _started = True
        if not _wanted():
            return
        try:
            stamp = _stamp_path()
            if stamp is None or stamp.exists():
                return
            _proc = _spawn("main", [str(stamp)], fed=True)
        except Exception:  # pragma: no cover - no helper: this process compiles everything
            _proc = None


def running() -> bool:
    """Whether a helper was started and not yet waited for."""
    return _proc is not None


def delegate(specs: list[str]) -> bool:
    """Hand the running helper more to compile once its op kernels are done: `specs` as `_compile_spec`
    reads them. The helper is told there is nothing more (its stdin closed) either way. False where no
    helper takes them (none running, or it is gone): they are then compiled here on first use."""
    with _lock:
        proc = _proc
    if proc is None or proc.stdin is None or proc.stdin.closed:
        return False
    try:
        proc.stdin.write("".join(f"{s}\n" for s in specs))
        proc.stdin.close()
        return True
    except (OSError, ValueError):  # the helper has exited: compiled here instead
        return False


def wait() -> None:
    """Wait for the helper, if one is running (at most WAIT_S; then it is left to finish on its own)."""
    global _proc
    with _lock:
        proc, _proc = _proc, None
    if proc is not None and proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()  # nothing (more) delegated
        except OSError:  # pragma: no cover - the helper is gone
            pass
    _wait(proc)


def _wait(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    try:
        proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:  # pragma: no cover - very slow machine
        pass


PRODUCT_HELPER_MIN = 4  # drivers before a second helper takes half (it costs ~1.5 s to start: SmolLM2, three
#                        drivers, measured 8.8 s cold without it, 10.6 with)


def products_for(backend, qtypes: dict, rows: tuple = ()) -> None:
    """Compile (or load) the product drivers of the types in `qtypes` ({type: matrices of it}) and the
    activation rounding they take: one tiny product per driver through the backend's own call, so that
    the signatures are those of the model's products -- a one-token product (decode) for every type, a
    16-token one (a prompt) for the types of more than one matrix (a prompt's products are the layers';
    a type used once is the token embedding's or the output's, which sees only the last token).

    The row lookup of the types in `rows` (the token embedding's, when the first op is its lookup) and
    the sampler's top-k go to the op helper, which has time left once its op kernels are done
    (`delegate`; SmolLM2 cold: 0.6 s of this process's ~8 s).

    With PRODUCT_HELPER_MIN drivers or more (Gemma 3 has eight: four types), a second helper process
    compiles every other one meanwhile (the cache's index writes are locked, cache_lock.py); this
    process then loads them from the cache."""
    from quant import GGMLType

    drivers = [(int(qt), n_tok) for qt in sorted({GGMLType(t) for t in qtypes})
               for n_tok in ((1, 16) if qtypes[qt] > 1 else (1,))]
    delegate([f"rows:{int(qt)}" for qt in rows] + ["top_k"])
    helper = None
    if len(drivers) >= PRODUCT_HELPER_MIN and _wanted():
        try:
            mode = getattr(backend, "activations", "llama.cpp")
            helper = _spawn("products_main", [mode] + [f"{q}:{n}" for q, n in drivers[1::2]])
            drivers = drivers[0::2]
        except Exception:  # pragma: no cover - this process compiles them all
            helper = None
    for qt, n_tok in drivers:
        _product(backend, qt, n_tok)
    _wait(helper)


def _product(backend, qt: int, n_tok: int) -> None:
    """An n_tok-token product of an 8 x 256 matrix of type qt (zeros) through the backend."""
    import numpy as np

    from quant import QTensor, quant_type

    info = quant_type(qt)
    n_in = 256  # a whole number of blocks of every type
    if info.storage_dtype == np.uint8:
        buf = np.zeros(8 * info.row_bytes(n_in), np.uint8)
    else:
        buf = np.zeros(8 * n_in, info.storage_dtype)
    w = QTensor.from_buffer(qt, (8, n_in), buf, name=f"warm-{qt}")
    backend.matmul(np.zeros((n_tok, n_in), np.float32), w)


def _compile_spec(backend, spec: str) -> None:
    """One delegated compile: "type:tokens" (a product driver), "rows:type" (its row lookup), "top_k" (the
    sampler's top-k and chain, kernels/numba_cpu/sample_chain.py)."""
    import numpy as np

    if spec == "top_k":  # the sampler's compiled parts (one signature each)
        from kernels.numba_cpu import sample_chain

        x = np.zeros(64, np.float32)
        sample_chain.expf(x)  # (logf and log2f: the same compiled function)
        sample_chain.top_k_chain(x, 40, np.zeros(1, np.int64), np.ones(1), 0, 0.5, np.empty(40, np.int64),
                                 np.empty(40, np.float32), np.ones(2, np.int64), np.ones(3))
    elif spec.startswith("rows:"):
        from quant import QTensor, quant_type

        info = quant_type(int(spec[5:]))
        buf = np.zeros(8 * info.row_bytes(256), np.uint8) if info.storage_dtype == np.uint8 else \
            np.zeros(8 * 256, info.storage_dtype)
        backend.get_rows(QTensor.from_buffer(int(spec[5:]), (8, 256), buf, name="warm-rows"), np.array([1], np.int32))
    elif spec:
        qt, n_tok = spec.split(":")
        _product(backend, int(qt), int(n_tok))


def products_main(argv: list[str]) -> int:
    """The product helper: argv is the activations mode, then "type:tokens" per driver."""
    from kernels.numba_cpu import NumbaBackend

    backend = NumbaBackend(n_threads=2, activations=argv[0])
    backend._warmed = True
    for spec in argv[1:]:
        _compile_spec(backend, spec)
    return 0


def ops(backend) -> None:
    """Call the ops a forward pass uses on arrays made as it makes them (fresh float32 in C order, int32
    positions), small and big, so that the serial and the parallel drivers compile (or load) with the
    model's signatures: attention (the llama.cpp-mode variant), the activations, RMSNorm, RoPE and the
    fused RoPE + cache write (~5.5 s of compiling on a 2-vCPU VM; the products of a model's types, ~6 s
    for SmolLM2's three drivers, are the main process's share)."""
    import numpy as np

    from kernels.base import RopeParams

    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    n_head, n_head_kv, d = 8, 2, 64
    for n_tok in (1, 64):  # decode (serial drivers), prompt (parallel ones)
        pos = backend.ints(np.arange(n_tok), "pos")
        q = f32(n_tok * n_head * d).reshape(n_tok, n_head, d)
        k = f32(n_tok * n_head_kv * d).reshape(n_tok, n_head_kv, d)
        kc = backend.kv_store(backend.new_kv(n_tok + 8, n_head_kv, d), k, pos)
        vc = backend.kv_store(backend.new_kv(n_tok + 8, n_head_kv, d), k, pos)
        backend.attention(q, kc, vc, pos, scale=0.125)
        backend.swiglu(f32(n_tok, 1536), f32(n_tok, 1536))
        backend.rms_norm(f32(n_tok, 576), backend.asarray(np.ones(576, np.float32)), 1e-5)
        backend.rope(q, pos, RopeParams(n_dims=d))
        backend.rope_kv_store(backend.new_kv(n_tok + 8, n_head_kv, d), backend.new_kv(n_tok + 8, n_head_kv, d), q, k, k,
                              pos, RopeParams(n_dims=d))


def main(argv: list[str]) -> int:
    stamp = Path(argv[0])
    from kernels.numba_cpu import NumbaBackend

    backend = NumbaBackend(n_threads=2)
    backend._warmed = True  # no waiting on itself
    ops(backend)
    stamp.write_text("op kernels compiled into this cache\n")
    for spec in sys.stdin:  # what the main process hands over (`delegate`), until it closes the pipe
        _compile_spec(backend, spec.strip())
    return 0
