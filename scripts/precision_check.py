"""Paired-seed accuracy of trainer.precision=bf16 against fp32 (same seeds, same data, same config otherwise).

    python scripts/precision_check.py --seeds 0 1 2 3 4 data=fashion_mnist

Prints one row per seed and the mean difference (bf16 - fp32, accuracy points) with its spread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

import birnn.schema.config  # noqa: F401  (registers the schemas)
from birnn.schema.config import validate
from birnn.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--against", default="bf16", help="precision compared with 32 (default bf16)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data=fashion_mnist")
    args = parser.parse_args()
    diffs = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for seed in args.seeds:
            acc = {}
            for precision in ("32", args.against):
                cfg = compose("config", overrides=[*args.overrides, f"seed={seed}", f"trainer.precision={precision}"])
                validate(cfg)
                acc[precision] = train(cfg, Path(tmp) / f"{seed}-{precision}")["test_accuracy"]
            diffs.append(100 * (acc[args.against] - acc["32"]))
            print(
                f"seed {seed}: fp32 {acc['32']:.4f}  {args.against} {acc[args.against]:.4f}  "
                f"diff {diffs[-1]:+.2f} points",
                flush=True,
            )
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    print(
        f"mean diff {statistics.mean(diffs):+.2f} points (std {spread:.2f}, min {min(diffs):+.2f}, "
        f"max {max(diffs):+.2f}) over {len(diffs)} seeds"
    )


if __name__ == "__main__":
    main()
