"""`python -m engine COMMAND ...`: one module per subcommand under `engine/commands/`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `main(args) -> int`, and
imports anything heavy (numba, a backend, the server stack) inside `main`, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module; a registry rather than an if-chain
COMMANDS = {
    "run": "engine.commands.run",
    "generate": "engine.commands.generate",
    "bench": "engine.commands.bench",
    "inspect": "engine.commands.inspect",
    "serve": "engine.commands.serve",
    "pull": "engine.commands.pull",
    "list": "engine.commands.list_models",
    "ls": "engine.commands.list_models",
    "show": "engine.commands.show",
    "rm": "engine.commands.rm",
    "perplexity": "engine.commands.perplexity",
    "devices": "engine.commands.devices",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Run GGUF models the way llama.cpp does.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kernels.base import KernelError

    try:
        return args._module.main(args) or 0
    except KernelError as e:  # a GPU fault with an explicit --backend: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `python -m engine inspect m.gguf | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
