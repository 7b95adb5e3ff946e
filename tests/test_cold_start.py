"""A first run on a fresh machine: the engine installed as a plain (non-editable) package, an empty
kernel cache. `python -m engine run` must answer, its kernels must land in the per-user cache (not in
the package's folder, which may be read-only), and a second run must load them all from there.

No timing is asserted: the cold and warm times are measured by benchmarks/cold_start.py and stated
in the README's benchmark table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.numba_cpu import kernel_cache

ROOT = Path(__file__).resolve().parent.parent


def _install_copy(dest: Path) -> Path:
    """The packages pyproject installs, copied as `pip install .` lays them out (no caches)."""
    site = dest / "site-packages"
    for pkg in ("engine", "kernels", "quant"):
        shutil.copytree(ROOT / pkg, site / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for path in sorted(site.rglob("*"), reverse=True):  # read-only, as a system site-packages
        path.chmod(0o555 if path.is_dir() else 0o444)
    site.chmod(0o555)
    return site


def _cache_files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*.nb[ic]")}


def _run(site: Path, home: Path, model: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(home), HOME=str(home))
    return subprocess.run([sys.executable, "-m", "engine", "run", "-m", str(model), "--backend", "cpu", "-t", "2",
                           "-n", "2", "--temp", "0", "Hello"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def test_first_run_with_empty_kernel_cache_answers_and_fills_the_user_cache(tmp_path, smollm2_path):
    site = _install_copy(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    try:
        where = subprocess.run([sys.executable, "-c", "import kernels; print(kernels.__file__)"], cwd=tmp_path,
                               env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True, text=True)
        assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr

        cold = _run(site, home, smollm2_path, tmp_path)
        assert cold.returncode == 0, cold.stderr[-3000:]
        assert cold.stdout.strip(), cold.stderr[-3000:]
        cache = home / "ggufpy" / "kernels"
        entries = _cache_files(cache)
        assert any(name.endswith(".nbi") for name in entries), sorted(cache.rglob("*"))
        assert not list(site.rglob("*.nb[ic]")), "kernels were cached inside the installed package"

        warm = _run(site, home, smollm2_path, tmp_path)
        assert warm.returncode == 0, warm.stderr[-3000:]
        assert warm.stdout.strip() == cold.stdout.strip()
        assert _cache_files(cache) == entries, "the second run compiled kernels instead of loading them"
    finally:
        for path in [site, *site.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)


def test_cache_dir_prefers_numba_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert kernel_cache.choose() == str(tmp_path / "mine")


def test_cache_dir_is_per_user_then_temp(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernel_cache.choose() == str(tmp_path / "xdg" / "ggufpy" / "kernels")

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "sub"))  # cannot be created: not writable
    monkeypatch.setattr(kernel_cache.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    chosen = kernel_cache.choose()
    assert chosen is not None and Path(chosen).parent == tmp_path / "tmp"
    assert Path(chosen).name.startswith("ggufpy-kernels-")


def test_configure_points_an_imported_numba_at_the_cache(monkeypatch, tmp_path):
    import numba

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "k"))
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)
    monkeypatch.setattr(kernel_cache, "_configured", None)
    assert kernel_cache.configure() == str(tmp_path / "k")
    assert numba.config.CACHE_DIR == str(tmp_path / "k")


def test_import_engine_does_not_import_numba():
    code = "import sys, engine; print('numba' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
