"""How compared runs are set up for model selection: a validation split to rank on, and one test pass.

A single run keeps the tutorial's defaults (no validation split, the test split scored at every epoch end).
The jobs of a multirun and the trials of a search are compared, so each one that sets no validation split
holds out ``SWEEP_VAL_FRACTION`` of its training split (``data.val_fraction``), and the test split is scored
once, at the end, unless ``trainer.test_every_epoch`` says otherwise.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from birnn.schema.config import has_validation

log = logging.getLogger(__name__)

SWEEP_VAL_FRACTION = 0.1


def resolve(cfg: DictConfig, compared: bool) -> None:
    """Fill the selection defaults into ``cfg`` (in place): ``compared`` for a multirun job or a search trial."""
    if cfg.trainer.test_every_epoch is None:
        cfg.trainer.test_every_epoch = not compared
    if compared and not has_validation(cfg.data):
        cfg.data.val_fraction = SWEEP_VAL_FRACTION
        log.info(
            "Compared runs rank on validation: holding out data.val_fraction=%s of the training split "
            "(set data.val_size, data.val_fraction or data.folds to choose another).",
            SWEEP_VAL_FRACTION,
        )
