"""Overhead of step checkpoints: the same run with and without them, alternating, in one process.

    python scripts/checkpoint_overhead.py [--steps 300] [--every 50] [--rounds 3] [overrides ...]

Each round trains ``--steps`` steps with ``trainer.checkpoint_every_n_steps=0`` and with ``--every``;
the difference gives the cost of one checkpoint, from which the overhead of the default cadence follows.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from birnn.schema.config import validate
from birnn.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", default=["data=fashion_mnist"])
    args = parser.parse_args()
    seconds: dict[int, list[float]] = {0: [], args.every: []}
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        default_every = compose("config").trainer.checkpoint_every_n_steps
        for r in range(args.rounds):
            for every in (0, args.every) if r % 2 == 0 else (args.every, 0):
                cfg = compose(
                    "config",
                    overrides=[
                        *args.overrides,
                        f"trainer.max_steps={args.steps}",
                        f"trainer.checkpoint_every_n_steps={every}",
                    ],
                )
                validate(cfg)
                seconds[every].append(train(cfg, Path(tmp) / f"{r}-{every}")["train_seconds"])
    base, with_ckpt = statistics.median(seconds[0]), statistics.median(seconds[args.every])
    extra_saves = args.steps // args.every - (1 if args.steps % args.every == 0 else 0)
    per_save = (with_ckpt - base) / extra_saves
    per_step = base / args.steps
    print(f"without step checkpoints: {base:.2f} s for {args.steps} steps ({per_step * 1000:.1f} ms/step)")
    print(
        f"every {args.every} steps:  {with_ckpt:.2f} s ({extra_saves} more checkpoints, "
        f"{per_save * 1000:.1f} ms each); ratio {with_ckpt / base:.4f}"
    )
    print(
        f"default cadence (every {default_every} steps): overhead {100 * per_save / (default_every * per_step):.2f} %"
    )


if __name__ == "__main__":
    main()
