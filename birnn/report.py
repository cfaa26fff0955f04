"""Sweep summaries: ``python -m birnn.report <sweep dir or run dirs...> [--metric M] [--out DIR]`` rebuilds
``summary.csv``, ``summary.md`` and ``summary.png`` from the records of finished runs and prints the tables;
``--metric M`` writes ``summary-M.*`` beside them instead (the sweep's own summary stays as it is).

It is a plain CLI: it creates no run dir. The summaries themselves are ``birnn.records.summary``'s.
"""

from __future__ import annotations

from birnn.schema.importpath import drop_cwd

drop_cwd(__name__)  # python -m put the working directory first on sys.path: off it, before anything imports

import argparse
import os
import sys
from pathlib import Path

from birnn.records.summary import find_runs, summarize
from birnn.schema import console
from birnn.schema.errors import BirnnError


@console.closed_pipe_ok
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=console.prog("birnn.report"), description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="a sweep dir, or run dirs")
    parser.add_argument(
        "--metric",
        help="sort key, best first (default: best_val_accuracy when present, else test_accuracy); the files are "
        "then summary-METRIC.csv/.md/.png, beside the sweep's own summary",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write the summary files (default: the one sweep dir "
        "given, else the folder that holds all the runs)",
    )
    args = parser.parse_args(argv)
    try:
        runs = find_runs([path.resolve() for path in args.paths])
        out = (args.out or (args.paths[0] if len(args.paths) == 1 else Path(os.path.commonpath(runs)))).resolve()
        stem = f"summary-{args.metric}" if args.metric else "summary"
        print(summarize(runs, out, args.metric, stem), end="")
    except BirnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nWrote {stem}.csv, {stem}.md and {stem}.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
