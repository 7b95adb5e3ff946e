"""Compile every GPU kernel as CUDA C++ with nvcc, warnings as errors, and print resource use.

    python tools/check_cuda_kernels.py [--arch sm_80 sm_90] [--family products] [--nvrtc]

The kernel sources (kernels/gpu/src) are written once for OpenCL and CUDA; CI runs them on PoCL
(OpenCL on the CPU) and compiles the CUDA dialect here, so a kernel that only breaks under CUDA is
caught on a machine without a GPU. Each family is built for each of its variants (the products
family once per weight type) and each architecture, with `nvcc -cubin -Werror all-warnings
--resource-usage`; the registers, spills and shared memory of every kernel are printed. `--nvrtc`
also compiles through NVRTC (CuPy's own path at run time) when CuPy and libnvrtc are installed.

Exit status 1 if anything fails to compile, with nvcc's message.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernels.gpu import build  # noqa: E402


def variants(family: str) -> list[dict]:
    """The define sets a family is built with at run time (see the backend that builds it)."""
    spec = build.FAMILY_VARIANTS.get(family) if hasattr(build, "FAMILY_VARIANTS") else None
    return spec() if callable(spec) else [{}]


_RES = re.compile(r"Function properties for (\w+)|ptxas info\s*: Used (\d+) registers.*?(\d+) bytes smem|"
                  r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def nvcc_build(nvcc: str, family: str, defines: dict, arch: str, tmp: Path) -> tuple[bool, str]:
    src = tmp / f"{family}.cu"
    src.write_text(build.source(family))
    cmd = [nvcc, "-x", "cu", "-cubin", f"-arch={arch}", "-Werror", "all-warnings", "--resource-usage",
           "-o", str(tmp / f"{family}.cubin"), *build.define_flags(defines), str(src)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode == 0, p.stdout + p.stderr


def summarize(log: str) -> list[str]:
    """One line per kernel: registers, spills, shared memory (from ptxas's --resource-usage)."""
    out, name, spill = [], None, ("0", "0")
    for line in log.splitlines():
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            spill = (m.group(1), m.group(2))
            continue
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            smem = re.search(r"(\d+) bytes smem", line)
            out.append(f"{name:28s} registers {m.group(1):>4}  spill st/ld {spill[0]}/{spill[1]} B  "
                       f"smem {smem.group(1) if smem else 0} B")
            spill = ("0", "0")
    return out


def nvrtc_build(family: str, defines: dict, arch: str) -> tuple[bool, str]:
    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(build.source(family), f"{family}.cu", [], [])
    opts = [*build.define_flags(defines), "--std=c++17", f"--gpu-architecture=compute_{arch.split('_')[1]}"]
    try:
        nvrtc.compileProgram(prog, opts)
        return True, ""
    except Exception as e:  # noqa: BLE001 - nvrtc raises its own error type
        return False, f"{e}\n{nvrtc.getProgramLog(prog)}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=["sm_80", "sm_90"])
    ap.add_argument("--family", nargs="+", default=list(build.FAMILIES))
    ap.add_argument("--nvrtc", action="store_true", help="also compile through NVRTC (needs CuPy + libnvrtc)")
    ap.add_argument("--quiet", action="store_true", help="print failures only")
    args = ap.parse_args(argv)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("nvcc not found", file=sys.stderr)
        return 1
    failures = 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for family in args.family:
            for defines in variants(family):
                for arch in args.arch:
                    tag = f"{family} {arch} {' '.join(build.define_flags(defines))}".strip()
                    ok, log = nvcc_build(nvcc, family, defines, arch, tmp)
                    if not ok:
                        failures += 1
                        print(f"FAIL {tag}\n{log}")
                        continue
                    if not args.quiet:
                        print(f"ok   {tag}")
                        for line in summarize(log):
                            print(f"     {line}")
                    if args.nvrtc:
                        ok, log = nvrtc_build(family, defines, arch)
                        if not ok:
                            failures += 1
                            print(f"FAIL (nvrtc) {tag}\n{log}")
    print(f"{failures} failure(s)" if failures else "all kernels compile", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
