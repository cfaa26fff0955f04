"""data=arrays (.npz and .pt files), data.normalize (fit, padding, stored statistics) and predict on .npy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from birnn import evaluate, export, predict
from birnn.data import normalize
from birnn.data.arrays import load_arrays
from birnn.data.pipeline import Splits, load_data, spec
from birnn.engine import checkpoint
from birnn.engine.restore import restore
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import make_cfg, peak_rss

FAST = [
    "data=arrays",
    "device=cpu",
    "device.num_threads=1",
    "model.hidden_size=16",
    "model.num_layers=1",
    "trainer.log_images=false",
    "optimizer.lr=0.01",
]


def waves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Series (n, 10 steps, 2 features) far from [0, 1] (mean ~50, std ~10); label: is feature 0 rising?"""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    slope = np.where(y == 1, 1.0, -1.0)[:, None] * np.linspace(-1, 1, 10)
    x = np.stack([50 + 10 * slope + rng.normal(0, 2, (n, 10)), rng.normal(-20, 5, (n, 10))], axis=-1)
    return x.astype(np.float64), y


def arrays(**changes) -> dict:
    (xa, ya), (xb, yb) = waves(120, 0), waves(40, 1)
    return {
        "x_train": xa,
        "y_train": ya,
        "x_test": xb,
        "y_test": yb,
        "classes": np.array(["falling", "rising"]),
        **changes,
    }


def save(path: Path, content: dict) -> Path:
    """``.npz`` as numpy saves it; ``.pt`` as tensors, with the class names as a list of strings."""
    content = {k: v for k, v in content.items() if v is not None}
    if path.suffix == ".npz":
        np.savez(path, **content)
    else:
        torch.save({k: v.tolist() if v.dtype.kind == "U" else torch.as_tensor(v) for k, v in content.items()}, path)
    return path


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_arrays_load_npz_and_pt(tmp_path, suffix):
    content = arrays()
    splits = load_arrays(path=str(save(tmp_path / f"d{suffix}", content)))
    assert splits.train_x.shape == (120, 10, 2) and splits.train_x.dtype == torch.float32
    assert splits.test_y.dtype == torch.int64 and splits.test_y.tolist() == content["y_test"].tolist()
    torch.testing.assert_close(splits.train_x, torch.tensor(content["x_train"], dtype=torch.float32))
    assert splits.classes == ["falling", "rising"] and splits.kind == "series" and splits.normalization is None


def test_classes_default_to_label_numbers(tmp_path):
    content = arrays(classes=None, y_test=np.full(40, 2))
    assert load_arrays(path=str(save(tmp_path / "d.npz", content))).classes == ["0", "1", "2"]


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"y_test": None}, "has no y_test"),
        ({"x_train": np.zeros((120, 10))}, "x_train in {file} has shape (120, 10); expected (N, steps, features)"),
        ({"y_train": np.zeros(120)}, "y_train in {file} has dtype float64"),
        ({"y_train": np.zeros(7, dtype=int)}, "expected integer labels of shape (120,)"),
        ({"y_test": np.full(40, 2)}, "y_test in {file} holds label 2, outside classes"),
        ({"y_train": np.full(120, -1)}, "y_train in {file} holds label -1, outside classes"),
        ({"x_test": np.zeros((40, 10, 3))}, "x_train has 2 features per step but x_test has 3"),
        (
            {"x_test": np.where(np.arange(10)[None, :, None] == 3, np.nan, waves(40, 1)[0])},
            "x_test in {file} holds NaN, inf or values beyond float32's range (first in sample 0)",
        ),
        (
            {"x_train": np.full((120, 10, 2), np.inf)},
            "x_train in {file} holds NaN, inf or values beyond float32's range",
        ),
    ],
)
@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_bad_arrays_get_one_clear_line(tmp_path, suffix, changes, message):
    path = save(tmp_path / f"d{suffix}", arrays(**changes))
    with pytest.raises(BirnnError) as info:
        load_arrays(path=str(path))
    assert message.format(file=path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_files_get_one_clear_line(tmp_path):
    torch.save({"x_train": Path("any object weights_only refuses")}, tmp_path / "pickled.pt")
    np.savez(tmp_path / "objects.npz", **{**arrays(), "classes": np.array([{"a": 1}, None], dtype=object)})
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    cases = {
        "pickled.pt": "torch.load(weights_only=True) refused it (it holds objects other than tensors and plain values "
        "(pathlib.PosixPath)",
        "objects.npz": "is not a readable .npz file: Object arrays cannot be loaded",
        "broken.npz": "is not a readable .npz file",
        "missing.npz": "no such file",
        "data.csv": "expected a .npz or .pt file",
    }
    for name, message in cases.items():
        with pytest.raises(BirnnError) as info:
            load_arrays(path=str(tmp_path / name))
        assert message in str(info.value) and "\n" not in str(info.value), (name, str(info.value))
    with pytest.raises(BirnnError, match="data=arrays needs the file: data.path=FILE.npz"):
        load_arrays()


@pytest.mark.parametrize("reader", [lambda path: load_arrays(path=str(path)), checkpoint.load])
def test_a_pickle_naming_code_is_refused_without_torch_advice_to_trust_it(tmp_path, reader):
    path = tmp_path / "evil.pt"
    torch.save({**arrays(), "format": "birnn-checkpoint", "x_train": os.system}, path)  # a data file or a checkpoint
    with pytest.raises(BirnnError) as info:
        reader(path)
    message = str(info.value)
    assert "system" in message and "never unpickles" in message and "\n" not in message, message
    assert "weights_only` set to `False" not in message and "likely succeed" not in message and "trust" not in message


def test_normalize_fits_the_training_split_after_the_holdout(tmp_path):
    path = save(tmp_path / "d.npz", arrays())
    raw = load_data(make_cfg(*FAST, f"data.path={path}", "data.val_size=20").data, torch.device("cpu"))
    cfg = make_cfg(*FAST, f"data.path={path}", "data.val_size=20", "data.normalize=true")
    splits = load_data(cfg.data, torch.device("cpu"))
    stats = splits.normalization
    flat = raw.train_x.reshape(-1, 2).double()  # the training split only: the held-out samples excluded
    assert stats["mean"] == pytest.approx(flat.mean(0).tolist()) and stats["std"] == pytest.approx(
        flat.std(0, correction=0).tolist()
    )
    assert abs(stats["mean"][0] - 50) < 2 and abs(stats["mean"][1] + 20) < 1
    standardized = splits.train_x.reshape(-1, 2)
    assert standardized.mean(0).abs().max() < 1e-4 and (standardized.std(0, correction=0) - 1).abs().max() < 1e-4
    for split in ("test", "val"):  # the training statistics, not each split's own
        expected = (getattr(raw, f"{split}_x") - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])
        torch.testing.assert_close(getattr(splits, f"{split}_x"), expected.float())
    assert spec(splits)["normalization"] == stats and spec(splits)["kind"] == "series"
    assert load_data(make_cfg(*FAST, f"data.path={path}").data, torch.device("cpu")).normalization is None


def test_in_place_holdout_and_standardization_equal_copies_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(normalize, "CHUNK_BYTES", 100)  # many chunks: the in-place moves cross chunk ends
    path = save(tmp_path / "d.npz", arrays())
    source = load_arrays(path=str(path))
    cfg = make_cfg(*FAST, f"data.path={path}", "data.val_size=20", "data.normalize=true")
    splits = load_data(cfg.data, torch.device("cpu"))
    val = torch.randperm(len(source.train_y), generator=torch.Generator().manual_seed(cfg.data.split_seed))[:20]
    keep = torch.ones(len(source.train_y), dtype=torch.bool)
    keep[val] = False
    stats = splits.normalization
    for split, x in (("train", source.train_x[keep]), ("val", source.train_x[val]), ("test", source.test_x)):
        expected = (x - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])  # out of place, as before
        assert torch.equal(getattr(splits, f"{split}_x"), expected), split
    assert torch.equal(splits.train_y, source.train_y[keep]) and torch.equal(splits.val_y, source.train_y[val])


def one_tensor_for_both_splits(root: str = "data", download: bool = False) -> Splits:
    """A loader that evaluates on its training data: one tensor as train and test."""
    x = torch.arange(24.0).reshape(4, 3, 2)
    y = torch.tensor([0, 1, 0, 1])
    return Splits(x, y, x, y, ["a", "b"], kind="series")


def test_splits_sharing_one_tensor_are_standardized_once():
    cfg = make_cfg(*FAST, "data.normalize=true", "data._target_=test_arrays.one_tensor_for_both_splits")
    del cfg.data["path"], cfg.data["vocab_size"]
    splits = load_data(cfg.data, torch.device("cpu"))
    assert torch.equal(splits.train_x, splits.test_x)
    assert splits.train_x.reshape(-1, 2).mean(0).abs().max() < 1e-6  # standardized once, not twice


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["data.val_fraction=0.2", "data.normalize=true"]], ids=["plain", "held-out"])
def test_in_memory_training_peaks_within_1_5x_the_data(tmp_path, extra):
    """Peak RSS of training + test minus a tiny set's stays within 1.5x the data's float32 bytes (3.4x before)."""
    peaks = {}
    for megabytes in (4, 256):
        n = megabytes * 2**20 // (64 * 64 * 4)
        rng = np.random.default_rng(0)
        x, y = rng.random((n, 64, 64), np.float32), rng.integers(0, 10, n)
        path = save(
            tmp_path / f"d{megabytes}.npz",
            {"x_train": x[n // 4 :], "y_train": y[n // 4 :], "x_test": x[: n // 4], "y_test": y[: n // 4]},
        )
        del x
        run = [*FAST, f"data.path={path}", "trainer.max_steps=5", "data.eval_batch_size=200", *extra]
        peaks[megabytes] = peak_rss(tmp_path, f"run{megabytes}", *run)
    assert peaks[256] - peaks[4] <= 1.5 * 252 * 2**20, peaks


def padded_series(root: str = "data", download: bool = False) -> Splits:
    """Variable-length data as a loader gives it: zero padding beyond each sample's length."""
    x = torch.tensor([[[1.0], [3.0], [0.0]], [[5.0], [7.0], [9.0]], [[2.0], [0.0], [0.0]]])
    lengths = torch.tensor([2, 3, 1])
    return Splits(
        x,
        torch.tensor([0, 1, 0]),
        x[:2].clone(),
        torch.tensor([0, 1]),
        ["a", "b"],
        train_lengths=lengths,
        test_lengths=lengths[:2].clone(),
        kind="series",
    )


def test_normalize_counts_valid_steps_only_and_keeps_padding_zero():
    cfg = make_cfg(*FAST, "data.normalize=true", "data._target_=test_arrays.padded_series")
    del cfg.data["path"], cfg.data["vocab_size"]  # keys of data=arrays that this loader does not take
    splits = load_data(cfg.data, torch.device("cpu"))
    valid = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0, 2.0])
    assert splits.normalization["mean"] == pytest.approx([valid.mean().item()])
    assert splits.normalization["std"] == pytest.approx([valid.std(correction=0).item()])
    assert splits.train_x[0, 2, 0] == 0 and (splits.train_x[2, 1:] == 0).all() and (splits.test_x[0, 2] == 0).all()
    assert splits.train_x[0, 0, 0] == pytest.approx((1 - valid.mean().item()) / valid.std(correction=0).item())
    cfg.data.val_size = 1  # the held-out sample takes its length along; the statistics skip it
    held = load_data(cfg.data, torch.device("cpu"))
    assert sorted(held.train_lengths.tolist() + held.val_lengths.tolist()) == [1, 2, 3]
    kept = torch.cat([padded_series().train_x[i, :n, 0] for i, n in enumerate([2, 3, 1]) if n != held.val_lengths[0]])
    assert held.normalization["mean"] == pytest.approx([kept.mean().item()])
    assert (held.val_x[0, int(held.val_lengths[0]) :] == 0).all()


def test_constant_features_are_only_centred():
    stats = normalize.fit(torch.tensor([[[3.0, 1.0]], [[3.0, 2.0]]]))
    assert stats["std"][0] == 1.0 and stats["mean"][0] == 3.0
    assert normalize.apply(torch.tensor([[[4.0, 1.5]]]), stats)[0, 0, 0] == 1.0


def test_unknown_data_key_is_one_clear_error(tmp_path):
    cfg = make_cfg(*FAST, f"data.path={tmp_path / 'd.npz'}", "data.pth=x")
    with pytest.raises(BirnnError, match=r"data.pth is not a key of birnn.data.load_arrays \(it takes root, "):
        load_data(cfg.data, torch.device("cpu"))


@pytest.fixture(scope="module")
def normalized_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model trained on raw series with data.normalize=true (a .pt file), and the file."""
    folder = tmp_path_factory.mktemp("normalized")
    path = save(folder / "waves.pt", arrays())
    cfg = make_cfg(*FAST, f"data.path={path}", "data.normalize=true", "trainer.epochs=20", "data.batch_size=20")
    metrics = train(cfg, folder / "run")
    assert metrics["test_accuracy"] >= 0.9
    return folder / "run", path


def test_evaluate_applies_the_stored_statistics(normalized_run, tmp_path):
    run, path = normalized_run
    ckpt = run / "checkpoints" / "last.pt"
    assert restore(ckpt).normalization["mean"][0] == pytest.approx(50, abs=2)
    metrics = json.loads((run / "metrics.json").read_text())
    assert evaluate.evaluate_checkpoint(ckpt, ["device=cpu"])["test_accuracy"] == metrics["test_accuracy"]
    # Other training data in the file: evaluate still standardizes with the checkpoint's statistics.
    shifted = save(tmp_path / "shifted.pt", arrays(x_train=arrays()["x_train"] + 100))
    assert evaluate.evaluate_checkpoint(ckpt, [f"data.path={shifted}"])["test_accuracy"] == metrics["test_accuracy"]


def test_predict_npy_standardizes_raw_samples(normalized_run, tmp_path, capsys):
    run, _ = normalized_run
    ckpt = run / "checkpoints" / "last.pt"
    x, y = waves(40, 1)
    for i in range(6):
        np.save(tmp_path / f"s{i}.npy", x[i].astype(np.float32 if i % 2 else np.float64))
    np.save(tmp_path / "wide.npy", np.zeros((10, 3)))
    np.save(tmp_path / "short.npy", np.zeros((9, 2)))
    np.save(tmp_path / "nan.npy", np.full((10, 2), np.nan))
    (tmp_path / "junk.npy").write_text("not numpy")
    predict.main([str(ckpt), str(tmp_path), "--json"])
    results = {Path(r["file"]).name: r for r in json.loads(capsys.readouterr().out)}
    restored = restore(ckpt)
    with torch.inference_mode():
        logits = restored.model(normalize.apply(torch.tensor(x[:6], dtype=torch.float32), restored.normalization))
    for i in range(6):
        r = results[f"s{i}.npy"]
        assert set(r) == {"file", "prediction", "label", "probability"}
        assert r["prediction"] == logits[i].argmax().item() and r["label"] == ["falling", "rising"][r["prediction"]]
        assert r["probability"] == pytest.approx(logits[i].softmax(0).max().item(), rel=1e-5)
    assert sum(results[f"s{i}.npy"]["prediction"] == y[i] for i in range(6)) >= 5
    assert results["wide.npy"]["error"] == "shape (10, 3): the model takes one sample shaped (10, 2)"
    assert results["short.npy"]["error"] == "shape (9, 2): the model takes one sample shaped (10, 2)"
    assert results["nan.npy"]["error"] == "holds NaN, inf or values beyond float32's range"
    assert results["junk.npy"]["error"].startswith("not a readable .npy array")


def test_export_bakes_the_standardization_in(normalized_run, capsys):
    run, _ = normalized_run
    ckpt = run / "checkpoints" / "last.pt"
    export.main([str(ckpt), "--format", "pt2"])
    assert (
        "as raw values (the training split's per-feature standardization is built into the model)"
        in capsys.readouterr().out
    )
    program = torch.export.load(str(ckpt.parent / "model.pt2")).module()
    raw = torch.tensor(waves(40, 1)[0], dtype=torch.float32)
    restored = restore(ckpt)
    with torch.inference_mode():
        expected = restored.model(normalize.apply(raw, restored.normalization))
    torch.testing.assert_close(program(raw), expected, atol=1e-4, rtol=1e-4)


def test_a_per_step_model_of_fixed_length_arrays_exports_and_predicts(tmp_path, capsys):
    """Labels (N, steps) on float arrays without lengths: export's check of per-step scores wanted lengths
    (IndexError), predict wrote (steps, classes) scores into one row per file (RuntimeError)."""
    rng = np.random.default_rng(0)
    x = rng.random((48, 6, 3), dtype=np.float32)
    y = (x[..., 0] > 0.5).astype(np.int64)  # one label per step
    path = tmp_path / "steps.npz"
    np.savez(path, x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:])
    run = tmp_path / "run"
    train(make_cfg(*FAST, f"data.path={path}", "trainer.max_steps=2"), run)
    ckpt = run / "checkpoints" / "last.pt"
    np.save(tmp_path / "one.npy", x[40])
    export.main([str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert (tmp_path / "m.onnx").is_file()
    capsys.readouterr()
    predict.main([str(ckpt), str(tmp_path / "one.npy"), "--json"])
    (result,) = json.loads(capsys.readouterr().out)
    with torch.inference_mode():
        expected = restore(ckpt).model(torch.from_numpy(x[40:41]))[0].argmax(-1).tolist()
    assert result["tags"] == [str(t) for t in expected] and result["label"] == " ".join(result["tags"])


def test_evaluating_a_per_step_model_on_per_sample_labels_is_one_error(tmp_path):
    """A model trained on labels (N, steps), evaluated on a file with labels (N,): a RuntimeError from the loss."""
    rng = np.random.default_rng(0)
    x = rng.random((48, 6, 3), dtype=np.float32)
    y = (x[..., 0] > 0.5).astype(np.int64)
    np.savez(tmp_path / "steps.npz", x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:])
    np.savez(tmp_path / "whole.npz", x_train=x[:32], y_train=y[:32, 0], x_test=x[32:], y_test=y[32:, 0])
    train(make_cfg(*FAST, f"data.path={tmp_path / 'steps.npz'}", "trainer.max_steps=2"), tmp_path / "run")
    with pytest.raises(BirnnError, match=r"gives per_step False \(the model's: True\): not what the model reads"):
        evaluate.evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", [f"data.path={tmp_path}/whole.npz"])
