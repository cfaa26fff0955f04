"""What a pack carries for training: the settings its source data option sets outside ``data`` (``data=digits``
sets ``trainer.epochs=15``), recorded by ``birnn-pack`` in the manifest's ``training`` field and applied by
``data=packed`` to every key the command line (or an experiment preset) does not set, as a data option's own
settings would be. A pack without the field (written before it existed, or from Parquet/CSV files) carries none.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from birnn.data import packed
from birnn.schema.config import flatten
from birnn.schema.errors import BirnnError, first_line

FIELD = "training"
SOURCE = "training_from"  # the data option the settings came from, e.g. data=digits


def recorded(with_option: dict, without: dict) -> dict:
    """The settings outside ``data`` (and ``hydra``) that a data option changes: the composed config with it
    (``with_option``) against the one without it, as plain containers; dotted keys."""
    before, after = flatten(without), flatten(with_option)
    return {
        k: v
        for k, v in after.items()
        if not k.startswith(("data.", "hydra.")) and (k not in before or before[k] != v) and _plain(v)
    }


def _plain(value: object) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def stored(path: Path) -> tuple[dict, str | None]:
    """The pack's recorded settings (``{}`` for a pack without them) and the data option they came from."""
    manifest = packed.read_manifest(path)
    settings = manifest.get(FIELD) or {}
    if not isinstance(settings, dict) or not all(
        isinstance(k, str) and not k.startswith(("data.", "hydra.")) and "_target_" not in k and _plain(v)
        for k, v in settings.items()
    ):
        raise BirnnError(
            f"{path / packed.MANIFEST}: its {FIELD} field must map config keys outside data (trainer.epochs, ...) "
            "to plain values, as birnn-pack writes it"
        )
    source = manifest.get(SOURCE)
    return settings, source if isinstance(source, str) else None


def apply(cfg: DictConfig, settings: dict, fixed: Iterable[str]) -> tuple[dict, dict]:
    """Set each of ``settings`` in ``cfg`` unless a key of ``fixed`` (the command line's, a preset's) is it or
    holds it; returns what was applied and what was kept as set."""
    fixed = list(fixed)
    kept = {k: v for k, v in settings.items() if any(k == f or k.startswith(f"{f}.") for f in fixed)}
    applied = {k: v for k, v in settings.items() if k not in kept}
    for key, value in applied.items():
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise BirnnError(f"the pack's {FIELD} setting {key}={value} is not a config key of this birnn")
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as e:
            raise BirnnError(f"the pack's {FIELD} setting {key}={value}: {first_line(e)}") from None
    return applied, kept


_MISSING = object()
