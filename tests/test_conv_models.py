"""model=lstm_fcn and model=inception_time: shapes, lengths exactness (a padded batch equals each sample alone;
the padding reaches nothing in training), masked BatchNorm, config and restore, ONNX export, exact resume after
kill -9, and torchrun 2 processes = 1 process."""

import optuna
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from optuna.trial import TrialState
from test_distributed import finished, run_dirs, torchrun
from test_lengths import CLASSES, FEATURES, LENGTHS, _padded_batch
from test_resume import kill_9_then_resume
from test_studies import TINY_SPACE
from test_sweeps import read_csv

from birnn import export
from birnn.engine.restore import restore
from birnn.models import LSTMFCN, InceptionTime
from birnn.models.layers import MaskedBatchNorm1d
from birnn.models.rnn import build_model
from birnn.schema.config import typed
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import make_cfg, run_cli

# Small versions of both (the papers' widths are the defaults) on digits: 8 steps of 8 features.
SMALL = {
    "lstm_fcn": ["model=lstm_fcn", "model.filters=[8,12,8]", "model.reduction=4"],
    "inception_time": ["model=inception_time", "model.filters=4", "model.bottleneck=4", "model.depth=3"],
}
RUN = ["data=digits", "device=cpu", "device.num_threads=1", "trainer.log_images=false"]


def small(name: str, input_size: int = FEATURES, **keys) -> torch.nn.Module:
    cfg = make_cfg(*SMALL[name], *(f"model.{k}={v}" for k, v in keys.items())).model
    return build_model(cfg, input_size, CLASSES)


@pytest.mark.parametrize("name", SMALL)
def test_options_build_the_published_networks(name):
    cfg = make_cfg(f"model={name}").model
    model = build_model(cfg, 1, 5)
    assert type(model) is {"lstm_fcn": LSTMFCN, "inception_time": InceptionTime}[name]
    assert model(torch.rand(3, 50, 1)).shape == (3, 5)
    if name == "inception_time":
        assert [c[1].kernel_size[0] for c in model.blocks[0].convs] == [40, 20, 10]
        assert len(model.blocks) == 6 and len(model.shortcuts) == 2
        assert model.blocks[0].bottleneck is None and model.blocks[1].bottleneck.out_channels == 32  # 1 channel: none
        assert model.fc.in_features == 128
    else:
        assert [b.conv[1].out_channels for b in model.blocks] == [128, 256, 128]
        assert model.lstm.hidden_size == 8 and model.dropout.p == 0.8
        assert model.excite is None  # univariate: LSTM-FCN
        assert len(build_model(cfg, 3, 5).excite) == 2  # multivariate: MLSTM-FCN's squeeze-and-excite


@pytest.mark.parametrize("name", SMALL)
def test_padded_batch_equals_each_sample_alone_in_eval_mode(name):
    torch.manual_seed(0)
    model = small(name).eval()
    x, lengths, _ = _padded_batch(1)
    alone = torch.cat([model(x[i : i + 1, :n]) for i, n in enumerate(LENGTHS)])
    assert (model(x, lengths) - alone).abs().max() <= 1e-5


@pytest.mark.parametrize("name", SMALL)
def test_padding_reaches_nothing_in_training(name):
    """Two junk fillings of the padding: the same logits, gradients and BatchNorm running statistics."""
    torch.manual_seed(0)
    x, lengths, y = _padded_batch(2)
    other = x.clone()
    other[torch.arange(max(LENGTHS))[None, :] >= lengths[:, None]] = -3.0
    models = [small(name, dropout=0.0) if name == "lstm_fcn" else small(name) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    logits = []
    for model, batch in zip(models, (x, other)):
        logits.append(model.train()(batch, lengths))
        F.cross_entropy(logits[-1], y).backward()
    assert (logits[0] - logits[1]).abs().max() <= 1e-5
    for (name_, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        assert p.grad is not None, f"{name_} got no gradient"
        assert (p.grad - q.grad).abs().max() <= 1e-5, name_
    for (name_, a), b in zip(models[0].named_buffers(), models[1].buffers()):
        assert (a.float() - b.float()).abs().max() <= 1e-5, name_


def test_masked_batch_norm_is_batch_norm_on_the_valid_steps():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 9)
    ours, torchs = MaskedBatchNorm1d(3), torch.nn.BatchNorm1d(3)
    torch.testing.assert_close(ours(x), torchs(x))
    torch.testing.assert_close(ours.running_var, torchs.running_var)
    # with a mask: the statistics of the valid steps alone (here: each sample's first 5)
    mask = torch.zeros(4, 1, 9, dtype=torch.bool)
    mask[:, :, :5] = True
    fresh, reference = MaskedBatchNorm1d(3), torch.nn.BatchNorm1d(3)
    torch.testing.assert_close(fresh(x, mask)[:, :, :5], reference(x[:, :, :5]))
    torch.testing.assert_close(fresh.running_mean, reference.running_mean)
    torch.testing.assert_close(fresh.running_var, reference.running_var)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=lstm_fcn", "model.dropout=1.0"], "model.dropout must be in"),
        (["model=lstm_fcn", "model.kernel_sizes=[8,5]"], "model.kernel_sizes must give one size > 0 per filter"),
        (["model=inception_time", "model.depth=0"], "model.depth must be > 0"),
        (["model=inception_time", "model.bottleneck=-1"], "model.bottleneck must be >= 0"),
    ],
)
def test_bad_keys_are_one_error(overrides, message):
    with pytest.raises(BirnnError, match=message):
        build_model(make_cfg(*overrides).model, 1, 2)


def test_stored_keys_are_typed_by_the_models_schema():
    stored = {"model": {"_target_": "birnn.models.InceptionTime", "depth": 3}}
    model = typed(stored).model
    assert model.depth == 3 and OmegaConf.to_container(model.kernel_sizes) == [40, 20, 10]  # a new key: default


@pytest.mark.parametrize("name", SMALL)
def test_trains_restores_and_exports_to_onnx(name, tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    metrics = train(make_cfg(*RUN, *SMALL[name], "trainer.max_steps=30"), tmp_path)
    assert metrics["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    restored = restore(tmp_path / "checkpoints" / "last.pt")
    assert type(restored.model).__name__ == {"lstm_fcn": "LSTMFCN", "inception_time": "InceptionTime"}[name]
    out, difference = export.export(restored, "onnx", tmp_path / "m.onnx")
    assert out.is_file() and difference <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL)
def test_kill_9_then_resume_is_bit_identical(name, tmp_path):
    kill_9_then_resume(
        tmp_path, [*RUN, *SMALL[name], "trainer.checkpoint_every_n_steps=7", "trainer.log_every_n_steps=4"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL)
def test_two_processes_do_the_single_process_math(name, tmp_path):
    """BatchNorm's statistics are summed over both processes' shares: the same weights as one process (dropout
    off: each process draws its own dropout masks)."""
    no_dropout = ["model.dropout=0"] if name == "lstm_fcn" else []
    assert_two_processes_end_with_one_process_weights(tmp_path, [*RUN, *SMALL[name], *no_dropout])


def assert_two_processes_end_with_one_process_weights(tmp_path, run: list[str]) -> dict:
    """torchrun's 2 processes end ``run`` (2 epochs, the last batch split 19 / 18) with 1 process's weights,
    which are returned."""
    run = [*run, "data.val_size=1", "trainer.epochs=2"]
    (tmp_path / "ddp").mkdir()
    rc, _, err = finished(torchrun(*run, cwd=tmp_path / "ddp", stdout=-1, stderr=-1))
    assert rc == 0, err
    (ddp_dir,) = run_dirs(tmp_path / "ddp")
    train(make_cfg(*run), tmp_path / "one")
    ddp = torch.load(ddp_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert one.keys() == ddp.keys()
    for key, weight in one.items():
        torch.testing.assert_close(ddp[key].float(), weight.float(), atol=1e-5, rtol=0, msg=key)
    return one


@pytest.mark.slow
def test_a_sweep_and_a_search_train_the_convolutional_models(tmp_path):
    """A multirun over both models (summary ranked on validation) and a two-trial study of InceptionTime."""
    sweep, study = tmp_path / "sweep", tmp_path / "study"
    steps = [*RUN, "trainer.max_steps=10", "model.filters=4", "model.bottleneck=4", "model.depth=3"]
    proc = run_cli(
        "-m", *steps, "model=inception_time", "optimizer.lr=1e-3,3e-3", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 2 and all(0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    search = [*steps, "model=inception_time", TINY_SPACE, "search.pruner=none", "search.n_trials=2"]
    proc = run_cli(*search, f"search.dir={study}", cwd=tmp_path, module="birnn.search")
    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="birnn", storage=f"sqlite:///{study / 'study.db'}").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
