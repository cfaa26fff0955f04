"""``python -m birnn.evaluate CKPT [key=value ...] [--out FILE]``: re-test a checkpoint's model.

The model and the test split are rebuilt from the config stored in the checkpoint (overrides such as
``data.root=/x`` or ``device=cpu`` are merged in) and evaluated with the training run's eval batch size and
precision, so a run's ``last.pt`` reproduces its ``metrics.json`` ``test_accuracy`` on the same device.
"""

from __future__ import annotations

from birnn.schema.importpath import drop_cwd

drop_cwd(__name__)  # python -m put the working directory first on sys.path: off it, before anything imports

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from birnn.data.pipeline import load_data, spec
from birnn.engine.loop import eval_pass
from birnn.engine.restore import add_trust_options, restore, user_errors
from birnn.engine.signals import stopped_in_one_line
from birnn.schema import console
from birnn.schema.errors import BirnnError
from birnn.system import threads
from birnn.system.device import effective_precision, setup_device
from birnn.system.files import atomic_write


def evaluate_checkpoint(
    path: Path, overrides: Sequence[str] = (), allow: Sequence[str] = (), unverified: bool = False
) -> dict:
    """Test loss, accuracy, per-class precision/recall and the confusion matrix of the model in ``path``; per-step
    labels: per token (padding left out), with macro-F1 and span scores (the kind of target's ``report``,
    ``birnn.data.targets``)."""
    restored = restore(path, overrides, allow, unverified)
    cfg = restored.cfg
    device = setup_device(cfg.device, cfg.trainer.precision)
    if restored.tokenizer is not None:  # token data: a text loader given the stored tokenizer and classes and a
        # data.test_path reads only that file; only the test split is scored, so nothing is held out for validation
        cfg.data.val_size, cfg.data.val_fraction, cfg.data.folds = 0, 0.0, 0
    # the stored statistics and patch size, not refitted; the loader only if the trust rule lets it in
    data = load_data(
        cfg.data,
        device,
        normalization=restored.normalization,
        series=restored.normalize_series,
        patch=restored.patch,
        allow=restored.allow,
        tokenizer=restored.tokenizer,
        classes=restored.classes,
        values=restored.spec.get("values"),
    )
    if data.classes != restored.classes:
        raise BirnnError(
            f"{cfg.data._target_} gives classes {data.classes}; the model was trained on {restored.classes}."
        )
    now = spec(data)
    changed = [
        f"{k} {now[k]} (the model's: {restored.spec[k]})"
        for k in ("features", "vocab_size", "per_step")
        if k in restored.spec and restored.spec[k] != now[k]
    ]
    if changed:
        raise BirnnError(f"{cfg.data._target_} gives {', '.join(changed)}: not what the model reads.")
    model = restored.model.to(device)
    precision = effective_precision(cfg.trainer.precision, device)
    target = data.target
    result = eval_pass(
        model, target, data.test_x, data.test_y, cfg.data.eval_batch_size, device, precision, lengths=data.test_lengths
    )
    return {
        "checkpoint": str(path),
        "overrides": list(overrides),
        "step": restored.state["progress"]["global_step"],
        "device": str(device),
        "test_loss": result.loss,
        **({"test_accuracy": result.accuracy} if target.accuracy else {}),
        **target.report(data.test_y, result.predictions),  # per-step labels: test_samples are the scored tokens
    }


def as_text(scores: dict) -> str:
    """The scores as text: totals, a per-class table and the confusion matrix."""

    def score(value: float | None) -> str:
        return f"{value:9.4f}" if value is not None else f"{'-':>9}"

    if "classes" not in scores:  # values (task=regression): in the target's units
        return "\n".join(
            [
                f"Checkpoint {scores['checkpoint']} (step {scores['step']}) on {scores['device']}",
                f"Test loss {scores['test_loss']:.4f} (on standardized targets)",
                f"Test RMSE {scores['test_rmse']:.6g}, MAE {scores['test_mae']:.6g}, R² {scores['test_r2']:.4f} on "
                + (f"{scores['test_steps']} steps" if "test_steps" in scores else f"{scores['test_samples']} samples"),
            ]
        )
    classes = scores["classes"]
    width = max(5, *(len(c) for c in classes))
    lines = [
        f"Checkpoint {scores['checkpoint']} (step {scores['step']}) on {scores['device']}",
        f"Test loss     {scores['test_loss']:.4f}",
        f"Test accuracy {scores['test_accuracy']:.4f} ({100 * scores['test_accuracy']:.2f}%) on "
        + (f"{scores['test_tokens']} tokens" if "test_tokens" in scores else f"{scores['test_samples']} samples"),
        "",
        f"{'class':<{width}} {'precision':>9} {'recall':>9} {'support':>8}",
    ]
    lines += [
        f"{c['class']:<{width}} {score(c['precision'])} {score(c['recall'])} {c['support']:>8}"
        for c in scores["per_class"]
    ]
    cells = max(5, len(str(max(max(row) for row in scores["confusion_matrix"]))) + 1)
    rows = [c if c == str(i) else f"{i} {c}" for i, c in enumerate(classes)]
    width = max(len(r) for r in rows)
    lines += [
        "",
        "Confusion matrix (rows: true class, columns: predicted class index)",
        " " * width + "".join(f"{i:>{cells}}" for i in range(len(classes))),
    ]
    lines += [
        f"{r:<{width}}" + "".join(f"{n:>{cells}}" for n in counts)
        for r, counts in zip(rows, scores["confusion_matrix"])
    ]
    return "\n".join(lines)


@console.closed_pipe_ok
def main(argv: Sequence[str] | None = None) -> None:
    threads.begin()
    parser = argparse.ArgumentParser(
        prog=console.prog("birnn.evaluate"), description="Re-test a checkpoint's model on its test split."
    )
    parser.add_argument("checkpoint", type=Path, help="a birnn checkpoint, e.g. <run dir>/checkpoints/last.pt")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="changes to the checkpoint's config, e.g. data.root=/data device=cpu",
    )
    parser.add_argument("--out", type=Path, help="JSON file to write (default: evaluation.json beside CHECKPOINT)")
    add_trust_options(parser)
    args = parser.parse_args(argv)
    with stopped_in_one_line("the evaluation"), user_errors():
        scores = evaluate_checkpoint(args.checkpoint, args.overrides, args.allow, args.allow_unverified)
        print(as_text(scores))
        out = args.out or args.checkpoint.parent / "evaluation.json"
        try:
            atomic_write(out, lambda f: f.write(json.dumps(scores, indent=2).encode() + b"\n"))
        except OSError as e:
            raise BirnnError(f"Could not write {out}: {e.strerror or e}") from None
        print(f"\nWrote {out}")


if __name__ == "__main__":
    main()
