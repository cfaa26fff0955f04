"""Using a trained checkpoint: evaluate, predict, export, and the pictures written to TensorBoard.

One small digits model is trained in-process (~98% test accuracy) and shared by every test here.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

import birnn.schema.config  # noqa: F401  (registers the structured-config schemas)
from birnn import evaluate, export, predict
from birnn.data import load_digits
from birnn.data.targets import confusion_matrix, per_class
from birnn.engine.restore import Restored, merge_overrides, restore
from birnn.models.rnn import RNNClassifier
from birnn.train import train
from conftest import FAST, ROOT, make_cfg, wait_for

CONF = Path(__file__).resolve().parents[1] / "conf"
TRAIN = [
    "data=digits",
    "device=cpu",
    "device.num_threads=1",
    "model.hidden_size=64",
    "model.num_layers=1",
    "trainer.epochs=30",
    "optimizer.lr=0.01",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished digits run dir (checkpoint, metrics.json, TensorBoard events)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=TRAIN)
    run_dir = tmp_path_factory.mktemp("run")
    assert train(cfg, run_dir)["test_accuracy"] > 0.95
    return run_dir


@pytest.fixture(scope="module")
def ckpt(run: Path) -> Path:
    return run / "checkpoints" / "last.pt"


def test_evaluate_reproduces_the_runs_test_accuracy(run, ckpt, capsys):
    metrics = json.loads((run / "metrics.json").read_text())
    evaluate.main([str(ckpt), "device=cpu"])
    scores = json.loads((ckpt.parent / "evaluation.json").read_text())
    assert scores["test_accuracy"] == metrics["test_accuracy"]
    assert scores["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)
    out = capsys.readouterr().out
    acc = metrics["test_accuracy"]
    assert f"Test accuracy {acc:.4f} ({100 * acc:.2f}%) on 359 samples" in out
    matrix = np.array(scores["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == scores["test_samples"] == 359
    assert matrix.trace() / matrix.sum() == acc
    assert scores["classes"] == [str(i) for i in range(10)]
    for i, row in enumerate(scores["per_class"]):
        assert row["support"] == matrix[i].sum()
        assert row["recall"] == pytest.approx(matrix[i, i] / matrix[i].sum())
        assert row["precision"] == pytest.approx(matrix[i, i] / matrix[:, i].sum())


def test_evaluate_takes_overrides_and_out(ckpt, tmp_path, capsys):
    out = tmp_path / "e.json"
    evaluate.main([str(ckpt), "device.type=cpu", "data.eval_batch_size=100", "--out", str(out)])
    assert json.loads(out.read_text())["test_samples"] == 359
    assert f"Wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.pt"], "No checkpoint at missing.pt"),
        (["corrupt.pt"], "corrupt.pt is not a readable birnn checkpoint (not a file torch.save wrote)"),
        (["CKPT", "data.nope=1"], "Bad override: data.nope"),
        (
            ["CKPT", "trainer.precison=32"],
            "Bad override: trainer.precison is not a config key. Did you mean trainer.precision?",
        ),
        (["CKPT", "data.eval_batch_size=many"], "data.eval_batch_size"),
        (["CKPT", "device=gpu"], "device.type must be one of"),
        (["CKPT", "device"], "not key=value"),
    ],
)
def test_evaluate_user_errors(ckpt, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([str(ckpt) if a == "CKPT" else a for a in args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_device_override_means_device_type(ckpt):
    stored = torch.load(ckpt, weights_only=True)["config"]
    cfg = merge_overrides(stored, ["device=auto", "trainer.precision=bf16"])
    assert cfg.device.type == "auto" and cfg.trainer.precision == "bf16"
    assert cfg.model.hidden_size == 64


def test_restore_without_a_stored_data_spec_asks_the_loader(ckpt, tmp_path):
    state = torch.load(ckpt, weights_only=True)
    spec = state.pop("data")
    assert len(spec.pop("fingerprint")) == 64  # the digits' content (SHA-256)
    assert spec == {
        "input_shape": [8, 8],
        "features": 8,
        "max_length": 8,
        "classes": [str(i) for i in range(10)],
        "normalization": None,
        "kind": "image",
        "patch": 1,
        "vocab_size": None,
        "tokenizer": None,
        "per_step": False,
        "normalize_series": False,
        "samples": {"train": 1438, "test": 359},
    }
    state.pop("checksum")  # older checkpoints had neither
    torch.save(state, tmp_path / "old.pt")
    restored = restore(tmp_path / "old.pt", unverified=True)
    assert restored.input_shape == (8, 8) and restored.classes == [str(i) for i in range(10)]


def test_per_class_scores_leave_undefined_ones_empty():
    # confusion matrix [[2, 0, 1], [0, 0, 0], [1, 0, 3]]: class b is never true nor predicted
    y, predictions = torch.tensor([0, 0, 0, 2, 2, 2, 2]), torch.tensor([0, 0, 2, 0, 2, 2, 2])
    assert confusion_matrix(y, predictions, 3).tolist() == [[2, 0, 1], [0, 0, 0], [1, 0, 3]]
    rows = per_class(y, predictions, ["a", "b", "c"])
    assert rows[0] == {"class": "a", "precision": 2 / 3, "recall": 2 / 3, "support": 3}
    assert rows[1] == {"class": "b", "precision": None, "recall": None, "support": 0}


def _confident_test_images(ckpt: Path, count: int) -> list[int]:
    """Indices of digits test images the model classifies correctly with probability > 0.9."""
    data, model = load_digits(), restore(ckpt).model
    with torch.inference_mode():
        prob, pred = model(data.test_x).softmax(1).max(1)
    return [int(i) for i in ((pred == data.test_y) & (prob > 0.9)).nonzero()[:count, 0]]


def test_predict_classifies_written_images(ckpt, tmp_path, capsys):
    data = load_digits()
    folder = tmp_path / "scans"
    folder.mkdir()
    expected = {}
    for i in _confident_test_images(ckpt, 4):
        pixels = (data.test_x[i].numpy() * 255).round().astype(np.uint8)
        light_on_dark = Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST)
        dark_on_light = Image.fromarray(255 - pixels).resize((24, 24), Image.Resampling.NEAREST).convert("RGB")
        light_on_dark.save(tmp_path / f"{i}.png")
        dark_on_light.save(folder / f"{i}-scan.png")
        expected[str(tmp_path / f"{i}.png")] = expected[str(folder / f"{i}-scan.png")] = int(data.test_y[i])
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    paths = [*(p for p in expected if Path(p).parent == tmp_path), str(tmp_path / "corrupt.png"), str(folder)]

    predict.main([str(ckpt), *paths, "--json"])  # no SystemExit: exit code 0
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [*paths[:-1], *sorted(p for p in expected if Path(p).parent == folder)]
    corrupt = results[4]
    assert corrupt == {"file": paths[4], "error": "not a readable image (Truncated File Read)"}
    classified = [r for r in results if "error" not in r]
    assert len(classified) == 8
    for r in classified:
        assert set(r) == {"file", "prediction", "label", "probability"}
        assert r["prediction"] == expected[r["file"]] and r["label"] == str(r["prediction"])
        assert 0.9 * 0.95 < r["probability"] <= 1


def test_predict_polarity_and_resize(tmp_path):
    original = load_digits().test_x[0]
    pixels = (original.numpy() * 255).round().astype(np.uint8)
    Image.fromarray(255 - pixels).resize((40, 40), Image.Resampling.NEAREST).save(tmp_path / "scan.png")
    Image.fromarray(pixels).resize((16, 16), Image.Resampling.NEAREST).save(tmp_path / "mnist-like.png")
    as_trained = predict.load_image(tmp_path / "scan.png", (8, 8), "auto")
    assert as_trained.shape == (8, 8)
    torch.testing.assert_close(as_trained, original, atol=1 / 255, rtol=0)
    torch.testing.assert_close(
        predict.load_image(tmp_path / "scan.png", (8, 8), "no"), 1 - original, atol=1 / 255, rtol=0
    )
    torch.testing.assert_close(
        predict.load_image(tmp_path / "mnist-like.png", (8, 8), "auto"), original, atol=1 / 255, rtol=0
    )
    torch.testing.assert_close(
        predict.load_image(tmp_path / "mnist-like.png", (8, 8), "yes"), 1 - original, atol=1 / 255, rtol=0
    )


def test_predict_prints_a_table_and_reports_bad_files_on_stderr(ckpt, tmp_path, capsys):
    i = _confident_test_images(ckpt, 1)[0]
    data = load_digits()
    Image.fromarray((data.test_x[i].numpy() * 255).round().astype(np.uint8)).save(tmp_path / "digit.png")
    (tmp_path / "empty").mkdir()
    predict.main([str(ckpt), str(tmp_path / "digit.png"), str(tmp_path / "empty")])
    out, err = capsys.readouterr()
    header, row = out.splitlines()
    assert header.split() == ["file", "prediction", "probability"]
    assert row.split()[:2] == [str(tmp_path / "digit.png"), str(int(data.test_y[i]))]
    assert err == f"error: {tmp_path / 'empty'}: no .png/.jpg/.jpeg/.npy/.ts files in this folder\n"


def test_predict_table_shows_class_names_not_indices(capsys):
    # a .ts problem's classes are the file's labels, sorted: class index 0 is named "1"
    predict.show(
        [
            {"file": "a.ts", "index": 0, "prediction": 0, "label": "1", "probability": 0.9},
            {"file": "a.ts", "index": 1, "prediction": 8, "label": "9", "probability": 0.5},
        ],
        as_json=False,
    )
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [
        ["file", "prediction", "probability"],
        ["a.ts[0]", "1", "0.9000"],
        ["a.ts[1]", "9", "0.5000"],
    ]


def test_predict_with_no_readable_image_fails(ckpt, tmp_path, capsys):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(SystemExit) as exit_:
        predict.main([str(ckpt), str(tmp_path / "bad.jpg"), str(tmp_path / "absent.png")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "absent.png: No such file or directory" in err
    assert "error: no image could be classified" in err and "Traceback" not in err


def test_tensorboard_has_pictures_and_config(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    confusion = events.Images("test/confusion_matrix")
    assert [e.step for e in confusion] == [h["step"] for h in json.loads((run / "metrics.json").read_text())["history"]]
    assert len(confusion) == epochs
    wrong = events.Images("test/misclassified")
    assert 1 <= len(wrong) <= epochs  # drawn whenever the model got a test image wrong (it does, at ~98%)
    for image in (confusion[-1], wrong[-1]):
        with Image.open(io.BytesIO(image.encoded_image_string)) as png:
            assert png.format == "PNG" and png.size == (image.width, image.height) and png.width > 400
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "hidden_size: 64" in text and "birnn.data.load_digits" in text


def test_onnx_export_matches_pytorch(ckpt, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "digits.onnx"
    export.main([str(ckpt), "--out", str(out)])
    assert f"Wrote {out} (onnx): input images float32 (N, 8, 8)" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["digits.onnx"]  # self-contained: no external data
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(out)).graph.initializer)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model, x = restore(ckpt).model, load_digits().test_x
    for batch in (x, x[:1]):
        logits = session.run(None, {"images": batch.numpy()})[0]
        assert logits.shape == (len(batch), 10)
        with torch.inference_mode():
            assert np.abs(logits - model(batch).numpy()).max() <= 1e-4


def test_pt2_export_of_a_two_layer_model(tmp_path):
    torch.manual_seed(0)
    model = RNNClassifier(8, 10, hidden_size=12, num_layers=2).eval()  # last-step shortcut, lower layers too
    restored = Restored(tmp_path / "last.pt", {}, None, model, (8, 8), [str(i) for i in range(10)])
    out, difference = export.export(restored, "pt2")
    assert out == tmp_path / "model.pt2" and difference <= 1e-4
    loaded = torch.export.load(str(out)).module()
    x = load_digits().test_x[:50]
    with torch.inference_mode():
        assert (loaded(x) - model(x)).abs().max() <= 1e-4


def test_onnx_export_without_the_extra_says_how_to_install_it(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(SystemExit) as exit_:
        export.main([str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert exit_.value.code == 2
    assert "onnxruntime is missing): pip install 'birnn[export]'" in capsys.readouterr().err


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (its ``SigCgt`` mask in /proc)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(mask & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("module, what", [("birnn.evaluate", "the evaluation"), ("birnn.predict", "the prediction")])
def test_sigterm_stops_evaluate_and_predict_with_one_line(tmp_path, module, what):
    """SIGTERM ended birnn-evaluate with exit 143 and not a word; now one line says it stopped (as training does),
    with exit 128 + signal, and no result file is left behind."""
    run_dir = tmp_path / "run"
    train(make_cfg(*FAST, "trainer.max_steps=3", "trainer.epochs=1"), run_dir)
    np.save(tmp_path / "x.npy", np.zeros((8, 8), dtype=np.float32))
    args = ["--out", "e.json"] if module == "birnn.evaluate" else ["x.npy"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, str(run_dir / "checkpoints" / "last.pt"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: proc.poll() is not None or catches_sigterm(proc.pid), timeout=60)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == f"Stopped by SIGTERM: {what} did not finish.", err
    assert "Traceback" not in err and not (tmp_path / "e.json").exists()
