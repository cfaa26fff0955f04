"""Train birnn on UCR/UEA archive problems bundled with aeon and write a Markdown table of the results.

    python scripts/uea_table.py                                   # the default problems, default device
    python scripts/uea_table.py --problems JapaneseVowels --seeds 0 1 2 device=cpu
    python scripts/uea_table.py --published published.csv --out uea_table.md

Each problem trains in-process with ``birnn.train.train``: JapaneseVowels and BasicMotions with their presets
(``experiment=japanese_vowels`` / ``basic_motions``), any other problem with ``data=uea data.name=NAME`` and
``GENERIC`` (the BasicMotions settings). Extra arguments are config overrides applied to every run.

Columns: problem, channels, series lengths, train/test sizes, birnn test accuracy (mean ± std over seeds),
epochs, training seconds (mean). Published accuracies of other methods are not built in: ``--published`` takes
a CSV with the columns ``problem,method,accuracy,source`` (copied from the papers' tables, e.g. 1-NN DTW_D and
ROCKET from Ruiz et al. 2021, "The great multivariate time series classification bake off", DMKD 35:401-449)
and adds one column per method, with the sources listed under the table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

import birnn.config  # noqa: F401  (registers the schemas)
from birnn.config import validate
from birnn.sequences import load_uea
from birnn.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = {"JapaneseVowels": ["experiment=japanese_vowels"], "BasicMotions": ["experiment=basic_motions"]}
GENERIC = ["experiment=basic_motions"]  # any other problem: the BasicMotions settings, with data.name set
DEFAULT_PROBLEMS = ["BasicMotions", "JapaneseVowels", "GunPoint", "ItalyPowerDemand", "ArrowHead"]


def describe(name: str) -> dict:
    """Channels, length range and split sizes of a bundled problem."""
    splits = load_uea(name=name)
    if splits.train_lengths is None:
        lengths = str(splits.train_x.shape[1])
    else:
        both = [*splits.train_lengths.tolist(), *splits.test_lengths.tolist()]
        lengths = f"{min(both)}-{max(both)}"
    return {"channels": splits.input_size, "lengths": lengths, "train": len(splits.train_y),
            "test": len(splits.test_y), "classes": splits.num_classes}


def read_published(path: Path) -> tuple[dict[tuple[str, str], float], dict[str, str]]:
    """``{(problem, method): accuracy}`` and ``{method: source}`` from a ``problem,method,accuracy,source`` CSV."""
    scores, sources = {}, {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            scores[row["problem"], row["method"]] = float(row["accuracy"])
            sources.setdefault(row["method"], row["source"])
    return scores, sources


def table(rows: list[dict], published: dict, sources: dict) -> str:
    methods = list(sources)
    head = ["problem", "channels", "lengths", "train / test", "classes", "birnn test accuracy", "epochs",
            "seconds", *methods]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        acc = r["accuracies"]
        spread = f" ± {statistics.stdev(acc):.3f}" if len(acc) > 1 else ""
        cells = [r["problem"], r["channels"], r["lengths"], f"{r['train']} / {r['test']}", r["classes"],
                 f"{statistics.mean(acc):.3f}{spread}" + (f" ({len(acc)} seeds)" if len(acc) > 1 else ""),
                 r["epochs"], f"{statistics.mean(r['seconds']):.1f}",
                 *(f"{published[r['problem'], m]:.3f}" if (r["problem"], m) in published else "" for m in methods)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    notes = [f"- {m}: {s}" for m, s in sources.items()]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=DEFAULT_PROBLEMS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--published", type=Path, help="CSV of published accuracies: problem,method,accuracy,source")
    parser.add_argument("--out", type=Path, default=Path("uea_table.md"))
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. device=cpu")
    args = parser.parse_args()
    published, sources = read_published(args.published) if args.published else ({}, {})
    rows = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for name in args.problems:
            row = {"problem": name, **describe(name), "accuracies": [], "seconds": []}
            for seed in args.seeds:
                overrides = [*PRESETS.get(name, GENERIC), f"data.name={name}", "trainer.log_images=false",
                             f"seed={seed}", *args.overrides]
                cfg = compose("config", overrides=overrides)
                validate(cfg)
                metrics = train(cfg, Path(tmp) / f"{name}-{seed}")
                row["accuracies"].append(metrics["test_accuracy"])
                row["seconds"].append(metrics["train_seconds"])
                row["epochs"] = metrics["epochs"]
                print(f"{name} seed {seed}: test accuracy {metrics['test_accuracy']:.4f} "
                      f"({metrics['epochs']} epochs, {metrics['train_seconds']:.1f} s)", flush=True)
            rows.append(row)
    text = table(rows, published, sources)
    args.out.write_text(text)
    print(f"\n{text}\nwrote {args.out}")


if __name__ == "__main__":
    main()
