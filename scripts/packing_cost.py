"""What fixed-length data pays for variable-length support: forward+backward of the configured model on one
fixed-length batch, called as ``model(x)`` (no packing: today's path) and as ``model(x, lengths)`` with every
length full (packed through ``pack_padded_sequence``), alternating, in one process.

    python scripts/packing_cost.py [--steps 20] [--rounds 5] [--batch 100] [--shape 28 28] [--device cpu]
                                   [overrides ...]   # e.g. model=bigru model.readout=final

Prints the median seconds per step of each and the ratio packed / unpacked. Training never takes the packed
path for fixed-length data (``Splits`` without lengths): the ratio is the cost it avoids.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from birnn.models.rnn import build_model
from birnn.schema.config import validate

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="forward+backward passes per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant (alternating)")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--shape", type=int, nargs=2, default=(28, 28), metavar=("STEPS", "FEATURES"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=bigru")
    args = parser.parse_args()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=args.overrides)
    validate(cfg)
    device = torch.device(args.device)
    torch.manual_seed(0)
    steps, features = args.shape
    model = build_model(cfg.model, features, 10).to(device).train()
    x = torch.rand(args.batch, steps, features, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    variants = {"unpacked": None, "packed": torch.full((args.batch,), steps, device=device)}

    def run(lengths: torch.Tensor | None, n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x, lengths), y).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / n

    for lengths in variants.values():  # warm-up
        run(lengths, 3)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name in variants if r % 2 == 0 else reversed(list(variants)):
            seconds[name].append(run(variants[name], args.steps))
    median = {name: statistics.median(s) for name, s in seconds.items()}
    m = cfg.model
    print(
        f"{m.cell} {m.num_layers}x{m.hidden_size} readout={m.readout} shortcut={m.backward_shortcut}, "
        f"batch {args.batch} x {steps} steps x {features} features on {device} "
        f"({torch.get_num_threads()} threads), median of {args.rounds} rounds x {args.steps} steps:"
    )
    print(
        f"model(x) (no packing): {median['unpacked'] * 1000:.1f} ms/step; "
        f"model(x, full lengths) (packed): {median['packed'] * 1000:.1f} ms/step; "
        f"ratio packed/unpacked {median['packed'] / median['unpacked']:.2f}"
    )


if __name__ == "__main__":
    main()
