"""How the TSER presets' settings were chosen: on the training splits alone (docs/archive.md, "TSER").

    python scripts/tser_select.py device=cpu device.num_threads=1

Each preset of ``--presets`` is trained on each problem with each candidate of ``--candidates`` (a config override,
``-`` for none), ``data.val_fraction`` of the training split held out (the test split is never read for the choice:
its score is not printed), seed ``--seed``. One row per preset and candidate: each problem's validation RMSE and R²
(``val_rmse``, ``val_r2`` of the last model, as ``metrics.json`` has them) and the mean R² over the problems, the
score the choice is made by (R² has no units, so problems of different scales weigh alike).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tser_table import CONF, DATA_ROOT, PRESETS, PROBLEMS, problem_root, split_overrides

from birnn.schema.config import validate
from birnn.train import train


def split_candidates(argv: list[str]) -> tuple[list[str], list[str]]:
    """The values after ``--candidates`` (``KEY=VALUE`` or ``-``, up to the next ``--`` option) and the rest of
    ``argv``: taken out first, so that ``split_overrides`` does not read them as overrides for every run."""
    if "--candidates" not in argv:
        return [], argv
    start = end = argv.index("--candidates") + 1
    while end < len(argv) and not argv[end].startswith("--"):
        end += 1
    return argv[start:end], argv[: start - 1] + argv[end:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--candidates", nargs="+", default=["-", "data.normalize_series=true"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    candidates, rest = split_candidates(sys.argv[1:] if argv is None else argv)
    own, overrides = split_overrides(rest)
    args = parser.parse_args(own + (["--candidates", *candidates] if candidates else []))
    lines = ["| preset | candidate | " + " | ".join(f"{p} val RMSE / R²" for p in args.problems) + " | mean val R² |"]
    lines.append("|" + " --- |" * (len(args.problems) + 3))
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for preset in args.presets:
            for candidate in args.candidates:
                cells, r2 = [], []
                for name in args.problems:
                    root = problem_root(name, args.data_root.resolve())
                    run = [f"experiment={preset}", f"data.name={name}", f"seed={args.seed}", "trainer.log_images=false"]
                    run += [f"data.val_fraction={args.val_fraction}", *([] if root is None else [f"data.root={root}"])]
                    run += [] if candidate == "-" else [candidate]
                    cfg = compose("config", overrides=[*run, *overrides])
                    validate(cfg)
                    metrics = train(cfg, Path(tmp) / f"{preset}-{candidate}-{name}")
                    cells.append(f"{metrics['val_rmse']:.4g} / {metrics['val_r2']:.3f}")  # RMSE / R²
                    r2.append(metrics["val_r2"])
                    print(f"{preset} {candidate} {name}: val RMSE {cells[-1]}", flush=True)
                lines.append(f"| {preset} | {candidate} | " + " | ".join(cells) + f" | {statistics.mean(r2):.3f} |")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
