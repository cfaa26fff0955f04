"""``data.normalize_series``: each series z-normalized by its own mean and std per channel over its valid steps,
before the channel statistics, in training, evaluate, predict, packs and the exported graph; the rule for padding,
constant series and missing values; the flag in the checkpoint's data spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("aeon", reason="data=uea needs the timeseries extra")

from test_sequences import problem, ramps, write_ts

from birnn import evaluate, export, predict
from birnn.data import normalize
from birnn.data.packed import PackWriter
from birnn.data.pipeline import load_data
from birnn.engine.restore import restore
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import make_cfg, run_cli, write_checkpoint

TINY = [
    "device=cpu",
    "device.num_threads=1",
    "model.hidden_size=8",
    "model.num_layers=1",
    "model.readout=mean",
    "trainer.epochs=2",
    "trainer.log_images=false",
    "data.batch_size=8",
]


def test_each_series_channel_has_mean_0_and_std_1_over_its_valid_steps_and_padding_stays_0():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 2, generator=g) * torch.tensor([1.0, 500.0]) + torch.tensor([3.0, -40.0])
    lengths = torch.tensor([6, 3, 1, 5])
    x[torch.arange(6) >= lengths[:, None]] = 0
    z = normalize.per_series(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        valid = z[i, :n].double()
        if n > 1:
            torch.testing.assert_close(valid.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0)
            torch.testing.assert_close(valid.std(0, unbiased=False), torch.ones(2, dtype=torch.float64))
        assert torch.equal(z[i, n:], torch.zeros_like(z[i, n:]))  # padding exactly 0
    assert torch.equal(z[2, 0], torch.zeros(2))  # one valid step: a constant series
    # the scale and offset of each series are gone: the same series 1000x larger and shifted give the same inputs
    torch.testing.assert_close(normalize.per_series(x * 1000 + 7 * (x != 0), lengths), z, atol=1e-5, rtol=1e-5)
    fixed = normalize.per_series(x[:1])
    torch.testing.assert_close(fixed, z[:1])  # no lengths: every step counts


def test_a_constant_series_becomes_exactly_0_and_a_tiny_one_is_only_centred():
    x = torch.tensor([[[20341.0], [20341.0], [20341.0]], [[1.0], [1.0 + 1e-7], [1.0]]])
    z = normalize.per_series(x)
    assert torch.equal(z[0], torch.zeros(3, 1))
    assert z[1].abs().max() < 1e-6  # std below normalize.MIN_STD: centred, not blown up


def test_training_data_are_z_normalized_per_series_before_the_channel_statistics(tmp_path):
    root = problem(tmp_path, "Tiny", ramps(12, 8, seed=0), ramps(6, 8, seed=1))
    base = ["data=uea", "data.name=Tiny", f"data.root={root}"]
    raw = load_data(make_cfg(*base, "data.normalize=false").data, torch.device("cpu"))
    splits = load_data(make_cfg(*base, "data.normalize_series=true").data, torch.device("cpu"))
    stats = normalize.fit(normalize.per_series(raw.train_x))  # channel statistics of the z-normalized series
    assert splits.normalize_series and splits.normalization == stats
    for name in ("train_x", "test_x"):
        expected = normalize.apply(normalize.per_series(getattr(raw, name)), stats)
        torch.testing.assert_close(getattr(splits, name), expected)
    assert not load_data(make_cfg(*base).data, torch.device("cpu")).normalize_series  # the default: off


def test_a_missing_value_takes_its_own_series_mean_and_becomes_exactly_0(tmp_path):
    """The rule for missing values: each is filled with its series' mean over that channel's observed values
    (not the training split's channel mean, which for series of very different scales is far from either)."""
    train = ([[[1.0, None, 3.0, 5.0]], [[1000.0, 3000.0, 2000.0, 4000.0]]], ["a", "b"])
    root = problem(tmp_path, "Gaps", train, ([[[2.0, 4.0, None, 6.0]]], ["a"]))
    base = ["data=uea", "data.name=Gaps", f"data.root={root}", "data.normalize=false"]
    splits = load_data(make_cfg(*base, "data.normalize_series=true").data, torch.device("cpu"))
    assert splits.train_x[0, 1, 0] == 0 and splits.test_x[0, 2, 0] == 0
    expected = normalize.per_series(torch.tensor([[[1.0], [3.0], [3.0], [5.0]]]))  # filled with mean(1, 3, 5) = 3
    torch.testing.assert_close(splits.train_x[:1], expected)
    plain = load_data(make_cfg(*base).data, torch.device("cpu"))  # without it: the training channel mean, as before
    assert plain.train_x[0, 1, 0] == pytest.approx((1 + 3 + 5 + 1000 + 3000 + 2000 + 4000) / 7)


def test_a_pack_gives_the_in_memory_inputs(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(30, 9, 2)) * rng.uniform(0.1, 100, size=(30, 1, 1))).astype(np.float32)
    lengths = rng.integers(1, 10, 30)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    y = rng.integers(0, 2, 30)
    with PackWriter(tmp_path / "p", ["a", "b"], variable=True) as pack:
        pack.split("train").append(x[:20], y[:20], lengths[:20])
        pack.split("test").append(x[20:], y[20:], lengths[20:])
    cfg = make_cfg("data=packed", f"data.path={tmp_path / 'p'}", "data.normalize=true", "data.normalize_series=true")
    splits = load_data(cfg.data, torch.device("cpu"))
    train_x, train_lengths = torch.from_numpy(x[:20]), torch.from_numpy(lengths[:20])
    stats = normalize.fit(normalize.per_series(train_x, train_lengths), train_lengths)
    np.testing.assert_allclose(splits.normalization["mean"], stats["mean"], rtol=1e-6, atol=1e-9)
    expected = normalize.apply(normalize.per_series(train_x, train_lengths), stats, train_lengths)
    torch.testing.assert_close(splits.train_x[torch.arange(20)], expected)


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    """A tiny fixed-length run with data.normalize_series and data.normalize, and its .ts files."""
    tmp = tmp_path_factory.mktemp("series")
    root = problem(tmp, "Tiny", ramps(24, 8, seed=0), ramps(10, 8, seed=1))
    cfg = make_cfg("data=uea", "data.name=Tiny", f"data.root={root}", "data.normalize_series=true", *TINY)
    metrics = train(cfg, tmp / "run")
    return tmp / "run" / "checkpoints" / "last.pt", root / "Tiny" / "Tiny_TEST.ts", metrics


def test_the_checkpoint_records_it_and_evaluate_reproduces_the_run(series_run):
    ckpt, _, metrics = series_run
    spec = torch.load(ckpt, weights_only=True)["data"]
    assert spec["normalize_series"] is True and spec["normalization"] is not None
    assert evaluate.evaluate_checkpoint(ckpt)["test_accuracy"] == metrics["test_accuracy"]


def test_predict_z_normalizes_each_series_so_its_scale_does_not_matter(series_run, tmp_path):
    ckpt, test_file, metrics = series_run
    records = predict.predict(ckpt, [test_file])
    truth = ["up" if i % 2 == 0 else "down" for i in range(10)]
    assert np.mean([r["label"] == t for r, t in zip(records, truth)]) == pytest.approx(metrics["test_accuracy"])
    series, labels = ramps(10, 8, seed=1)
    scaled = [[[v * 1000 + 50 for v in channel] for channel in s] for s in series]  # what z-normalization removes
    records_scaled = predict.predict(ckpt, [write_ts(tmp_path / "scaled.ts", scaled, labels)])
    for plain, big in zip(records, records_scaled):
        assert big["label"] == plain["label"] and big["probability"] == pytest.approx(plain["probability"], abs=1e-4)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_the_exported_graph_z_normalizes_raw_series(series_run, tmp_path, fmt):
    ckpt, _, _ = series_run
    restored = restore(ckpt)
    out, _ = export.export(restored, fmt, tmp_path / f"model.{fmt}")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 8, 2, generator=g) * torch.tensor([30.0, 0.2]) + 100
    with torch.inference_mode():
        expected = restored.model(normalize.apply(normalize.per_series(x), restored.normalization))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out))
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    else:
        got = torch.export.load(str(out)).module()(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_overriding_it_on_a_checkpoint_is_refused(series_run):
    ckpt, _, _ = series_run
    with pytest.raises(BirnnError, match="data.normalize_series would change the model or its inputs"):
        restore(ckpt, ["data.normalize_series=false"])


def test_a_checkpoint_without_the_field_reads_as_before_and_a_wrong_type_is_refused(series_run, tmp_path):
    ckpt, _, _ = series_run
    state = torch.load(ckpt, weights_only=True)
    old = {**state, "data": {k: v for k, v in state["data"].items() if k != "normalize_series"}}
    assert restore(write_checkpoint(old, tmp_path / "old.pt")).normalize_series is False  # older releases: off
    bad = {**state, "data": {**state["data"], "normalize_series": "yes"}}
    with pytest.raises(BirnnError, match="normalize_series"):
        restore(write_checkpoint(bad, tmp_path / "bad.pt"))


def test_the_cli_trains_with_it_and_token_data_refuse_it(tmp_path):
    root = problem(tmp_path, "Tiny", ramps(16, 6, seed=0), ramps(6, 6, seed=1))
    args = ["data=uea", "data.name=Tiny", f"data.root={root}", "data.normalize_series=true", *TINY]
    result = run_cli(*args, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(Path(tmp_path / "run" / "metrics.json").read_text())["steps"] == 2
    text = tmp_path / "t.csv"
    text.write_text("text,label\n" + "".join(f"word {i},{'ab'[i % 2]}\n" for i in range(20)))
    refused = run_cli("data=text", f"data.path={text}", "data.normalize_series=true", *TINY, cwd=tmp_path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "data.normalize_series and data.patch apply to float features, not to token IDs" in refused.stderr


def write_values_ts(path: Path, series: np.ndarray, targets: np.ndarray) -> Path:
    """A regression ``.ts`` file (``@targetLabel true``): one channel per series, its value after the last colon."""
    header = ["@problemName TinyValues", "@timeStamps false", "@missing false", "@univariate true"]
    header += ["@equalLength true", f"@seriesLength {series.shape[1]}", "@targetLabel true", "@data"]
    rows = [",".join(f"{v:.4f}" for v in s) + f":{t:.4f}" for s, t in zip(series, targets)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header + rows) + "\n")
    return path


def test_regression_runs_take_it_too(tmp_path):
    """task=regression with data.normalize_series: evaluate reproduces the run's RMSE, and predict gives a series
    1000x larger the same value (its scale is removed before the model sees it)."""
    rng = np.random.default_rng(0)
    slopes = rng.uniform(-1, 1, 40)
    series = slopes[:, None] * np.linspace(0, 1, 8) + 0.05 * rng.standard_normal((40, 8))
    series *= rng.uniform(1, 500, (40, 1))  # scales that say nothing about the target
    for split, rows in (("TRAIN", slice(0, 30)), ("TEST", slice(30, 40))):
        write_values_ts(tmp_path / "V" / f"V_{split}.ts", series[rows], slopes[rows])
    overrides = ["task=regression", "data=uea", "data.name=V", f"data.root={tmp_path}", "data.normalize_series=true"]
    metrics = train(make_cfg(*overrides, *TINY), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert evaluate.evaluate_checkpoint(ckpt)["test_rmse"] == pytest.approx(metrics["test_rmse"], rel=1e-6)
    plain = predict.predict(ckpt, [tmp_path / "V" / "V_TEST.ts"])
    scaled = predict.predict(ckpt, [write_values_ts(tmp_path / "big.ts", series[30:] * 1000, slopes[30:])])
    assert [r["value"] for r in scaled] == pytest.approx([r["value"] for r in plain], rel=1e-4, abs=1e-5)
