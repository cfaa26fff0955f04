"""Rebuild a trained model from a checkpoint: the shared start of ``evaluate``, ``predict`` and ``export``.

The config stored in the checkpoint is typed again with the schemas of ``birnn.schema.config`` and merged with
``key=value`` overrides (``OmegaConf.from_dotlist``), so a typo or a wrong type is one clear error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from birnn.data.pipeline import check_class_names, load_data
from birnn.data.pipeline import spec as data_spec
from birnn.data.targets import Target, for_data
from birnn.engine import checkpoint
from birnn.models.rnn import build_model
from birnn.schema.config import typed, validate
from birnn.schema.console import unknown_key
from birnn.schema.errors import BirnnError

INPUT_WORDS = {"image": ("image", "images"), "series": ("series", "series"), "text": ("text", "texts")}  # by data kind
MODEL_SLACK = 2**26  # bytes a model may hold beyond its checkpoint's file (buffers it does not save)


@dataclass
class Restored:
    """A checkpoint's model (weights loaded, eval mode, on the CPU) and what it was trained on."""

    path: Path
    state: dict  # the checkpoint as loaded
    cfg: DictConfig  # its config with the overrides merged
    model: torch.nn.Module  # built from cfg.model: its _target_ (birnn's RNNClassifier if none) and keys
    input_shape: tuple[int, int]  # (steps, features) of one raw input, before patching
    classes: list[str]
    spec: dict = field(default_factory=dict)  # the checkpoint's ``birnn.data.pipeline.spec`` (less in old checkpoints)
    allow: tuple[str, ...] = ()  # modules (and targets) the user allows this checkpoint's config to name

    @property
    def target(self) -> Target:
        """The kind of target the model learned (``birnn.data.targets``): what it outputs and how to read it."""
        return for_data(self.classes, bool(self.spec.get("per_step")), self.spec.get("values"))

    @property
    def inputs(self) -> tuple[str, str]:
        """What one input of the model's data is called, and several (``image``/``images``, ``series``, ``text``)."""
        return INPUT_WORDS.get(self.spec.get("kind", "image"), ("input", "inputs"))

    @property
    def normalization(self) -> dict | None:
        """The training split's per-feature statistics the model expects its inputs standardized with."""
        return self.spec.get("normalization")

    @property
    def normalize_series(self) -> bool:
        """Whether each input series is z-normalized on its own first (``data.normalize_series``; false before it)."""
        return bool(self.spec.get("normalize_series", False))

    @property
    def tokenizer(self) -> str | None:
        """The text tokenizer (JSON) the model's token IDs come from, None for other data."""
        return self.spec.get("tokenizer")

    @property
    def patch(self) -> int:
        """The steps the model reads as one (``birnn.data.patches``); 1 for checkpoints from before patches."""
        return int(self.spec.get("patch", 1))


def interpolation(value: object, key: str = "config") -> str | None:
    """The first key of a stored config whose key or value holds an interpolation (``${...}``), else None.

    birnn stores configs resolved, so a ``${...}`` in a checkpoint can only come from a crafted file.
    """
    if isinstance(value, str):
        return key if "${" in value else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return None
    for k, v in items:
        found = interpolation(str(k), f"{key}.{k}") or interpolation(v, f"{key}.{k}")
        if found:
            return found
    return None


def merge_overrides(stored: dict, overrides: Sequence[str]) -> DictConfig:
    """The stored config, typed by its schemas, with ``key=value`` overrides; ``device=X`` means ``device.type=X``.

    A stored interpolation (``${...}``) is refused, resolving nothing; ``data.download`` is off unless an
    override turns it on: a received file never makes birnn download or create data folders.
    """
    found = interpolation(stored)
    if found:
        raise BirnnError(
            f"The checkpoint's {found} holds an interpolation (${{...}}), which birnn never stores: refusing "
            "to resolve anything from this file."
        )
    data = stored.get("data")
    if isinstance(data, dict) and "download" in data:  # an override may turn it back on
        stored = {**stored, "data": {**data, "download": False}}
    items = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BirnnError(f"Override {item!r} is not key=value (e.g. data.root=/data or device=cpu).")
        items.append(f"device.type={value}" if key == "device" else item)
    try:
        cfg = typed(stored)
    except OmegaConfBaseException as e:
        raise BirnnError(f"The checkpoint's config does not fit this birnn version: {_reason(e)}") from None
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.data, True)  # the stored config has every loader key: a new data key is a typo
    OmegaConf.set_struct(cfg.model, True)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(items))
    except (ConfigKeyError, ConfigAttributeError) as e:  # a typo: the close keys, as birnn-train says them
        raise BirnnError(f"Bad override: {unknown_key(e)}") from None
    except OmegaConfBaseException as e:
        raise BirnnError(f"Bad override: {_reason(e)}") from None
    validate(cfg)
    return cfg


def _reason(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    return f"{key}: {str(e).splitlines()[0]}" if key else str(e).splitlines()[0]


def trusted(overrides: Sequence[str], allow: Sequence[str]) -> tuple[str, ...]:
    """The ``--allow`` modules plus every ``_target_`` the user names on the command line (``birnn.schema.trust``)."""
    named = [value for key, _, value in (o.partition("=") for o in overrides) if key.endswith("_target_")]
    return (*allow, *named)


# data.normalize, and what a stored vocabulary fixes (given to evaluate it would be silently ignored)
FIXED_KEYS = "normalize tokenizer vocab_size min_freq lowercase unknown vectors vectors_format max_word_length"
FIXED_DATA = tuple(f"data.{key}=" for key in FIXED_KEYS.split())


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse overrides that would make the restored model or its inputs differ from the trained ones, and any of
    the task (``task=``, ``task.*``): what the model learned to output is fixed when it is trained."""
    task = [o for o in overrides if o.startswith(("task=", "task."))]
    if task:
        raise BirnnError(
            f"{', '.join(o.partition('=')[0] for o in task)}: a checkpoint's task is fixed when it is trained (what "
            f"its model outputs and how its targets are scaled); train again with {' '.join(task)}"
        )
    changed = [
        o.partition("=")[0]
        for o in overrides
        if o.startswith(("model.", "model=", "data.normalize_series=", "data.patch=", "seed=", *FIXED_DATA))
        and not o.startswith("model.backward_shortcut=")  # the shortcut computes the same outputs
    ]
    if changed:
        raise BirnnError(
            f"{', '.join(changed)} would change the model or its inputs, and the result would not "
            "be this checkpoint's. Overrides here may only say where the data is and how to run "
            "(data.root, data.path, device, data.eval_batch_size, ...)."
        )


def check_plan(build: Callable[[], torch.nn.Module], weights: dict, path: Path) -> None:
    """Build the model on the meta device (nothing allocated) and refuse it unless its tensors are the
    checkpoint's, names and shapes, and its size stays within the file's (plus ``MODEL_SLACK``): a crafted
    ``data.input_shape``, vocabulary or width is one line here, not an allocation failure or an OOM kill.

    A model of the user's own that cannot be built on the meta device is left to the real build."""
    try:
        with torch.device("meta"):
            shell = build()
    except BirnnError:
        return
    checkpoint.check_architecture(shell, weights, path)
    size = sum(t.numel() * t.element_size() for t in (*shell.parameters(), *shell.buffers()))
    limit = path.stat().st_size + MODEL_SLACK
    if size > limit:
        raise BirnnError(
            f"{path}'s config builds a model of {size / 2**20:,.0f} MiB, far beyond the "
            f"{path.stat().st_size / 2**20:,.1f} MiB file that should hold its weights (crafted or damaged)."
        )


def restore(path: Path, overrides: Sequence[str] = (), allow: Sequence[str] = (), unverified: bool = False) -> Restored:
    """Load ``path``, merge ``overrides`` into its config and rebuild its model in eval mode.

    Nothing the checkpoint names is imported unless ``birnn.schema.trust`` lets it in (``allow``: the user's
    ``--allow`` modules). A file without a checksum loads only with ``unverified`` (``--allow-unverified``).
    Non-finite weights are refused: such a model answers nothing but NaN.
    """
    check_overrides(overrides)
    allow = trusted(overrides, allow)
    state = checkpoint.load(path, unverified)
    cfg = merge_overrides(state["config"], overrides)
    spec = state.get("data")
    if spec is None:  # checkpoints written before the data spec was stored: ask the loader
        spec = data_spec(load_data(cfg.data, torch.device("cpu"), allow=allow))
    check_class_names(spec["classes"], str(path), "train it again on valid labels")
    steps, features = spec["input_shape"]
    vocab_size = spec.get("vocab_size")
    target = for_data(list(spec["classes"]), bool(spec.get("per_step")), spec.get("values"))

    def build() -> torch.nn.Module:
        return build_model(
            cfg.model,
            vocab_size or features * int(spec.get("patch", 1)),
            target.outputs,
            allow,
            vocab_size,
            target.per_step,
            vocab_size - spec["trained_vocab"] if spec.get("trained_vocab") is not None else 0,
            spec.get("characters"),
        )

    check_plan(build, state["model"], path)
    model = build()
    checkpoint.load_model_state(model, state["model"], path)
    bad = checkpoint.non_finite(state["model"])
    if bad:
        raise BirnnError(
            f"{path} holds non-finite weights ({bad}): the model cannot classify anything. Use an "
            "earlier checkpoint of that run."
        )
    return Restored(path, state, cfg, model.eval(), (steps, features), list(spec["classes"]), spec, allow)


def add_trust_options(parser: argparse.ArgumentParser) -> None:
    """``--allow MODULE`` (repeatable): let the checkpoint's config name code from MODULE (``birnn.schema.trust``);
    ``--allow-unverified``: accept a checkpoint without a checksum."""
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="MODULE",
        help="trust MODULE: the checkpoint's config may name loaders or models from it "
        "(nothing a checkpoint names outside birnn is imported otherwise)",
    )
    parser.add_argument(
        "--allow-unverified",
        action="store_true",
        help="accept a checkpoint without a checksum (written by a birnn before 2026-11-29): only a file you trust",
    )


@contextmanager
def user_errors() -> Iterator[None]:
    """Report a BirnnError as ``error: <message>`` on stderr and exit 2 (no traceback)."""
    try:
        yield
    except BirnnError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
