"""model=bigru: config, training, restore (evaluate), export of either cell; a variable-length model is refused."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from birnn import export
from birnn.data import Splits, load_digits
from birnn.engine.restore import Restored, restore
from birnn.evaluate import evaluate_checkpoint
from birnn.models.rnn import RNNClassifier, build_model
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import FAST, make_cfg, write_checkpoint


def test_bigru_option_and_cell_choice():
    cfg = make_cfg("model=bigru")
    assert cfg.model.cell == "gru" and make_cfg().model.cell == "lstm"
    assert isinstance(build_model(cfg.model, 8, 10).rnn, torch.nn.GRU)
    assert isinstance(build_model(make_cfg("model.cell=gru").model, 8, 10).rnn, torch.nn.GRU)


@pytest.fixture(scope="module")
def gru_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("gru")
    metrics = train(
        make_cfg(*FAST, "model=bigru", "model.num_layers=1", "trainer.epochs=8", "optimizer.lr=0.01"), run_dir
    )
    return run_dir / "checkpoints" / "last.pt", metrics


def test_bigru_trains_and_restores(gru_ckpt):
    path, metrics = gru_ckpt
    assert metrics["test_accuracy"] > 0.6  # 10 classes: chance is 0.1
    restored = restore(path)
    assert restored.cfg.model.cell == "gru" and isinstance(restored.model.rnn, torch.nn.GRU)
    assert all(k.startswith(("gru.", "fc.")) for k in restored.model.state_dict())
    assert evaluate_checkpoint(path, ["device=cpu"])["test_accuracy"] == metrics["test_accuracy"]


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_bigru_exports(gru_ckpt, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    restored = restore(gru_ckpt[0])
    out, difference = export.export(restored, fmt, tmp_path / f"m.{fmt}")
    assert out.is_file() and difference <= 1e-4


def test_pt2_export_of_a_two_layer_gru_with_the_shortcut(tmp_path):
    torch.manual_seed(0)
    model = RNNClassifier(8, 10, hidden_size=12, num_layers=2, cell="gru").eval()
    assert model._last_step is not None
    restored = Restored(tmp_path / "last.pt", {}, None, model, (8, 8), [str(i) for i in range(10)])
    out, _ = export.export(restored, "pt2")
    x = load_digits().test_x[:50]
    with torch.inference_mode():
        assert (torch.export.load(str(out)).module()(x) - model(x)).abs().max() <= 1e-4


def test_export_refuses_a_variable_length_model_it_cannot_unpack(gru_ckpt, tmp_path, capsys):
    restored = restore(gru_ckpt[0])
    spec = {"input_shape": [29, 8], "features": 8, "max_length": None, "classes": restored.classes}
    spec["normalization"] = {"mean": [0.0] * 8, "std": [1.0] * 8}  # standardized: not exported unpacked
    variable = replace(restored, state={**restored.state, "data": spec}, spec=spec)
    refusal = "variable-length sequences .* cannot be exported with data.normalize.*pack_padded_sequence"
    with pytest.raises(BirnnError, match=refusal):
        export.export(variable, "pt2", tmp_path / "m.pt2")
    assert not (tmp_path / "m.pt2").exists()
    # through the command line: one line on stderr, exit 2
    ckpt = tmp_path / "variable.pt"
    write_checkpoint({**restored.state, "data": spec, "config": OmegaConf.to_container(restored.cfg)}, ckpt)
    with pytest.raises(SystemExit) as exit_:
        export.main([str(ckpt), "--format", "pt2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "variable-length" in err


def ragged_digits(root: str = "data", download: bool = False) -> Splits:
    """Digits whose test rows are cut to lengths 1-8, the rest filled with junk (a loader for the test below)."""
    splits = load_digits()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 9, (len(splits.test_y),), generator=g)
    x = splits.test_x.clone()
    junk = torch.arange(8)[None, :] >= lengths[:, None]
    x[junk] = 3.0
    return replace(splits, test_x=x, test_lengths=lengths)


def test_evaluate_passes_the_test_lengths(gru_ckpt, tmp_path):
    restored = restore(gru_ckpt[0])
    config = OmegaConf.to_container(restored.cfg)
    config["data"]["_target_"] = "test_bigru.ragged_digits"
    ckpt = tmp_path / "ragged.pt"
    write_checkpoint({**restored.state, "config": config}, ckpt)
    data = ragged_digits()
    with torch.inference_mode():
        alone = torch.cat([restored.model(data.test_x[i : i + 1, :n]) for i, n in enumerate(data.test_lengths)])
    expected = (alone.argmax(1) == data.test_y).sum().item() / len(data.test_y)
    assert evaluate_checkpoint(ckpt, ["device=cpu"], allow=["test_bigru"])["test_accuracy"] == expected
