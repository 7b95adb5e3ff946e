"""CLI subcommands, one module each (see engine/cli.py)."""
