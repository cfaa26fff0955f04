"""Issue #38 item 4: data=text and data=tagged bring defaults that learn their kind of task (docs/text.md
"Defaults"), for birnn's model=bilstm/bigru; images, series and your own model keep theirs, and a value the user
sets is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from birnn.schema.config import CONFIG_DIR
from conftest import make_cfg

TEXT = {"readout": "final", "embedding_dropout": 0.3, "head_dropout": 0.3}
TAGGED = {"readout": "last", "embedding_dropout": 0.3, "head_dropout": 0.3}  # readout does not apply per token
TUTORIAL = {"readout": "last", "embedding_dropout": 0.0, "head_dropout": 0.0}


def model_keys(cfg) -> dict:
    return {k: cfg.model.get(k) for k in TUTORIAL}


@pytest.mark.parametrize("model", ["bilstm", "bigru"])
@pytest.mark.parametrize(("data", "expected", "epochs"), [("text", TEXT, 3), ("tagged", TAGGED, 10)])
def test_token_data_bring_their_own_defaults_and_images_and_series_keep_theirs(data, expected, epochs, model):
    cfg = make_cfg(f"data={data}", f"model={model}")
    assert model_keys(cfg) == expected and cfg.trainer.epochs == epochs
    for other, its_epochs in (("mnist", 2), ("digits", 15), ("uea", 2), ("arrays", 2)):
        cfg = make_cfg(f"data={other}", f"model={model}")
        assert model_keys(cfg) == TUTORIAL and cfg.trainer.epochs == its_epochs, other


def test_what_the_user_sets_is_kept():
    cfg = make_cfg("data=text", "model.readout=mean", "model.head_dropout=0", "trainer.epochs=1")
    assert (cfg.model.readout, cfg.model.head_dropout, cfg.model.embedding_dropout) == ("mean", 0.0, 0.3)
    assert cfg.trainer.epochs == 1


def test_presets_keep_the_settings_they_were_measured_with():
    for preset in ("names", "spam", "brown_pos"):
        cfg = make_cfg(f"experiment={preset}")
        assert (cfg.model.embedding_dropout, cfg.model.head_dropout) == (0.0, 0.0), preset


def test_your_own_model_gets_no_model_key_only_the_trainers(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny.yaml").write_text(
        "defaults:\n  - /schema/model/model@_here_\n  - _self_\n\n_target_: mymodel.Tiny\nhidden_size: 8\n"
    )
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("config", overrides=["data=text", "model=tiny", f"hydra.searchpath=[file://{tmp_path}]"])
    assert dict(cfg.model) == {"_target_": "mymodel.Tiny", "hidden_size": 8} and cfg.trainer.epochs == 3
