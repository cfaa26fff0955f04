"""``data.patch=k`` (birnn/data/patches.py): k steps read as one in training, checkpoints, evaluate, predict, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from birnn import evaluate, export, predict
from birnn.data import normalize, patches
from birnn.data.pipeline import load_data, load_digits
from birnn.engine.restore import restore
from birnn.schema.config import validate
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import make_cfg, run_cli

FAST = [
    "data=arrays",
    "device=cpu",
    "device.num_threads=1",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.readout=mean",
    "trainer.log_images=false",
    "optimizer.lr=0.01",
]


def test_image_rows_are_a_pixel_series_read_k_at_a_time():
    """The tutorial's trick: an 8x8 digit as a 64-pixel series, read with k = 8, is the image read row by row."""
    images = load_digits().train_x[:5]
    pixels = images.reshape(5, 64, 1)
    assert torch.equal(patches.patch(pixels, 8), images)
    assert patches.patch(pixels, 1) is pixels  # k = 1 is no patching at all


def test_last_patch_is_zero_filled_and_padding_never_leaks():
    x = torch.arange(1.0, 15.0).reshape(1, 7, 2)  # 7 steps, 2 channels
    out = patches.patch(x, 3)
    assert out.shape == (1, 3, 6)  # ceil(7 / 3) steps of 3 x 2 features
    assert out[0, 0].tolist() == [1, 2, 3, 4, 5, 6]  # steps in order, each step's channels together
    assert out[0, 2].tolist() == [13, 14, 0, 0, 0, 0]
    junk = torch.cat([x, torch.full((1, 4, 2), 99.0)], 1)  # padded to 11 steps with junk
    assert torch.equal(patches.patch(junk, 3, torch.tensor([7])), torch.cat([out, torch.zeros(1, 1, 6)], 1))
    assert patches.patch_lengths(torch.tensor([7, 6, 1, 3]), 3).tolist() == [3, 2, 1, 1]


@pytest.mark.parametrize("steps, k", [(24, 1), (64, 1), (65, 8), (150, 12), (784, 28)])
def test_auto_reads_short_series_whole_and_long_ones_in_square_root_patches(steps, k):
    assert patches.auto_size(steps) == k
    assert patches.resolve("auto", torch.zeros(2, steps, 1), None) == k
    lengths = torch.tensor([3, steps])  # variable length: the longest training series decides
    assert patches.resolve("auto", torch.zeros(2, steps + 5, 1), lengths) == k


@pytest.mark.parametrize("value", ["0", "-2", "abc", "1.5"])
def test_bad_patch_values_are_one_clear_error(value):
    with pytest.raises(BirnnError, match="data.patch must be a whole number >= 1 or auto, got "):
        validate(make_cfg("data=digits", f"data.patch={value}"))


def test_a_patch_longer_than_the_longest_training_series_is_refused_in_one_line(tmp_path):
    padded, lengths = torch.zeros(2, 8, 1), torch.tensor([3, 5])
    assert patches.resolve(5, padded, lengths) == 5 and patches.resolve(8, padded, None) == 8
    with pytest.raises(BirnnError, match=r"data.patch=6 is longer than the longest training series \(5 steps\)"):
        patches.resolve(6, padded, lengths)
    (xa, ya), (xb, yb) = waves(40, 0, steps=8), waves(20, 1, steps=8)
    np.savez(tmp_path / "short.npz", x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    args = [*FAST, f"data.path={tmp_path / 'short.npz'}", "data.patch=100", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("error: data.patch=100 is longer than the longest training ")
    assert proc.stderr.count("\n") == 1 and "(8 steps)" in proc.stderr, proc.stderr


def waves(n: int, seed: int, steps: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Series (n, steps, 2) far from [0, 1]; label: does feature 0 rise?"""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    slope = np.where(y == 1, 1.0, -1.0)[:, None] * np.linspace(-1, 1, steps)
    x = np.stack([50 + 10 * slope + rng.normal(0, 2, (n, steps)), rng.normal(-20, 5, (n, steps))], axis=-1)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def patched_run(tmp_path_factory) -> tuple[Path, Path]:
    """A model trained on 10-step series with data.patch=4 (3 steps of 8 features, the last half zeros),
    standardized, and its data file."""
    folder = tmp_path_factory.mktemp("patched")
    (xa, ya), (xb, yb) = waves(120, 0), waves(40, 1)
    path = folder / "waves.npz"
    np.savez(path, x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    cfg = make_cfg(
        *FAST, f"data.path={path}", "data.normalize=true", "data.patch=4", "trainer.epochs=20", "data.batch_size=20"
    )
    metrics = train(cfg, folder / "run")
    assert metrics["test_accuracy"] >= 0.9
    return folder / "run", path


def test_load_data_patches_after_standardizing(patched_run):
    _, path = patched_run
    cfg = make_cfg(*FAST, f"data.path={path}", "data.normalize=true", "data.patch=4")
    splits = load_data(cfg.data, torch.device("cpu"))
    raw = torch.from_numpy(np.load(path)["x_test"])
    assert splits.test_x.shape == (40, 3, 8) and splits.raw_shape == (10, 2) and splits.patch == 4
    standardized = normalize.apply(raw, splits.normalization)
    assert torch.equal(splits.test_x, patches.patch(standardized, 4))
    assert splits.test_x[:, 2, 4:].eq(0).all()  # the zero-filled half of the last patch: the channel means
    assert splits.normalization["mean"][0] == pytest.approx(50, abs=2)  # statistics of the raw channels


def test_checkpoint_records_the_raw_shape_and_k(patched_run):
    run, _ = patched_run
    spec = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["data"]
    assert spec["patch"] == 4 and spec["input_shape"] == [10, 2] and spec["features"] == 2
    assert spec["max_length"] == 10
    restored = restore(run / "checkpoints" / "last.pt")
    assert restored.patch == 4 and restored.input_shape == (10, 2) and restored.model.rnn.input_size == 8


def test_evaluate_applies_the_stored_patch(patched_run):
    run, _ = patched_run
    metrics = json.loads((run / "metrics.json").read_text())
    ckpt = run / "checkpoints" / "last.pt"
    assert evaluate.evaluate_checkpoint(ckpt)["test_accuracy"] == metrics["test_accuracy"]


def test_predict_takes_raw_npy_series(patched_run, tmp_path, capsys):
    run, _ = patched_run
    ckpt = run / "checkpoints" / "last.pt"
    x, y = waves(40, 1)
    for i in range(6):
        np.save(tmp_path / f"s{i}.npy", x[i])
    np.save(tmp_path / "patched.npy", patches.patch(torch.from_numpy(x[:1]), 4)[0].numpy())  # (3, 8): refused
    predict.main([str(ckpt), str(tmp_path), "--json"])
    results = {Path(r["file"]).name: r for r in json.loads(capsys.readouterr().out)}
    restored = restore(ckpt)
    with torch.inference_mode():
        logits = restored.model(patches.patch(normalize.apply(torch.from_numpy(x[:6]), restored.normalization), 4))
    assert [results[f"s{i}.npy"]["prediction"] for i in range(6)] == logits.argmax(1).tolist()
    assert sum(results[f"s{i}.npy"]["prediction"] == y[i] for i in range(6)) >= 5
    assert results["patched.npy"]["error"] == "shape (3, 8): the model takes one sample shaped (10, 2)"


def test_export_builds_the_patching_into_the_graph(patched_run, capsys):
    run, _ = patched_run
    ckpt = run / "checkpoints" / "last.pt"
    export.main([str(ckpt), "--format", "pt2"])
    out = capsys.readouterr().out
    assert "input series float32 (N, 10, 2) as raw values" in out
    assert "read 4 steps at a time inside the model (data.patch), output logits (N, 2)" in out
    program = torch.export.load(str(ckpt.parent / "model.pt2")).module()
    raw = torch.from_numpy(waves(40, 1)[0])
    restored = restore(ckpt)
    with torch.inference_mode():
        expected = restored.model(patches.patch(normalize.apply(raw, restored.normalization), 4))
    torch.testing.assert_close(program(raw), expected, atol=1e-4, rtol=1e-4)


def test_onnx_export_of_a_patched_model_matches_pytorch(patched_run, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    run, _ = patched_run
    restored = restore(run / "checkpoints" / "last.pt")
    out, difference = export.export(restored, "onnx", tmp_path / "m.onnx")
    assert difference <= 1e-4
    raw = waves(40, 1)[0]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = restored.model(patches.patch(normalize.apply(torch.from_numpy(raw), restored.normalization), 4))
    np.testing.assert_allclose(session.run(None, {"images": raw})[0], expected.numpy(), atol=1e-4)
