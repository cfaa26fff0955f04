"""Composition, the tutorial defaults, and every config rejection (in-process, before any data loads)."""

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from birnn.models.rnn import build_model
from birnn.schema.config import Config, DataConfig, ModelConfig, SGDConfig, apply_schemas, validate
from birnn.schema.errors import BirnnError
from birnn.system.device import setup_device
from conftest import FAST, make_cfg, run_cli


def test_defaults_reproduce_the_tutorial():
    cfg = make_cfg()
    assert cfg.model.hidden_size == 128 and cfg.model.num_layers == 2 and cfg.model.bidirectional
    assert cfg.model.readout == "last" and cfg.model.dropout == 0.0
    assert cfg.data._target_ == "birnn.data.load_mnist" and cfg.data.batch_size == 100
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.003
    assert cfg.trainer.epochs == 2 and cfg.trainer.grad_clip is None and cfg.trainer.precision == "32"
    assert cfg.scheduler is None and cfg.device.type == "auto" and cfg.seed == 0
    assert cfg.model._target_ == "birnn.models.RNNClassifier" and list(cfg.tracker) == ["tensorboard"]
    validate(cfg)


def test_data_option_carries_trainer_settings_and_the_command_line_wins():
    assert make_cfg("data=digits").trainer.epochs == 15
    assert make_cfg("data=digits", "trainer.epochs=3").trainer.epochs == 3
    assert make_cfg("data=fashion_mnist").trainer.epochs == 2


@pytest.mark.parametrize(
    "group,option,key,value",
    [
        ("optimizer", "adamw", "weight_decay", 0.01),
        ("optimizer", "sgd", "momentum", 0.9),
        ("scheduler", "cosine", "_target_", "birnn.engine.schedule.warmup_cosine"),
        ("scheduler", "onecycle", "_target_", "torch.optim.lr_scheduler.OneCycleLR"),
        ("device", "cpu", "type", "cpu"),
    ],
)
def test_group_options_compose(group, option, key, value):
    assert make_cfg(f"{group}={option}")[group][key] == value


@pytest.mark.parametrize(
    "override,error,cause,message",
    [
        (
            "model.hidden_size=abc",
            ConfigCompositionException,
            ValidationError,
            "Value 'abc' of type 'str' could not be converted to Integer",
        ),
        (
            "model.hiden_size=3",
            ConfigCompositionException,
            ConfigAttributeError,
            "Key 'hiden_size' not in 'ModelConfig'",
        ),
        ("optimizer.lrr=0.1", ConfigCompositionException, ConfigAttributeError, "Key 'lrr' not in 'AdamConfig'"),
        ("data=nope", MissingConfigException, type(None), "Could not find 'data/nope'"),
        (
            "trainer.epochs=1.5",
            ConfigCompositionException,
            ValidationError,
            "Value '1.5' of type 'float' could not be converted to Integer",
        ),
    ],
)
def test_composition_rejects(override, error, cause, message):
    with pytest.raises(error) as info:
        make_cfg(override)
    assert type(info.value.__cause__) is cause
    assert message in str(info.value.__cause__ or info.value)


@pytest.mark.parametrize(
    "preset,expected",
    [
        ("tutorial", {"data._target_": "birnn.data.load_mnist", "model.num_layers": 2, "trainer.epochs": 2}),
        ("fast", {"model.num_layers": 1, "model.readout": "final", "trainer.precision": "bf16", "optimizer.lr": 0.02}),
        (
            "japanese_vowels",
            {
                "data._target_": "birnn.data.load_uea",
                "data.name": "JapaneseVowels",
                "data.batch_size": 32,
                "data.normalize": True,
                "model.hidden_size": 64,
                "model.readout": "final",
                "trainer.epochs": 50,
            },
        ),
        (
            "basic_motions",
            {
                "data._target_": "birnn.data.load_uea",
                "data.name": "BasicMotions",
                "data.batch_size": 32,
                "data.normalize": True,
                "model.hidden_size": 64,
                "model.readout": "mean",
                "trainer.epochs": 100,
            },
        ),
    ],
)
def test_presets_compose_and_validate(preset, expected):
    cfg = make_cfg(f"experiment={preset}")
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected
    validate(cfg)


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=0", "optimizer.lr must be a finite number > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr must be a finite number > 0"),
        ("data.batch_size=0", "data.batch_size must be > 0"),
        ("trainer.epochs=0", "trainer.epochs must be > 0"),
        ("trainer.epochs=-2", "trainer.epochs must be > 0"),
        ("trainer.precision=8", "trainer.precision must be one of"),
        ("trainer.early_stopping_patience=2", "needs a validation split"),
        ("device.type=tpu", "device.type must be one of"),
    ],
)
def test_range_checks(override, message):
    cfg = make_cfg(override)
    with pytest.raises(BirnnError) as info:
        validate(cfg)
    assert message in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(BirnnError) as info:
        validate(make_cfg("data.batch_size=0", "optimizer.lr=0"))
    assert "data.batch_size" in str(info.value) and "optimizer.lr" in str(info.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.hidden_size=-1", "model.hidden_size must be in 1..65536"),
        ("model.num_layers=0", "model.num_layers must be in 1..64"),
        ("model.dropout=1.0", "model.dropout must be in [0, 1)"),
        ("model.readout=first", "model.readout must be one of"),
        ("model.cell=rnn", "model.cell must be one of lstm, gru; got 'rnn'"),
    ],
)
def test_birnns_model_checks_its_own_keys(override, message):
    """RNNClassifier's keys are checked where it is built, not in validate (a user's model has other keys)."""
    cfg = make_cfg(override)
    validate(cfg)
    with pytest.raises(BirnnError) as info:
        build_model(cfg.model, 8, 10)
    assert message in str(info.value)


def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BirnnError, match="device=cuda was requested but CUDA is not available"):
        setup_device(make_cfg("device=cuda").device)


def test_fp16_needs_cuda():
    with pytest.raises(BirnnError, match="precision=16 needs CUDA"):
        setup_device(make_cfg("device=cpu").device, "16")


# Option files as the previous release (252ba19) wrote them, less the schema line a user's copy may lack, and
# the schema whose defaults the keys they leave out (those added since) must take.
OLD_RELEASE_FILES = {
    "data/mydata.yaml": (
        "_target_: birnn.data.load_digits\nroot: data\ndownload: false\nbatch_size: 100\neval_batch_size: 500\n"
        "val_size: 0\nsplit_seed: 0\n",
        DataConfig,
    ),
    "model/mymodel.yaml": (
        "hidden_size: 16\nnum_layers: 1\nbidirectional: true\ndropout: 0.0\nreadout: last\n",
        ModelConfig,
    ),
    "optimizer/myopt.yaml": ("_target_: torch.optim.SGD\nlr: 0.05\nmomentum: 0.9\n", SGDConfig),
}


def test_option_files_without_a_schema_line_get_their_schemas_defaults(tmp_path):
    for name, (text, _) in OLD_RELEASE_FILES.items():
        (tmp_path / "myconf" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "myconf" / name).write_text(text)
    args = ["--config-dir", "myconf", *FAST, "data=mydata", "model=mymodel", "optimizer=myopt", "trainer.max_steps=2"]
    proc = run_cli(*args, "trainer.epochs=1", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["config"]
    resolved = {"model": {"embedding_dim": 64}}  # null until the run starts: data.vectors' dimension, else 64
    for name, (text, schema) in OLD_RELEASE_FILES.items():
        group = name.split("/")[0]
        defaults = {**OmegaConf.to_container(OmegaConf.structured(schema)), **resolved.get(group, {})}
        assert saved[group] == {**defaults, **OmegaConf.to_container(OmegaConf.create(text))}


def test_an_option_file_without_a_schema_line_is_still_type_checked():
    cfg = OmegaConf.merge(OmegaConf.structured(Config), {"data": {"_target_": "x.load", "batch_size": "abc"}})
    with pytest.raises(BirnnError, match="Invalid config: data.batch_size: Value 'abc' of type 'str' could not"):
        apply_schemas(cfg)
