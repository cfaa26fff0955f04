"""Benchmarks of birnn against the PyTorch tutorial's bidirectional-RNN training (``birnn.benchmarks``).

    python -m birnn.bench --whole-process [--rounds N] [--epochs N] [--out bench.json] [overrides ...]
    python -m birnn.bench [--quick] [--rounds N] [--steps N] [--out bench.json] [overrides ...]

``--whole-process`` (``birnn.benchmarks.whole_process``) times the tutorial script against ``python -m
birnn.train`` as whole processes: what a user waits for. Without it (``birnn.benchmarks.step``), the training
step and the evaluation pass are timed side by side, each contender in its own process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from birnn.benchmarks.step import compose_config, machine, run_benchmark, with_default_data
from birnn.benchmarks.whole_process import run_whole_process, summary_lines
from birnn.schema.errors import BirnnError


def whole_process(args: argparse.Namespace) -> dict:
    overrides = with_default_data(list(args.overrides))
    cfg = compose_config(overrides)
    result = run_whole_process(cfg, overrides, args.rounds, args.epochs)
    info = {"cpu_threads": torch.get_num_threads(), "device": cfg.device.type, "device_name": None}
    return {
        "machine": machine(info),
        "overrides": overrides,
        "epochs": args.epochs,
        "command": " ".join(["python -m birnn.bench", *sys.argv[1:]]) if args.from_cli else None,
        **result,
    }


def fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.2f}{unit}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m birnn.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="birnn config overrides (default: data=fashion_mnist)")
    parser.add_argument(
        "--whole-process",
        action="store_true",
        help="time the tutorial script and python -m birnn.train as whole processes",
    )
    parser.add_argument(
        "--epochs", type=int, help="--whole-process: epochs of both (default: the tutorial's 2, birnn's config)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="under 2 minutes on a CPU: 3 short rounds and time to 0.75 test accuracy"
    )
    parser.add_argument(
        "--rounds", type=int, help="A/B rounds (default 5; --quick 3; --whole-process 3, round r with seed + r)"
    )
    parser.add_argument("--steps", type=int, help="training steps per round (default 100; --quick 40)")
    parser.add_argument("--eval-every", type=int, help="steps between accuracy checks (default 100; --quick 50)")
    parser.add_argument(
        "--target", type=float, help="test accuracy to reach (default: the reference's after 2 epochs; --quick 0.75)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    args = parser.parse_args(argv)
    args.from_cli = argv is None
    args.rounds = args.rounds or (3 if args.quick or args.whole_process else 5)
    args.steps = args.steps or (40 if args.quick else 100)
    args.eval_every = args.eval_every or (50 if args.quick else 100)
    if args.quick and args.target is None:
        args.target = 0.75
    try:
        result = whole_process(args) if args.whole_process else run_benchmark(args)
    except BirnnError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.whole_process:
        m = result["machine"]
        print(
            f"{m['processor']}, {m['cpu_cores']} cores, {m['cpu_threads']} threads, torch {m['torch']}, "
            f"overrides {' '.join(result['overrides'])}"
        )
        print("\n".join(summary_lines(result)[:-1]))
        print(f"wrote {args.out}")
        print(summary_lines(result)[-1])
        return result
    r, o = result["throughput"]["reference"], result["throughput"]["birnn"]
    tta = result["time_to_accuracy"]
    print(
        f"device {result['machine']['device']}, {result['machine']['cpu_threads']} threads, "
        f"overrides {' '.join(result['overrides'])}"
    )
    print(f"{'':10} {'train samples/s':>16} {'eval samples/s':>15} {'time to ' + fmt(tta['target']):>14}")
    print(
        f"{'reference':10} {r['train_samples_per_second']:16.0f} {r['eval_samples_per_second']:15.0f} "
        f"{fmt(tta['reference_seconds'], 's'):>14}"
    )
    print(
        f"{'birnn':10} {o['train_samples_per_second']:16.0f} {o['eval_samples_per_second']:15.0f} "
        f"{fmt(tta['birnn_seconds'], 's'):>14}"
    )
    if "train_tokens_per_second" in o:
        print(f"{'':10} {'train tokens/s':>16} {'eval tokens/s':>15}")
        for name, side in (("reference", r), ("birnn", o)):
            print(f"{name:10} {side['train_tokens_per_second']:16.0f} {side['eval_tokens_per_second']:15.0f}")
    print(f"wrote {args.out}")
    ratios = result["ratios"]
    print(f"speedup train={fmt(ratios['train'])} eval={fmt(ratios['eval'])} time_to_acc={fmt(ratios['time_to_acc'])}")
    return result


if __name__ == "__main__":
    main()
