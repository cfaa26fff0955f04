"""``python -m birnn.export CKPT [--format onnx|pt2] [--out FILE]``: ship a trained model as one file.

Input ``images``: float32 (N, steps, features) scaled as the loader gives them (images: [0, 1]), any N;
a model trained with ``data.normalize`` carries its standardization inside the graph, so it takes these raw
inputs too, and one trained with ``data.patch=k`` carries its patching (raw series in, k steps read as one).
Output ``logits``: (N, classes). ``onnx`` (the default; needs ``pip install 'birnn[export]'``) is one
self-contained ONNX file for onnxruntime; ``pt2`` is a ``torch.export`` program for ``torch.export.load``.
Both formats are checked against the PyTorch model before the command reports success. A model trained on
variable-length sequences is refused (see ``check_fixed_length``).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from birnn.data.normalize import Standardized
from birnn.data.patches import Patched
from birnn.engine.restore import Restored, add_trust_options, restore, user_errors
from birnn.schema import console
from birnn.schema.config import import_from_cwd
from birnn.schema.errors import BirnnError, first_line

FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2"}
TOLERANCE = 1e-4  # max |exported logits - PyTorch logits| accepted by the self-check
# Tracing messages from torch internals that a user cannot act on.
QUIET = ("_check_is_size will be removed", r"The tensor attributes self\.(model\.)*(lstm|gru)\._flat_weights")


def _onnx(model: torch.nn.Module, example: Tensor, dynamic: dict, out: Path) -> Callable[[Tensor], Tensor]:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as e:
        raise BirnnError(
            f"ONNX export needs the export extra ({e.name} is missing): "
            "pip install 'birnn[export]' (onnx, onnxscript, onnxruntime)."
        ) from None
    torch.onnx.export(
        model,
        (example,),
        str(out),
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=dynamic,
        external_data=False,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def _pt2(model: torch.nn.Module, example: Tensor, dynamic: dict, out: Path) -> Callable[[Tensor], Tensor]:
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=dynamic), str(out))
    return torch.export.load(str(out)).module()


def check_fixed_length(restored: Restored) -> None:
    """Refuse a model trained on variable-length data (checkpoint data spec ``max_length: None``).

    Such a model needs each sample's length to pack its batch (``pack_padded_sequence``), and packing has
    data-dependent shapes that neither ``torch.export`` nor the ONNX exporter can trace.
    """
    if "max_length" in restored.spec and restored.spec["max_length"] is None:
        raise BirnnError(
            f"{restored.path} was trained on variable-length sequences (data max_length: none) and "
            "cannot be exported: its model packs each batch by the samples' lengths "
            "(pack_padded_sequence), which torch.export and ONNX cannot trace; "
            "use it from PyTorch (python -m birnn.evaluate / birnn.predict) instead."
        )


def export(restored: Restored, fmt: str = "onnx", out: Path | None = None) -> tuple[Path, float]:
    """Write ``restored``'s model as ``fmt``; return the file and the max logit difference to PyTorch."""
    check_fixed_length(restored)
    out = out or restored.path.parent / FORMATS[fmt]
    model = restored.model.cpu().eval()
    if restored.patch > 1:
        model = Patched(model, restored.patch).eval()
    if restored.normalization:
        model = Standardized(model, restored.normalization).eval()
    inputs = torch.rand(7, *restored.input_shape, generator=torch.Generator().manual_seed(0))
    dynamic = {"x": {0: torch.export.Dim("batch")}}
    with warnings.catch_warnings():
        for message in QUIET:
            warnings.filterwarnings("ignore", message=message)
        try:
            run = (_onnx if fmt == "onnx" else _pt2)(model, inputs[:2], dynamic, out)
        except BirnnError:
            raise
        except Exception as e:  # the exporters raise many types; the first line says what failed
            raise BirnnError(f"{fmt} export of {restored.path} failed: {type(e).__name__}: {first_line(e)}") from None
    with torch.inference_mode():
        difference = (run(inputs) - model(inputs)).abs().max().item()
    if not difference <= TOLERANCE:
        raise BirnnError(f"{out} gives logits {difference:.2e} away from PyTorch's (tolerance {TOLERANCE}).")
    return out, difference


@console.closed_pipe_ok
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=console.prog("birnn.export"),
        description="Export a checkpoint's model as one ONNX or torch.export (pt2) file.",
    )
    parser.add_argument("checkpoint", type=Path, help="a birnn checkpoint, e.g. <run dir>/checkpoints/last.pt")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or pt2 (torch.export)")
    parser.add_argument("--out", type=Path, help="file to write (default: model.onnx / model.pt2 beside CHECKPOINT)")
    add_trust_options(parser)
    args = parser.parse_args(argv)
    import_from_cwd()  # the data._target_ of an old checkpoint (no data spec) may live in the working directory
    with user_errors():
        restored = restore(args.checkpoint, allow=args.allow, unverified=args.allow_unverified)
        out, difference = export(restored, args.format, args.out)
    steps, features = restored.input_shape
    scale = (
        "as raw values (the training split's per-feature standardization is built into the model)"
        if restored.normalization
        else "in [0, 1]"
        if restored.spec.get("kind", "image") == "image"
        else "scaled as in training"
    )
    if restored.patch > 1:
        scale += f", read {restored.patch} steps at a time inside the model (data.patch)"
    print(
        f"Wrote {out} ({args.format}): input images float32 (N, {steps}, {features}) {scale}, "
        f"output logits (N, {len(restored.classes)}); classes {', '.join(restored.classes)}."
    )
    print(f"Check on 7 random inputs: max |logits - PyTorch logits| = {difference:.1e}.")


if __name__ == "__main__":
    main()
