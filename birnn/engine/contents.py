"""What a checkpoint holds: every field, its type, and which ones every reader needs — checked once, on load.

A checksum does not stop a crafted file (anyone can recompute it), so ``birnn.engine.checkpoint.load`` checks a
checkpoint against ``CHECKPOINT`` before any reader touches it: a wrong type, a missing field or an absurd value is
one ``BirnnError`` naming the field, never a traceback further on. Fields that older releases did not write are
optional (``need`` marks the ones every release wrote); a field that is present must have its type. Adding a field
is one line in its section below (``DATA`` for ``birnn.data.pipeline.spec``, ``Progress`` itself for progress).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from birnn.data.tokenize import MAX_CHARACTERS
from birnn.engine.resume import Progress
from birnn.schema.errors import BirnnError


@dataclass(frozen=True)
class Rule:
    """What a value must be (``what``, for the message) and the test of it; ``each``: the rule of every item (a
    list) or value (a dict); ``required`` in its section; ``nullable``: None is fine too."""

    what: str
    ok: Callable[[Any], bool]
    each: Rule | Record | None = None
    required: bool = False
    nullable: bool = False


@dataclass(frozen=True)
class Record:
    """A dict with known fields (others are kept unchecked: newer fields, a loader's own); ``checks``: rules
    over the whole dict (``(what, test)``, tested once its fields are fine)."""

    fields: dict[str, Rule | Record]
    checks: tuple[tuple[str, Callable[[dict], bool]], ...] = ()
    required: bool = False
    what: str = "a dict"


def need(rule: Rule | Record) -> Rule | Record:
    """``rule``, for a field every checkpoint holds."""
    return dataclasses.replace(rule, required=True)


def maybe(rule: Rule) -> Rule:
    """``rule`` or None."""
    return dataclasses.replace(rule, nullable=True)


def integer(minimum: int = 0) -> Rule:
    return Rule(f"an integer >= {minimum}", lambda v: type(v) is int and v >= minimum)


def list_of(rule: Rule | Record, length: int | None = None, nonempty: bool = False) -> Rule:
    size = f"a list of {length} items" if length is not None else "a non-empty list" if nonempty else "a list"
    return Rule(
        size,
        lambda v: isinstance(v, list) and (length is None or len(v) == length) and (not nonempty or len(v) > 0),
        rule,
    )


def mapping(values: Rule | Record) -> Rule:
    """A dict of string keys and ``values``."""
    return Rule("a dict with string keys", lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), values)


def tensor(dtype: torch.dtype | None = None, size: int | None = None) -> Rule:
    what = " ".join(str(p) for p in ("a", size, dtype, "tensor") if p is not None)
    return Rule(
        what,
        lambda v: (
            isinstance(v, torch.Tensor)
            and (dtype is None or v.dtype == dtype)
            and (size is None or tuple(v.shape) == (size,))
        ),
    )


TEXT = Rule("a string", lambda v: isinstance(v, str))
FLAG = Rule("true or false", lambda v: type(v) is bool)
NUMBER = Rule("a finite number", lambda v: type(v) in (int, float) and math.isfinite(v))
POSITIVE = integer(1)
DICT = Rule("a dict", lambda v: isinstance(v, dict))
MAX_INPUT_VALUES = 2**24  # one raw input (steps x features): a 4096 x 4096 image; readers allocate a few of them
RNG_STATE = tensor(torch.uint8, torch.get_rng_state().numel())  # torch's CPU generator state


def _statistics(data: dict) -> bool:
    """Standardization statistics: ``mean`` and ``std`` of each raw feature (``input_shape[1]``); std > 0."""
    stats = data.get("normalization")
    if stats is None:
        return True
    features = data["input_shape"][1] if "input_shape" in data else None
    lists = [stats.get(k) for k in ("mean", "std")]
    return all(isinstance(v, list) and len(v) == features and all(NUMBER.ok(x) for x in v) for v in lists) and all(
        s > 0 for s in stats["std"]
    )


# Regression targets (``birnn.data.targets.Values.spec``): a mean and a std > 0 per output, as many as classes,
# within float32's range (the scaling is applied in float32: beyond it a mean or std is inf, a tiny std 0).
FLOAT32 = torch.finfo(torch.float32)
VALUES = Record(
    {
        "per_step": need(FLAG),
        "loss": need(Rule("mse, mae or huber", lambda v: v in ("mse", "mae", "huber"))),
        "mean": need(
            list_of(
                Rule("a finite number within float32's range", lambda v: NUMBER.ok(v) and abs(v) <= FLOAT32.max),
                nonempty=True,
            )
        ),
        "std": need(
            list_of(
                Rule(
                    "a finite number > 0 within float32's range",
                    lambda v: NUMBER.ok(v) and FLOAT32.tiny <= v <= FLOAT32.max,
                ),
                nonempty=True,
            )
        ),
        "log": need(FLAG),
    },
    what="the targets' spec",
)

# What the run trained on (``birnn.data.pipeline.spec``): enough to feed the model without the dataset.
DATA = Record(
    {
        "input_shape": need(list_of(POSITIVE, 2)),  # [steps, features] of one raw input
        "classes": need(list_of(TEXT, nonempty=True)),
        "features": POSITIVE,
        "max_length": maybe(POSITIVE),  # null: variable length
        "normalization": maybe(DICT),  # {mean, std}: see _statistics
        "normalize_series": FLAG,  # data.normalize_series: each series z-normalized on its own first (absent: false)
        "kind": TEXT,
        "patch": POSITIVE,
        "vocab_size": maybe(integer(2)),
        "tokenizer": maybe(TEXT),  # JSON, checked by birnn.data.tokenize.from_json where it is used
        "per_step": FLAG,
        "samples": mapping(integer(0)),  # per split
        "fingerprint": maybe(TEXT),  # SHA-256 of the training data's content (birnn.data.pipeline.fingerprint)
        "trained_vocab": integer(2),  # data.vectors: token IDs below it train, the rest are frozen pretrained words
        "values": VALUES,  # task=regression: the targets' scaling and loss (birnn.data.targets.Values.spec)
        # model.char_encoder: character IDs (padding and unknown included), as many as the tokenizer's characters
        "characters": Rule(f"an integer in 2..{MAX_CHARACTERS}", lambda v: type(v) is int and 2 <= v <= MAX_CHARACTERS),
    },
    checks=(
        (
            f"input_shape must be at most {MAX_INPUT_VALUES:,} values (steps x features)",
            lambda d: d["input_shape"][0] * d["input_shape"][1] <= MAX_INPUT_VALUES,
        ),
        ("normalization must be {mean, std}: lists of input_shape[1] numbers each, std > 0", _statistics),
        (
            "values must have one mean and std per output (classes)",
            lambda d: "values" not in d or len(d["values"]["mean"]) == len(d["values"]["std"]) == len(d["classes"]),
        ),
        (
            "values.per_step must be the data spec's per_step",
            lambda d: "values" not in d or d["values"]["per_step"] == bool(d.get("per_step")),
        ),
        ("trained_vocab must be at most vocab_size", lambda d: d.get("trained_vocab", 0) <= (d.get("vocab_size") or 0)),
    ),
    what="the data spec",
)

# The stored config (typed again by birnn.schema.config on use): the sections a reader takes apart itself.
CONFIG = Record(
    {
        "seed": integer(0),
        "model": DICT,
        "data": need(DICT),
        "optimizer": need(Record({"lr": need(NUMBER)})),
        "scheduler": maybe(DICT),
        "device": DICT,
        "trainer": DICT,
        "tracker": DICT,
        "search": maybe(DICT),
    }
)


def _step(value: Any) -> bool:
    """An optimizer's step count as torch stores it: a number or a one-value tensor, whole, finite and >= 0."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype.is_complex or value.dtype == torch.bool:
            return False
        value = value.item()
    return type(value) in (int, float) and math.isfinite(value) and value >= 0 and value == int(value)


def _steps(optimizer: dict) -> bool:
    return all(
        _step(per_param["step"])
        for per_param in optimizer["state"].values()
        if isinstance(per_param, dict) and "step" in per_param
    )


OPTIMIZER = Record(
    {
        "state": need(DICT),
        "param_groups": need(list_of(Record({"lr": need(NUMBER), "params": need(list_of(integer(0)))}), nonempty=True)),
    },
    checks=(("state: each parameter's step must be a whole number >= 0 (a number or a one-value tensor)", _steps),),
)

RNG = Record(
    {
        "shuffle": need(RNG_STATE),  # the shuffling generator's state at the start of the epoch
        "ranks": need(list_of(Record({"torch": need(RNG_STATE), "cuda": list_of(tensor(torch.uint8))}), nonempty=True)),
    }
)


def _from_hint(hint: Any) -> Rule:
    """The rule for a ``Progress`` field's annotation (int, float, float | None, list[dict])."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return maybe(_from_hint(inner))
    if typing.get_origin(hint) is list:
        return list_of(_from_hint(typing.get_args(hint)[0]))
    return {int: integer(0), float: NUMBER, dict: DICT}[hint]


# Where training stands: one rule per Progress field, from its annotation (a new field needs nothing here).
PROGRESS = Record(
    {name: _from_hint(hint) for name, hint in typing.get_type_hints(Progress).items()}
    | {"global_step": need(integer(0))}
)


def _regression(config: dict) -> bool:
    """Whether a checkpoint's config trained values (``task=regression``; no ``task``: a release before it)."""
    task = config.get("task")
    return isinstance(task, dict) and task.get("name") == "regression"


CHECKPOINT = Record(
    {
        "model": need(mapping(tensor())),  # parameter name -> tensor
        "config": need(CONFIG),
        "progress": need(PROGRESS),
        "data": DATA,  # absent before the data spec was stored: restore asks the loader
        "optimizer": OPTIMIZER,  # the resume-only fields are required by birnn.engine.resume.check_state
        "rng": RNG,
        "scheduler": maybe(DICT),
        "scaler": maybe(DICT),
        "metrics": maybe(DICT),
        "finished": FLAG,
        "world_size": POSITIVE,
        "provenance": DICT,
    },
    checks=(
        (
            "data.values (the targets' scaling) must be there exactly when config.task.name is regression",
            lambda c: "data" not in c or ("values" in c["data"]) == _regression(c["config"]),
        ),
    ),
    what="a checkpoint",
)


def _brief(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def check(state: dict, source: object) -> None:
    """BirnnError naming the first field of ``state`` that ``CHECKPOINT`` refuses (``source``: the file)."""
    problem = _problem(state, CHECKPOINT, "")
    if problem:
        raise BirnnError(f"{source} is not a usable birnn checkpoint (crafted or damaged): {problem}.")


def _problem(value: Any, rule: Rule | Record, where: str) -> str | None:
    if isinstance(rule, Rule):
        if value is None and rule.nullable:
            return None
        if not rule.ok(value):
            return f"{where} must be {rule.what}{' or null' if rule.nullable else ''}, not {_brief(value)}"
        if rule.each is not None:
            for key, item in value.items() if isinstance(value, dict) else enumerate(value):
                problem = _problem(item, rule.each, f"{where}[{key!r}]")
                if problem:
                    return problem
        return None
    if not isinstance(value, dict):
        return f"{where or 'it'} must be {rule.what}, not {_brief(value)}"
    for key, inner in rule.fields.items():
        name = f"{where}.{key}" if where else key
        if key not in value:
            if inner.required:
                return f"{name} is missing"
            continue
        problem = _problem(value[key], inner, name)
        if problem:
            return problem
    for what, ok in rule.checks:
        if not ok(value):
            return f"{where}.{what}" if where else what
    return None
