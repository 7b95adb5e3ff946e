"""`python -m engine bench`'s tg, measured again each time a line arrives on stdin: one process, one model
load, many measurements, so that a benchmark can take tg a second before or after whatever it compares
with it (benchmarks/bench_server.py's lone stream) instead of a new `engine bench` process's load and
compilation cache ~10-20 s away, on a VM whose speed drifts by tens of percent within minutes.

    python benchmarks/bench_probe.py -m MODEL -n 128 -r 3 -t 2      # then, per line on stdin: DEPTH

Each line (a context depth, `bench -d`; empty for 0) runs `engine.commands.bench.bench_engine` -- the
very function `engine bench` runs, with the same flags (-n, -r, -t, ...; -p is forced to 0: tg only) --
and prints one JSON line, {"tg": median tokens/s, "depth": DEPTH}. It prints "ready" once loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.commands import bench
from engine.commands.common import load_engine


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench.add_arguments(p)
    args = p.parse_args(argv)
    args.n_prompt = 0
    eng = load_engine(args)
    print("ready", flush=True)
    for line in sys.stdin:
        args.n_depth = int(line.strip() or 0)
        if args.n_depth < 0:
            raise SystemExit(f"error: a depth must be 0 or more, not {args.n_depth}")
        tg = bench.bench_engine(eng, args)["tg"]["median"]
        print(json.dumps({"tg": tg, "depth": args.n_depth}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
