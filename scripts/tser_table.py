"""Train birnn's TSER presets on regression problems and write a Markdown table of test RMSE beside the published
results and the trivial and linear predictors (issue #36; docs/archive.md).

    python scripts/tser_table.py device=cpu device.num_threads=1     # 3 presets, seeds 0 1 2, the 3 problems
    python scripts/tser_table.py --presets tser --problems Covid3Month --seeds 0 device=cpu
    python scripts/tser_table.py --quick --problems CardanoSentiment device=cpu    # tiny: 1 seed, 5 steps

Problems: Covid3Month and CardanoSentiment are bundled in the aeon wheel (``data.root`` null); any other (Tecator,
by default) is read from ``--data-root`` (default ``../shared/data/tser`` beside the repository), as
``data=uea data.root=DIR data.name=NAME`` reads it. Each problem trains in-process (``birnn.train.train``) under
each preset of ``--presets`` (default ``experiment=tser``, ``tser_lstm_fcn``, ``tser_inception_time``; nothing
set per problem) on each seed, on the problem's default train/test split. Extra ``KEY=VALUE`` arguments are config
overrides for every run.

Columns, and where each comes from:

- ``birnn test RMSE``: mean ± std over the seeds of ``test_rmse`` in each run's ``metrics.json`` (target units);
- ``mean / median predictor``: the RMSE on the test split of always answering the training split's mean
  (median) target, computed here;
- ``RidgeCV``: scikit-learn's ``RidgeCV`` (30 alphas log-spaced from 1e-6 to 1e3, leave-one-out selection on the
  training split) on the raw series flattened to one row each, computed here;
- one column per published method of ``--methods`` (default: ROCKET, FreshPRINCE, DrCIF, FCN, InceptionTime,
  ResNet, 1-NN DTW), read from ``--published`` (``problem,method,rmse,source``; default ``tser_published.csv``
  beside this script: fold 0 of the TSER archive expansion's results files), with the sources under the table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

import birnn.schema.config  # noqa: F401  (registers the schemas)
from birnn.data.uea import bundled_root
from birnn.schema.config import validate
from birnn.train import train

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PUBLISHED = Path(__file__).with_name("tser_published.csv")
DATA_ROOT = REPO.parent / "shared" / "data" / "tser"  # ../shared/data/tser from the repository root
PRESETS = ("tser", "tser_lstm_fcn", "tser_inception_time")  # experiment=...; nothing set per problem
PROBLEMS = ("Covid3Month", "CardanoSentiment", "Tecator")
METHODS = ("ROCKET", "FreshPRINCE", "DrCIF", "FCN", "InceptionTime", "ResNet", "1-NN DTW")
ALPHAS = np.logspace(-6, 3, 30)  # RidgeCV's grid
QUICK = ("trainer.max_steps=5",)  # --quick: one seed, five optimizer steps (a test of the script, not a result)


def problem_root(name: str, data_root: Path) -> Path | None:
    """None for a problem bundled in the aeon wheel, else ``data_root``."""
    return None if (bundled_root() / name / f"{name}_TRAIN.ts").is_file() else data_root


def read_split(name: str, root: Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of ``<root>/<name>/<name>_<split>.ts``: x float64 ``(N, channels, steps)``, y float64 ``(N,)``."""
    from aeon.datasets import load_from_ts_file

    folder = bundled_root() if root is None else root
    x, y = load_from_ts_file(str(folder / name / f"{name}_{split}.ts"))
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def rmse(predicted: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, dtype=np.float64) - y) ** 2)))


def references(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Test RMSE of the training split's mean and median, and of ``RidgeCV`` on the raw flattened series."""
    from sklearn.linear_model import RidgeCV

    (train_x, train_y), (test_x, test_y) = train, test
    ridge = RidgeCV(alphas=ALPHAS).fit(train_x.reshape(len(train_x), -1), train_y)
    return {
        "mean predictor": rmse(np.full_like(test_y, train_y.mean()), test_y),
        "median predictor": rmse(np.full_like(test_y, np.median(train_y)), test_y),
        "RidgeCV": rmse(ridge.predict(test_x.reshape(len(test_x), -1)), test_y),
    }


def read_published(path: Path) -> tuple[dict[tuple[str, str], float], dict[str, str]]:
    """``{(problem, method): rmse}`` and ``{method: source}`` from a ``problem,method,rmse,source`` CSV (method
    names without their ``, published`` suffix)."""
    scores, sources = {}, {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            method = row["method"].replace(", published", "")
            scores[row["problem"], method] = float(row["rmse"])
            sources.setdefault(method, row["source"])
    return scores, sources


def describe(x: np.ndarray, train: int, test: int) -> dict:
    return {"channels": x.shape[1], "steps": x.shape[2], "train": train, "test": test}


def table(rows: list[dict], refs: dict, published: dict, sources: dict, methods: tuple[str, ...]) -> str:
    """The Markdown table: one row per problem and preset, then the sources of the published columns."""
    head = [
        "problem",
        "preset",
        "channels x steps",
        "train / test",
        "birnn test RMSE",
        "seconds / seed",
        "mean / median predictor",
        "RidgeCV",
        *(f"{m}, published" for m in methods),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        scores, ref = r["rmse"], refs[r["problem"]]
        spread = f" ± {statistics.stdev(scores):.4g}" if len(scores) > 1 else ""
        cells = [
            r["problem"],
            r["preset"],
            f"{r['channels']} x {r['steps']}",
            f"{r['train']} / {r['test']}",
            f"{statistics.mean(scores):.4g}{spread} ({len(scores)} seed{'s' if len(scores) > 1 else ''})",
            f"{statistics.mean(r['seconds']):.1f}",
            f"{ref['mean predictor']:.4g} / {ref['median predictor']:.4g}",
            f"{ref['RidgeCV']:.4g}",
            *(f"{published[r['problem'], m]:.4g}" if (r["problem"], m) in published else "" for m in methods),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    notes = [
        "- birnn test RMSE: mean ± std over seeds of test_rmse (metrics.json), in the target's units",
        "- mean / median predictor: the training split's mean (median) target answered for every test series",
        "- RidgeCV: scikit-learn RidgeCV, 30 alphas log-spaced 1e-6..1e3 (leave-one-out on the training split), "
        "on the raw series flattened",
        *(f"- {m}, published: {sources[m]}" for m in methods if m in sources),
    ]
    return "\n".join([*lines, "", *notes]) + "\n"


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """The script's own arguments and the config overrides (``KEY=VALUE``), wherever these stand."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    return [a for a in argv if a not in overrides], overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="experiment presets (default: %(default)s)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="problems not bundled (default: %(default)s)")
    parser.add_argument("--published", type=Path, default=PUBLISHED, help="problem,method,rmse,source CSV")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help="published columns (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="one seed, 5 optimizer steps: checks the script only")
    parser.add_argument("--out", type=Path, default=Path("tser_table.md"))
    own, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(own)
    if args.quick:
        args.seeds, overrides = args.seeds[:1], [*QUICK, *overrides]
    published, sources = read_published(args.published)
    rows, refs = [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for name in args.problems:
            root = problem_root(name, args.data_root.resolve())
            train_split, test_split = read_split(name, root, "TRAIN"), read_split(name, root, "TEST")
            refs[name] = references(train_split, test_split)
            print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in refs[name].items()), flush=True)
            shape = describe(train_split[0], len(train_split[1]), len(test_split[1]))
            for preset in args.presets:
                row = {"problem": name, "preset": preset, **shape, "rmse": [], "seconds": []}
                for seed in args.seeds:
                    run = [f"experiment={preset}", f"data.name={name}", "trainer.log_images=false", f"seed={seed}"]
                    run += [] if root is None else [f"data.root={root}"]
                    cfg = compose("config", overrides=[*run, *overrides])
                    validate(cfg)
                    metrics = train(cfg, Path(tmp) / f"{name}-{preset}-{seed}")
                    row["rmse"].append(metrics["test_rmse"])
                    row["seconds"].append(metrics["train_seconds"])
                    print(
                        f"{name} {preset} seed {seed}: test RMSE {metrics['test_rmse']:.4g} "
                        f"({metrics['steps']} steps, {metrics['train_seconds']:.1f} s)",
                        flush=True,
                    )
                rows.append(row)
    minutes = (time.perf_counter() - start) / 60
    text = table(rows, refs, published, sources, tuple(args.methods)) + f"\nThe whole table took {minutes:.1f} min.\n"
    args.out.write_text(text)
    print(f"\n{text}\nwrote {args.out}")


if __name__ == "__main__":
    main()
