"""Train birnn on UCR/UEA archive problems bundled with aeon and write a Markdown table beside the published results.

    python scripts/uea_table.py device=cpu                        # every bundled problem, seeds 0 1 2, 3 presets
    python scripts/uea_table.py --problems JapaneseVowels --seeds 0 device=cpu
    python scripts/uea_table.py --presets uea_lstm_fcn --problems GunPoint --seeds 0 device=cpu trainer.max_steps=5
    python scripts/uea_table.py --presets uea --problems OSULeaf ArrowHead device=cpu model.stem=conv data.patch=1
    python scripts/uea_table.py --baselines --out uea_table.md    # also rerun 1-NN DTW and ROCKET here

Each problem trains in-process with ``birnn.train.train`` under each preset of ``--presets`` (default: all three,
``experiment=uea`` (the BiLSTM), ``uea_lstm_fcn`` and ``uea_inception_time``; nothing is set per problem), with
``data.name=NAME``, on the same seeds and the default split. Extra arguments are config overrides applied to
every run (``KEY=VALUE``, anywhere on the line: after ``--problems`` or ``--seeds`` too).

One row per problem and preset. Columns: problem, preset, channels, series lengths, train/test sizes, birnn test
accuracy (mean ± std over seeds),
epochs, training seconds (mean per seed), the problem's wall seconds (every seed, data loading and testing
included; with ``--baselines`` theirs too), then one column per published method and, with ``--baselines``,
aeon's 1-NN DTW and ROCKET trained here on the same default split, then birnn's gap in points to ROCKET and
InceptionTime. Published accuracies come from ``--published``, a CSV with the columns
``problem,method,accuracy,source`` (default: ``uea_published.csv`` beside this script, the bake-off papers'
figures on each problem's default split, resample 0); the sources are listed under the table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

import birnn.schema.config  # noqa: F401  (registers the schemas)
from birnn.data import Splits
from birnn.data.uea import bundled_problems, load_uea
from birnn.schema.config import validate
from birnn.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
PUBLISHED = Path(__file__).with_name("uea_published.csv")
PRESETS = ("uea", "uea_lstm_fcn", "uea_inception_time")  # experiment=...; every problem: no per-problem settings
# Every classification problem bundled in the installed aeon wheel but its 3-series smoke test.
DEFAULT_PROBLEMS = [p for p in bundled_problems() if p != "UnitTest"]
VERSUS = ("ROCKET, published", "InceptionTime, published")  # gap columns: birnn minus these, in points


def describe(splits: Splits) -> dict:
    """Channels, length range and split sizes of a problem."""
    if splits.train_lengths is None:
        lengths = str(splits.train_x.shape[1])
    else:
        both = [*splits.train_lengths.tolist(), *splits.test_lengths.tolist()]
        lengths = f"{min(both)}-{max(both)}"
    return {
        "channels": splits.input_size,
        "lengths": lengths,
        "train": len(splits.train_y),
        "test": len(splits.test_y),
        "classes": splits.num_classes,
    }


def read_published(path: Path) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], list[str]]]:
    """``{(problem, method): accuracy}`` and ``{(method, source): [problem, ...]}`` from a
    ``problem,method,accuracy,source`` CSV."""
    scores, sources = {}, {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            scores[row["problem"], row["method"]] = float(row["accuracy"])
            sources.setdefault((row["method"], row["source"]), []).append(row["problem"])
    return scores, sources


def baselines(splits: Splits, kernels: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Test accuracy of aeon's 1-NN DTW (full window; dependent DTW across channels) and ROCKET (``kernels``
    random kernels, ridge) trained on ``splits``: the raw series birnn reads, before its standardization.

    1-NN DTW compares each series at its own length; ROCKET needs one length, so it gets the series
    zero-padded at the end, as birnn pads them.
    """
    from aeon.classification.convolution_based import RocketClassifier
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    def channels_first(x, lengths):  # aeon's layout: (N, channels, steps), or a list of (channels, length)
        x = x.numpy().transpose(0, 2, 1)
        return x if lengths is None else [s[:, :n] for s, n in zip(x, lengths.tolist())]

    train_y, test_y = splits.train_y.numpy(), splits.test_y.numpy()
    knn = KNeighborsTimeSeriesClassifier(distance="dtw")
    knn.fit(channels_first(splits.train_x, splits.train_lengths), train_y)
    rocket = RocketClassifier(n_kernels=kernels, random_state=seed)
    rocket.fit(channels_first(splits.train_x, None), train_y)
    return {
        "1-NN DTW, here": float((knn.predict(channels_first(splits.test_x, splits.test_lengths)) == test_y).mean()),
        "ROCKET, here": float((rocket.predict(channels_first(splits.test_x, None)) == test_y).mean()),
    }


def table(rows: list[dict], published: dict, sources: dict, versus: tuple[str, ...] = ()) -> str:
    """The Markdown table; ``versus``: methods to add a column "birnn - method" for, in points (mean over seeds)."""
    here = {(r["problem"], m): a for r in rows for m, a in r.get("baselines", {}).items()}
    scores = {**published, **here}
    methods = list(dict.fromkeys([*(m for m, _ in sources), *(m for _, m in here)]))
    presets = any("preset" in r for r in rows)
    head = [
        "problem",
        *(["preset"] if presets else []),
        "channels",
        "lengths",
        "train / test",
        "classes",
        "birnn test accuracy",
        "epochs",
        "seconds",
        "problem wall s",
        *methods,
        *(f"birnn - {m.split(',')[0]}" for m in versus),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        acc = r["accuracies"]
        spread = f" ± {statistics.stdev(acc):.3f}" if len(acc) > 1 else ""
        cells = [
            r["problem"],
            *([r.get("preset", "")] if presets else []),
            r["channels"],
            r["lengths"],
            f"{r['train']} / {r['test']}",
            r["classes"],
            f"{statistics.mean(acc):.3f}{spread}" + (f" ({len(acc)} seeds)" if len(acc) > 1 else ""),
            r["epochs"],
            f"{statistics.mean(r['seconds']):.1f}",
            f"{r['wall']:.0f}",
            *(f"{scores[r['problem'], m]:.3f}" if (r["problem"], m) in scores else "" for m in methods),
            *(
                f"{100 * (statistics.mean(acc) - scores[r['problem'], m]):+.1f}" if (r["problem"], m) in scores else ""
                for m in versus
            ),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    notes = [f"- {m} ({', '.join(problems)}): {s}" for (m, s), problems in sources.items()]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """The script's own arguments and the config overrides (``KEY=VALUE``), wherever these stand: after
    ``--problems A B`` or ``--seeds 0`` an override would otherwise be read as one more problem or seed."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    return [a for a in argv if a not in overrides], overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=DEFAULT_PROBLEMS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="experiment presets (default: %(default)s)")
    parser.add_argument(
        "--published",
        type=Path,
        default=PUBLISHED,
        help="CSV of published accuracies: problem,method,accuracy,source (default: %(default)s)",
    )
    parser.add_argument(
        "--baselines", action="store_true", help="also train aeon's 1-NN DTW and ROCKET on each problem's default split"
    )
    parser.add_argument("--out", type=Path, default=Path("uea_table.md"))
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (anywhere), e.g. device=cpu")
    own, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(own)
    args.overrides += overrides
    published, sources = read_published(args.published)
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for name in args.problems:
            splits = load_uea(name=name)
            for preset in args.presets:
                problem_start = time.perf_counter()
                row = {"problem": name, "preset": preset, **describe(splits), "accuracies": [], "seconds": []}
                for seed in args.seeds:
                    run = [f"experiment={preset}", f"data.name={name}", "trainer.log_images=false", f"seed={seed}"]
                    cfg = compose("config", overrides=[*run, *args.overrides])
                    validate(cfg)
                    metrics = train(cfg, Path(tmp) / f"{name}-{preset}-{seed}")
                    row["accuracies"].append(metrics["test_accuracy"])
                    row["seconds"].append(metrics["train_seconds"])
                    row["epochs"] = metrics["epochs"]
                    print(
                        f"{name} {preset} seed {seed}: test accuracy {metrics['test_accuracy']:.4f} "
                        f"({metrics['epochs']} epochs, {metrics['train_seconds']:.1f} s)",
                        flush=True,
                    )
                if args.baselines and preset == args.presets[0]:
                    row["baselines"] = baselines(splits)
                    print(f"{name}: " + ", ".join(f"{m} {a:.4f}" for m, a in row["baselines"].items()), flush=True)
                row["wall"] = time.perf_counter() - problem_start
                rows.append(row)
    minutes = (time.perf_counter() - start) / 60
    text = table(rows, published, sources, VERSUS) + f"\nThe whole table took {minutes:.1f} min.\n"
    args.out.write_text(text)
    print(f"\n{text}\nwrote {args.out}")


if __name__ == "__main__":
    main()
