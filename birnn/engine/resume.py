"""What a run resumes from: where training stands (``Progress``, saved in every checkpoint), and whether a checkpoint
may be resumed with this config, this birnn and these data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from birnn.schema.config import flatten, to_plain, typed, upgrade
from birnn.schema.errors import BirnnError, first_line

# Keys that may change when a run is resumed; everything else must match the checkpoint's config.
RESUMABLE = (
    "data.root",
    "data.download",
    "trainer.log_every_n_steps",
    "trainer.log_every_n_seconds",
    "trainer.checkpoint_every_n_steps",
    "trainer.log_images",
    "trainer.test_on",
    "trainer.test_every_epoch",
    "trainer.allow_unverified",
)
STEP_COUNT_KEYS = ("trainer.epochs", "trainer.max_steps")  # resumable unless a scheduler depends on them


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps done in the epoch under way
    global_step: int = 0
    samples: int = 0
    tokens: int = 0  # token data: tokens (valid steps) trained on
    train_seconds: float = 0.0  # wall time of training steps and checkpoint writes, evaluation excluded
    best_val_accuracy: float | None = None  # the best value of trainer.monitor (val_accuracy or val_f1) so far
    epochs_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)  # one entry per evaluation


def check_resumable(cfg: DictConfig, stored: dict) -> None:
    """Refuse (before touching the run dir) a resume whose config differs in a key that changes the run."""
    allowed = RESUMABLE + (STEP_COUNT_KEYS if cfg.scheduler is None else ())
    try:  # keys added since the checkpoint was written take their defaults: they were the behaviour then
        then = flatten(to_plain(typed(upgrade(stored))))
    except OmegaConfBaseException as e:
        raise BirnnError(f"Cannot resume: the checkpoint's config does not fit this birnn ({first_line(e)}).") from None
    now = flatten(to_plain(cfg))
    changed = sorted(
        k
        for k in now.keys() | then.keys()
        if now.get(k) != then.get(k) and k not in allowed and not k.startswith(("device.", "tracker."))
    )
    if changed:
        diffs = ", ".join(f"{k} ({then.get(k)!r} -> {now.get(k)!r})" for k in changed)
        raise BirnnError(
            f"Cannot resume: the config differs from the checkpoint's in {diffs}. Use the "
            "original overrides, or start a new run (a fresh hydra.run.dir)."
        )


def check_state(state: dict, path: Path) -> None:
    """Refuse (so that ``load_latest`` falls back) a checkpoint this version cannot resume from: the types of its
    fields are checked on load (``birnn.engine.contents``); a resume also needs the optimizer and random state."""
    fields = {f.name for f in dataclasses.fields(Progress)}
    unknown = sorted(set(state["progress"]) - fields)
    if unknown:
        raise BirnnError(f"{path} records progress fields this birnn does not know ({', '.join(unknown)}).")
    if not ("rng" in state and "optimizer" in state):
        raise BirnnError(f"{path} lacks the optimizer or random state a resume needs.")


def check_same_data(then: dict | None, now: dict, path: Path) -> None:
    """Refuse to resume on data that differs from the checkpoint's (a changed file behind ``data.path``, a repacked
    pack...): its shape, classes, statistics, sizes, tokenizer or content (``fingerprint``; checkpoints written
    before it was recorded are compared on the rest)."""
    if then is None:
        return
    keys = (
        "input_shape",
        "classes",
        "normalization",
        "normalize_series",
        "values",
        "kind",
        "vocab_size",
        "tokenizer",
        "samples",
        "fingerprint",
    )
    changed = [k for k in keys if k in then and then[k] != now.get(k)]
    if changed[:-1] and changed[-1] == "fingerprint":
        changed.pop()  # other content goes without saying when its shape, classes or statistics changed
    if changed:
        what = ", ".join("content (fingerprint)" if k == "fingerprint" else k for k in changed)
        raise BirnnError(
            f"Cannot resume from {path}: the data differs from what it was trained on "
            f"({what} changed; was the data file replaced?). Restore the original data, "
            "or start a new run (a fresh hydra.run.dir)."
        )
