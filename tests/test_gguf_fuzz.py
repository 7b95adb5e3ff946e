"""The GGUF reader and the tokenizer built from its metadata against ≥ 5,000 mutated files
(tests/gguf_fuzz.py): only clear GGUFError / TokenizerError, no other exception, no signal, no hang.

The fuzzer runs in its own process, so a SIGSEGV or SIGBUS shows as a negative return code and a hang
as the per-case SIGALRM (or this test's timeout). The seed is fixed: a failure names the case number
that replays it (`python tests/gguf_fuzz.py --seed 0 --start N --count 1 --work DIR`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parent.parent
FUZZER = ROOT / "tests" / "gguf_fuzz.py"


def run_fuzzer(*args: str, timeout: float = 600) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, str(FUZZER), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode >= 0, f"the fuzzer died by signal {-proc.returncode}: {proc.stderr[-3000:]}"
    try:
        stats = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"fuzzer output is not its report (rc {proc.returncode}): "
                             f"{proc.stdout[-2000:]} {proc.stderr[-3000:]}") from None
    return proc.returncode, stats


def test_five_thousand_mutated_files_give_only_clear_errors():
    rc, stats = run_fuzzer("--count", "5000", "--seed", "0")
    assert stats["cases"] == 5000
    assert not stats["failures"], json.dumps(stats["failures"][:3], indent=1)
    assert rc == 0
    assert set(stats["errors"]) <= {"GGUFError", "TokenizerError", "UnsupportedQuantType"}, stats["errors"]
    # the mutations are not all trivially fatal: a share of files still opens, and both checks fire
    assert stats["opened"] >= 500 and stats["errors"]["GGUFError"] >= 1000 and stats["errors"]["TokenizerError"] >= 5


@pytest.mark.parametrize("seed,case", [(0, 2921), (6, 1001), (2, 3994)])
def test_cases_the_fuzzer_found_stay_fixed(seed, case, tmp_path):
    """seed 0 case 2921: a tensor shape [32, 131072, 2^56, 0] (no bytes, 2^78 elements) reached NumPy's
    reshape; seed 6 case 1001: [32, 2^56 + 2, 0] F32, 2^61 elements but 2^63 bytes; seed 2 case 3994:
    tokenizer.ggml.tokens overwritten by a numeric array."""
    rc, stats = run_fuzzer("--count", "1", "--seed", str(seed), "--start", str(case), "--work", str(tmp_path),
                           timeout=120)
    assert rc == 0 and not stats["failures"] and stats["cases"] == 1, stats


def test_mutation_is_reproducible(tmp_path):
    """Same seed and case number, same mutated bytes: a reported case can be replayed."""
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tools"))
    import gguf_fuzz

    bases = gguf_fuzz.write_bases(tmp_path / "bases")
    seen = []
    for _ in range(2):
        path, what = gguf_fuzz.make_case(17, 0, bases, tmp_path)
        seen.append((path.read_bytes(), what))
    assert seen[0] == seen[1]
    other, _ = gguf_fuzz.make_case(18, 0, bases, tmp_path)
    assert other.read_bytes() != seen[0][0]
