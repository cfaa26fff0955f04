"""Presets that must carry across dataset sizes: ``experiment=fast`` (a step budget, not "one epoch") and
``experiment=uea`` (everything from the training split: no per-problem setting, no test-set look)."""

from __future__ import annotations

import pytest
import torch

from birnn.engine.run import build
from birnn.schema.config import validate
from conftest import make_cfg

CPU = ["device=cpu", "device.num_threads=1"]


def test_fast_is_a_step_budget_whatever_the_dataset_size():
    """600 one-cycle steps on any set: one epoch of Fashion-MNIST's 60,000 images, 40 epochs of digits."""
    cfg = make_cfg("experiment=fast", "data=digits", *CPU)
    validate(cfg)
    assert cfg.trainer.max_steps == 600 and cfg.scheduler._target_ == "torch.optim.lr_scheduler.OneCycleLR"
    assert cfg.trainer.epochs * 600 >= cfg.trainer.max_steps  # the budget, not the epochs, ends training
    setup = build(cfg, torch.device("cpu"))
    assert setup.steps_per_epoch == 15 and setup.total_steps == 600
    assert make_cfg("experiment=fast", "data=fashion_mnist").trainer.max_steps == 600  # 60,000 / 100: one epoch


@pytest.mark.parametrize(
    "problem, patch, steps, features",
    [
        ("GunPoint", 12, 13, 12),  # 150 steps, univariate: 13 patches of 12 values (the last zero-filled)
        ("BasicMotions", 10, 10, 60),  # 100 steps, 6 channels
        ("ItalyPowerDemand", 1, 24, 1),  # 24 steps: read whole
        ("JapaneseVowels", 1, 29, 12),  # 7-29 steps, variable length: read whole
    ],
)
def test_uea_preset_decides_from_the_training_split(problem, patch, steps, features):
    pytest.importorskip("aeon", reason="data=uea needs the timeseries extra")
    cfg = make_cfg("experiment=uea", f"data.name={problem}", *CPU)
    validate(cfg)
    assert cfg.data.patch == "auto" and cfg.trainer.grad_clip == 1.0 and cfg.trainer.max_steps == 500
    assert cfg.trainer.test_every_epoch is False  # the test split is read once, at the end
    assert (cfg.model.num_layers, cfg.model.readout) == (1, "final")  # chosen by cross-validation on training splits
    setup = build(cfg, torch.device("cpu"))
    assert setup.data.patch == patch and setup.data.train_x.shape[1:] == (steps, features)
    assert setup.total_steps == 500


TSER = ("tser", "tser_lstm_fcn", "tser_inception_time")


@pytest.mark.parametrize("preset", TSER)
def test_tser_presets_are_one_regression_setting_for_every_problem(preset):
    """experiment=tser*: task=regression on data=uea, the test split read once at the end, nothing per problem."""
    pytest.importorskip("aeon", reason="data=uea needs the timeseries extra")
    cfgs = [make_cfg(f"experiment={preset}", f"data.name={name}", *CPU) for name in ("Covid3Month", "Tecator")]
    for cfg in cfgs:
        validate(cfg)
        assert cfg.task.name == "regression" and cfg.trainer.monitor == "val_rmse"
        assert cfg.data._target_ == "birnn.data.load_uea" and cfg.trainer.test_every_epoch is False
        assert cfg.trainer.max_steps > 0 and cfg.scheduler._target_.endswith("warmup_cosine")
    covid, tecator = cfgs
    tecator.data.name = covid.data.name
    assert covid == tecator  # the problem's name is the only difference
    base = make_cfg(f"experiment={preset.replace('tser', 'uea')}", "data.name=Covid3Month", *CPU)
    if preset == "tser_lstm_fcn":  # its LSTM's width was chosen for regression on training splits (docs/archive.md)
        assert (covid.model.hidden_size, base.model.hidden_size) == (64, 8)
        base.model.hidden_size = 64
    assert covid.model == base.model and covid.optimizer == base.optimizer  # the archive preset's network


def test_tser_preset_trains_a_bundled_regression_problem():
    pytest.importorskip("aeon", reason="data=uea needs the timeseries extra")
    cfg = make_cfg("experiment=tser", "data.name=CardanoSentiment", *CPU)
    validate(cfg)
    setup = build(cfg, torch.device("cpu"))
    assert setup.data.classes == ["value"] and setup.data.train_x.shape[1:] == (24, 2)
    assert setup.data.normalize_series is cfg.data.normalize_series and setup.total_steps == cfg.trainer.max_steps
