"""``python -m birnn.export CKPT [--format onnx|pt2] [--out FILE]``: ship a trained model as one file.

Input ``images``: float32 (N, steps, features) scaled as the loader gives them (images: [0, 1]), any N;
a model trained with ``data.normalize`` carries its standardization inside the graph, so it takes these raw
inputs too, as does one trained with ``data.normalize_series`` (each series z-normalized on its own inside the graph),
and one trained with ``data.patch=k`` carries its patching (raw series in, k steps read as one).
Output ``logits``: (N, classes); a regression model's (``task=regression``) ``values`` instead, (N,), (N, d) or per
step (N, steps), in the target's own units: its training scaling is inverted inside the graph (the kind of target's
``graph``). ``onnx`` (the default; needs ``pip install 'birnn[export]'``) is one
self-contained ONNX file for onnxruntime; ``pt2`` is a ``torch.export`` program for ``torch.export.load``.
Both formats are checked against the PyTorch model before the command reports success.

birnn's own model trained on variable-length sequences (text, tags, series without ``data.normalize``,
``data.normalize_series`` and ``data.patch``) is exported unpacked (``birnn.models.unpacked``): inputs ``inputs``
(N, steps) int64 token IDs 0-padded to the longest training sample's steps (or (N, steps, features) float), and
``lengths`` (N,) int64;
output ``logits`` (N, classes), or (N, steps, classes) per-step scores for a tagger (read the first
``lengths[i]``), and for a tagger with a CRF (``model.crf``) also ``tags`` (N, steps) int64, its Viterbi path
(-100 past each length). With character features (``model.char_encoder``) the inputs are ``inputs``,
``characters`` (N, steps, data.max_word_length) int64, each token's character IDs (the tokenizer's ``characters``:
ID i + 2; 1 any other, 0 padding) 0-padded, and ``lengths``. Other variable-length models are refused (see
``check_fixed_length``).
"""

from __future__ import annotations

from birnn.schema.importpath import drop_cwd

drop_cwd(__name__)  # python -m put the working directory first on sys.path: off it, before anything imports

import argparse
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from birnn.data import tokenize
from birnn.data.normalize import SeriesStandardized, Standardized
from birnn.data.patches import Patched
from birnn.engine.restore import Restored, add_trust_options, restore, user_errors
from birnn.engine.signals import stopped_in_one_line
from birnn.models.rnn import RNNClassifier
from birnn.models.unpacked import Spelled, Unpacked
from birnn.schema import console
from birnn.schema.errors import BirnnError, first_line
from birnn.system.files import staged

FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2"}
TOLERANCE = 1e-4  # max |exported outputs - PyTorch's| accepted by the self-check (values: in standardized units)
# Tracing messages from torch internals that a user cannot act on.
QUIET = (
    "_check_is_size will be removed",
    "# The axis name: batch will not be used",  # x and lengths share the batch axis, by design
    r"The tensor attributes self\.(model\.)*(lstm|gru|(forward|backward)_layers\.\d+|"
    r"characters\.(forward|backward)_lstm)\._flat_weights",
)


def _onnx(model: torch.nn.Module, example: tuple, dynamic: dict, out: Path, outputs: list[str]) -> Callable:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as e:
        raise BirnnError(
            f"ONNX export needs the export extra ({e.name} is missing): "
            "pip install 'birnn[export]' (onnx, onnxscript, onnxruntime)."
        ) from None
    names = list(dynamic)
    torch.onnx.export(
        model,
        example,
        str(out),
        dynamo=True,
        input_names=["images"] if names == ["x"] else ["inputs", *names[1:]],
        output_names=outputs,
        dynamic_shapes=dynamic,
        external_data=False,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]

    def run(*x: Tensor) -> Tensor | tuple[Tensor, ...]:
        results = [torch.from_numpy(r) for r in session.run(None, {n: t.numpy() for n, t in zip(feeds, x)})]
        return results[0] if len(results) == 1 else tuple(results)

    return run


def _pt2(model: torch.nn.Module, example: tuple, dynamic: dict, out: Path, outputs: list[str]) -> Callable:
    torch.export.save(torch.export.export(model, example, dynamic_shapes=dynamic), str(out))
    return torch.export.load(str(out)).module()


def check_fixed_length(restored: Restored) -> None:
    """Refuse a model trained on variable-length data (checkpoint data spec ``max_length: None``) unless it is
    ``unpackable``.

    Such a model needs each sample's length to pack its batch (``pack_padded_sequence``), and packing has
    data-dependent shapes that neither ``torch.export`` nor the ONNX exporter can trace.
    """
    if variable_length(restored) and not unpackable(restored):
        raise BirnnError(
            f"{restored.path} was trained on variable-length sequences (data max_length: none) and "
            "cannot be exported with data.normalize, data.normalize_series, data.patch or a model of your own: "
            "it packs each batch by the samples' lengths "
            "(pack_padded_sequence), which torch.export and ONNX cannot trace; "
            "use it from PyTorch (python -m birnn.evaluate / birnn.predict) instead."
        )


def variable_length(restored: Restored) -> bool:
    return "max_length" in restored.spec and restored.spec["max_length"] is None


def unpackable(restored: Restored) -> bool:
    """birnn's own model on raw inputs: exportable with lengths (``birnn.models.unpacked``)."""
    return (
        isinstance(restored.model, RNNClassifier)
        and not restored.normalization
        and not restored.normalize_series
        and restored.patch == 1
    )


def examples(restored: Restored) -> tuple[Tensor, ...]:
    """Seven example inputs (and lengths, for variable-length data) shaped as the model's data."""
    g = torch.Generator().manual_seed(0)
    steps, features = restored.input_shape
    vocab = restored.spec.get("vocab_size")
    if vocab is not None:
        x = torch.randint(1, vocab, (7, steps), generator=g)
    else:
        x = torch.rand(7, *restored.input_shape, generator=g)
    if not variable_length(restored):
        return (x,)
    lengths = torch.randint(1, steps + 1, (7,), generator=g)
    lengths[0] = steps
    x[torch.arange(steps) >= lengths.unsqueeze(1)] = 0
    if restored.spec.get("characters") is None:
        return x, lengths
    width = tokenize.from_json(restored.tokenizer).max_word_length
    chars = torch.randint(1, restored.spec["characters"], (7, steps, width), generator=g)
    spelled = torch.randint(1, width + 1, (7, steps, 1), generator=g)  # each word's characters
    spelled[:, 0] = width
    chars[(torch.arange(width) >= spelled) | (x == 0).unsqueeze(2)] = 0
    return x, chars, lengths


def _write(
    restored: Restored,
    traced: torch.nn.Module,
    fmt: str,
    inputs: tuple[Tensor, ...],
    dynamic: dict,
    written: Path,
    outputs: list[str],
    model: torch.nn.Module,
    out: Path,
) -> float:
    """Export ``traced`` as ``fmt`` to ``written`` and check it against PyTorch's outputs; the max difference."""
    reference, target = restored.model, restored.target
    with warnings.catch_warnings():
        for message in QUIET:
            warnings.filterwarnings("ignore", message=message)
        try:
            exporter = _onnx if fmt == "onnx" else _pt2
            run = exporter(traced, tuple(i[:2] for i in inputs), dynamic, written, outputs)
        except BirnnError:
            raise
        except Exception as e:  # the exporters raise many types; the first line says what failed
            raise BirnnError(f"{fmt} export of {restored.path} failed: {type(e).__name__}: {first_line(e)}") from None
    with torch.inference_mode():
        plain = Spelled(reference) if len(inputs) == 3 else reference if len(inputs) == 2 else model
        exported, expected = run(*inputs), target.graph(plain)(*inputs)
    lengths = inputs[-1] if len(inputs) > 1 else None
    difference = target.export_difference(reference, exported, expected, lengths, out)
    if not difference <= TOLERANCE:
        raise BirnnError(f"{out} gives {outputs[0]} {difference:.2e} away from PyTorch's (tolerance {TOLERANCE}).")
    return difference


def export(restored: Restored, fmt: str = "onnx", out: Path | None = None) -> tuple[Path, float]:
    """Write ``restored``'s model, as its kind of target has it output (``Target.graph``), as ``fmt``; return the file
    and the max difference of its outputs to PyTorch's (at valid steps; ``Target.export_difference``)."""
    check_fixed_length(restored)
    out = out or restored.path.parent / FORMATS[fmt]
    reference = model = restored.model.cpu().eval()
    if restored.patch > 1:
        model = Patched(model, restored.patch).eval()
    if restored.normalization:
        model = Standardized(model, restored.normalization).eval()
    if restored.normalize_series:
        model = SeriesStandardized(model).eval()
    inputs = examples(restored)
    dynamic = {"x": {0: torch.export.Dim("batch")}}
    target = restored.target
    outputs = target.export_outputs(reference, unpacked=len(inputs) > 1)
    if len(inputs) > 1:
        model, batch = Unpacked(reference).eval(), torch.export.Dim("batch")
        dynamic = {"x": {0: batch}, "lengths": {0: batch}}  # the exporters unroll the recurrence: steps are fixed
    if len(inputs) == 3:  # and the character encoder's characters
        model = Spelled(model).eval()
        dynamic = {"inputs": {0: batch}, "characters": {0: batch}, "lengths": {0: batch}}
    traced = target.graph(model)  # what the file outputs: values come out in the target's units
    try:
        with staged(out) as written:  # the file appears at ``out`` only once written and checked
            difference = _write(restored, traced, fmt, inputs, dynamic, written, outputs, model, out)
    except OSError as e:  # the folder is missing or not writable
        raise BirnnError(f"cannot write {out}: {e.strerror or e}") from None
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
    with stopped_in_one_line("the export"), user_errors():
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
    if restored.normalize_series:
        scale = "as raw values (each series z-normalized on its own inside the model" + (
            ", then the training split's per-feature standardization)" if restored.normalization else ")"
        )
    if restored.patch > 1:
        scale += f", read {restored.patch} steps at a time inside the model (data.patch)"
    vocab = restored.spec.get("vocab_size")
    plural = restored.inputs[1]  # the graph's input is named images whatever the data (its public name)
    named = ' (graph input "images")' if plural != "images" and args.format == "onnx" else ""
    inputs = f"{plural} float32 (N, {steps}, {features}) {scale}{named}"
    if variable_length(restored):
        shape = f"token IDs int64 (N, {steps}), 0-padded" if vocab else f"float32 (N, {steps}, {features}), padded"
        inputs = f"inputs {shape}, and lengths int64 (N,)"
    if restored.spec.get("characters") is not None:
        width = tokenize.from_json(restored.tokenizer).max_word_length
        inputs = (
            f"inputs token IDs int64 (N, {steps}), 0-padded, characters int64 (N, {steps}, {width}): each token's "
            "character IDs, 0-padded, and lengths int64 (N,)"
        )
    print(f"Wrote {out} ({args.format}): input {inputs}, {restored.target.exported(steps)}.")
    name = restored.target.export_outputs(restored.model, variable_length(restored))[0]
    print(f"Check on 7 random inputs: max |{name} - PyTorch {name}| = {difference:.1e}{restored.target.compared}.")


if __name__ == "__main__":
    main()
