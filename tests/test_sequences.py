"""UCR/UEA ``.ts`` problems (``data=uea``): the reader, padding and lengths, missing values, bad files,
predict on ``.ts`` files, and the misclassified-series picture. Every problem is a tiny ``.ts`` written here."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("aeon", reason="data=uea needs the timeseries extra")

from birnn import evaluate, predict
from birnn.data import uea
from birnn.data.pipeline import load_data
from birnn.data.uea import bundled_problems, load_uea, read_ts
from birnn.records.figures import misclassified_series_figure
from birnn.records.scores import EvalResult
from birnn.records.tracking import TensorBoard
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import make_cfg, run_cli

Series = list[list[float | None]]  # channels x steps; None = a missing value ("?")


def write_ts(path: Path, series: list[Series], labels: list[str]) -> Path:
    """A ``.ts`` file in the archive's format: header, then one line per series (channels ``:``-separated)."""
    channels, lengths = len(series[0]), {len(s[0]) for s in series}
    missing = any(v is None for s in series for ch in s for v in ch)
    header = [
        "# written by tests/test_sequences.py",
        "@problemName Tiny",
        "@timeStamps false",
        f"@missing {str(missing).lower()}",
        f"@univariate {str(channels == 1).lower()}",
        f"@dimensions {channels}",
        f"@equalLength {str(len(lengths) == 1).lower()}",
        *([f"@seriesLength {lengths.pop()}"] if len(lengths) == 1 else []),
        f"@classLabel true {' '.join(sorted(set(labels)))}",
        "@data",
    ]
    rows = [
        ":".join(",".join("?" if v is None else f"{v:g}" for v in ch) for ch in s) + f":{label}"
        for s, label in zip(series, labels)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header + rows) + "\n")
    return path


def ramps(n: int, length: int | list[int], seed: int) -> tuple[list[Series], list[str]]:
    """Two-channel series labelled ``up`` when they rise, ``down`` when they fall (learnable, noisy)."""
    rng = np.random.default_rng(seed)
    series, labels = [], []
    for i in range(n):
        steps = length if isinstance(length, int) else length[i % len(length)]
        sign = 1 if i % 2 == 0 else -1
        t = np.linspace(0, 1, steps)
        series.append(
            [
                list(np.round(sign * t + 0.1 * rng.standard_normal(steps), 3)),
                list(np.round(rng.standard_normal(steps), 3)),
            ]
        )
        labels.append("Up" if sign > 0 else "Down")
    return series, labels


def problem(root: Path, name: str, train: tuple, test: tuple) -> Path:
    write_ts(root / name / f"{name}_TRAIN.ts", *train)
    write_ts(root / name / f"{name}_TEST.ts", *test)
    return root


def test_reader_equal_length_multivariate_string_labels(tmp_path):
    series, labels = ramps(4, 5, seed=0)
    x, y = read_ts(write_ts(tmp_path / "a.ts", series, labels))
    assert [s.shape for s in x] == [(5, 2)] * 4 and all(s.dtype == np.float32 for s in x)
    np.testing.assert_allclose(x[1][:, 0], series[1][0], rtol=1e-6)  # steps along axis 0, channels along 1
    assert y.tolist() == ["up", "down", "up", "down"]  # aeon's reader lower-cases labels


def test_reader_unequal_length_and_missing_values(tmp_path):
    series = [[[1, 2, None]], [[4, None, 6, 7, 8]], [[9]]]
    x, y = read_ts(write_ts(tmp_path / "b.ts", series, ["1", "2", "1"]))
    assert [s.shape for s in x] == [(3, 1), (5, 1), (1, 1)]
    assert np.isnan(x[0][2, 0]) and np.isnan(x[1][1, 0])
    assert [int(np.isnan(s).sum()) for s in x] == [1, 1, 0]
    assert y.tolist() == ["1", "2", "1"]


def test_load_uea_pads_with_lengths_fills_missing_values_and_sorts_classes(tmp_path):
    train = ([[[1, 2, 3], [0, 0, 0]], [[5, None], [1, 1]], [[7, 8, 9, 10], [2, None, 2, 2]]], ["10", "2", "10"])
    test = ([[[None, 1], [3, 3]], [[2, 2, 2, 2, 2], [4, 4, 4, 4, 4]]], ["2", "10"])
    splits = load_uea(str(problem(tmp_path, "Mixed", train, test)), name="Mixed")
    assert splits.kind == "series" and splits.classes == ["2", "10"]  # numbers in numeric order
    assert splits.train_x.dtype == torch.float32 and splits.train_x.shape == (3, 5, 2)  # the longest of both
    assert splits.test_x.shape == (2, 5, 2)
    assert splits.train_lengths.tolist() == [3, 2, 4] and splits.test_lengths.tolist() == [2, 5]
    assert splits.train_lengths.dtype == torch.int64
    assert splits.train_y.tolist() == [1, 0, 1] and splits.test_y.tolist() == [0, 1]
    mean0 = np.mean([1, 2, 3, 5, 7, 8, 9, 10])  # channel 0's observed training values (padding excluded)
    mean1 = np.mean([0, 0, 0, 1, 1, 2, 2, 2])
    assert splits.train_x[1, 1, 0] == pytest.approx(mean0) and splits.train_x[2, 1, 1] == pytest.approx(mean1)
    assert splits.test_x[0, 0, 0] == pytest.approx(mean0)  # test gaps get the training means too
    assert splits.train_x[1, 2:].eq(0).all() and splits.test_x[0, 2:].eq(0).all()  # zero padding
    assert not splits.train_x.isnan().any() and not splits.test_x.isnan().any()


def test_equal_lengths_give_no_lengths(tmp_path):
    root = problem(tmp_path, "Even", ramps(6, 7, seed=0), ramps(4, 7, seed=1))
    splits = load_uea(str(root), name="Even")
    assert splits.train_lengths is None and splits.test_lengths is None
    assert splits.train_x.shape == (6, 7, 2) and splits.classes == ["down", "up"]


def test_data_uea_config_composes_and_loads(tmp_path):
    root = problem(tmp_path, "Tiny", ramps(8, [4, 6], seed=0), ramps(4, [5, 6], seed=1))
    cfg = make_cfg("data=uea", "data.name=Tiny", f"data.root={root}")
    assert cfg.data.normalize is True and cfg.data.batch_size == 32 and cfg.data.download is False
    splits = load_data(cfg.data, torch.device("cpu"))
    assert splits.train_x.shape == (8, 6, 2) and splits.test_lengths.tolist() == [5, 6, 5, 6]
    typo = make_cfg("data=uea", "data.nam=Tiny", f"data.root={root}")  # refused before anything loads
    with pytest.raises(BirnnError, match="data.nam is not a key of birnn.data.load_uea"):
        load_data(typo.data, torch.device("cpu"))


def test_bundled_problems_need_no_root():
    assert {"JapaneseVowels", "BasicMotions", "GunPoint"} <= set(bundled_problems())
    cfg = make_cfg("data=uea", "data.name=BasicMotions")
    assert cfg.data.root is None
    splits = load_data(cfg.data, torch.device("cpu"))
    assert splits.train_x.shape == (40, 100, 6) and splits.train_lengths is None
    assert splits.classes == ["badminton", "running", "standing", "walking"]


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "unknown_bundled",
            r"'Nope' not found in the problems bundled with aeon: looked for .*Nope_TRAIN.ts and "
            r".*Nope_TEST.ts\. Bundled: .*JapaneseVowels",
        ),
        (
            "unknown_root",
            r"'Nope' not found in data.root=.*: looked for .*/Nope/Nope_TRAIN.ts and .*/Nope/Nope_TEST.ts",
        ),
        ("no_name", r"data=uea needs a problem: data.name=NAME \(bundled: .*BasicMotions"),
        ("download", r"data.download=true: birnn does not download archive problems; download the archive from "),
        ("malformed", r"Bad_TRAIN.ts is not a readable .ts file: Inconsistent number of dimensions in case 2"),
        ("not_a_number", r"Bad_TRAIN.ts is not a readable .ts file: could not convert string to float: 'abc'"),
        ("unseen_label", r"Bad_TEST.ts has labels never seen in training: sideways \(training classes: down, up\)"),
    ],
)
def test_bad_inputs_are_one_clear_line(tmp_path, case, message):
    root, name = str(tmp_path), "Bad"
    train, test = ramps(4, 5, seed=0), ramps(2, 5, seed=1)
    problem(tmp_path, name, train, (test[0], ["up", "sideways"]) if case == "unseen_label" else test)
    if case in ("malformed", "not_a_number"):
        path = tmp_path / name / f"{name}_TRAIN.ts"
        lines = path.read_text().splitlines()
        lines[-3] = lines[-3].split(":", 1)[1] if case == "malformed" else lines[-3].replace(",", ",abc,", 1)
        path.write_text("\n".join(lines) + "\n")
    kwargs = {
        "unknown_bundled": {"name": "Nope"},
        "unknown_root": {"root": root, "name": "Nope"},
        "no_name": {},
        "download": {"name": "BasicMotions", "download": True},
    }.get(case, {"root": root, "name": name})
    with pytest.raises(BirnnError, match=message) as error:
        load_uea(**kwargs)
    assert "\n" not in str(error.value)


def test_the_cli_reports_a_missing_problem_in_one_line(tmp_path):
    result = run_cli("data=uea", "data.name=Nope", f"data.root={tmp_path}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"looked for {tmp_path}/Nope/Nope_TRAIN.ts" in result.stderr


def test_predict_reads_ts_files(tmp_path, capsys):
    root = problem(tmp_path, "Tiny", ramps(40, 8, seed=0), ramps(20, 8, seed=1))
    cfg = make_cfg(
        "data=uea",
        "data.name=Tiny",
        f"data.root={root}",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=16",
        "model.num_layers=1",
        "model.readout=mean",
        "trainer.epochs=15",
        "trainer.log_images=false",
        "data.batch_size=8",
        "optimizer.lr=0.01",
    )
    metrics = train(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    spec = torch.load(ckpt, weights_only=True)["data"]
    assert spec["kind"] == "series" and spec["features"] == 2 and spec["classes"] == ["down", "up"]
    test_file = root / "Tiny" / "Tiny_TEST.ts"
    gaps = write_ts(tmp_path / "gaps.ts", [[[1.0, None, 2.0, 3.0, 1, 1, 1, 1], [0] * 8]], ["up"])
    results = predict.predict(ckpt, [test_file, tmp_path / "absent.ts", gaps])
    records = [r for r in results if r["file"] == str(test_file)]
    assert [r["index"] for r in records] == list(range(20))
    truth = ["up" if i % 2 == 0 else "down" for i in range(20)]
    accuracy = np.mean([r["label"] == t for r, t in zip(records, truth)])
    assert accuracy == pytest.approx(metrics["test_accuracy"])  # the same model on the same series
    errors = {Path(r["file"]).name: r["error"] for r in results if "error" in r}
    assert "No such file or directory" in errors["absent.ts"]
    if spec["normalization"] is None:  # trained without standardization: no training means to fill with
        assert "series 0 has missing values" in errors["gaps.ts"]
    else:
        assert "gaps.ts" not in errors
    predict.show(results, as_json=False)
    out = capsys.readouterr().out
    assert f"{test_file}[19]" in out


def test_patched_variable_length_model_predicts_and_evaluates_raw_ts_series(tmp_path):
    """data.patch=3 on series of 5-9 steps: predict on the raw .ts file and evaluate both give the run's accuracy."""
    root = problem(tmp_path, "Tiny", ramps(40, [5, 7, 9], seed=0), ramps(21, [6, 8, 9], seed=1))
    cfg = make_cfg(
        "data=uea",
        "data.name=Tiny",
        f"data.root={root}",
        "data.patch=3",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=16",
        "model.num_layers=1",
        "model.readout=mean",
        "trainer.epochs=15",
        "trainer.log_images=false",
        "data.batch_size=8",
        "optimizer.lr=0.01",
    )
    metrics = train(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    spec = torch.load(ckpt, weights_only=True)["data"]
    assert spec["patch"] == 3 and spec["features"] == 2 and spec["max_length"] is None
    assert evaluate.evaluate_checkpoint(ckpt)["test_accuracy"] == metrics["test_accuracy"]
    records = predict.predict(ckpt, [root / "Tiny" / "Tiny_TEST.ts"])
    truth = ["up" if i % 2 == 0 else "down" for i in range(21)]
    assert np.mean([r["label"] == t for r, t in zip(records, truth)]) == pytest.approx(metrics["test_accuracy"])


def test_misclassified_series_picture(tmp_path):
    series = [np.random.default_rng(i).standard_normal((n, 3)).astype(np.float32) for i, n in enumerate((5, 9, 7, 4))]
    figure = misclassified_series_figure(series, ["a", "b", "a", "c"], ["b", "a", "c", "a"], total=10)
    visible = [ax for ax in figure.axes if ax.axison]
    assert len(visible) == 4 and len(figure.axes) == 6  # a 2 x 3 grid, two empty panels hidden
    assert [ax.get_title() for ax in visible] == [
        "true a \u2192 predicted b",
        "true b \u2192 predicted a",
        "true a \u2192 predicted c",
        "true c \u2192 predicted a",
    ]
    assert [len(ax.lines) for ax in visible] == [3] * 4  # one line per channel
    assert [len(ax.lines[0].get_xdata()) for ax in visible] == [5, 9, 7, 4]

    # through the tracker: padded series are cut to their lengths, drawn as a TensorBoard image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x = torch.zeros(3, 9, 3)
    y, pred = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])
    tracker = TensorBoard(tmp_path, images=True)
    tracker.evaluation(
        7,
        "test",
        EvalResult(loss=0.5, accuracy=2 / 3, predictions=pred),
        x,
        y,
        ["p", "q"],
        kind="series",
        lengths=torch.tensor([9, 4, 6]),
    )
    tracker.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    [image] = events.Images("test/misclassified")
    with Image.open(io.BytesIO(image.encoded_image_string)) as png:
        assert png.format == "PNG" and image.step == 7 and png.width > 100 and math.isclose(png.width, 260, abs_tol=20)


def test_a_ts_file_that_is_a_fifo_is_one_error_line_not_a_wait(tmp_path):
    """A ``.ts`` file follows birnn's rule for files it reads: a FIFO was reported as missing (and a FIFO passed to
    the reader blocked it); now it says what it is, from the command as from the reader."""
    root = problem(tmp_path, "Piped", ramps(4, 5, seed=0), ramps(2, 5, seed=1))
    fifo = root / "Piped" / "Piped_TRAIN.ts"
    fifo.unlink()
    os.mkfifo(fifo)
    result = run_cli("data=uea", "data.name=Piped", f"data.root={root}", "device=cpu", cwd=tmp_path, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1] == f"error: {fifo}: a FIFO, not a regular file", result.stderr
    with pytest.raises(BirnnError, match="Piped_TRAIN.ts: a FIFO, not a regular file"):
        read_ts(fifo)


def test_a_ts_file_beyond_the_size_bound_is_refused(tmp_path, monkeypatch):
    """No bound held for ``.ts`` files (a link to a huge file was read whole); ``MAX_DATA_BYTES`` now applies."""
    path = write_ts(tmp_path / "big.ts", *ramps(4, 5, seed=0))
    monkeypatch.setattr(uea, "MAX_DATA_BYTES", 100)
    with pytest.raises(BirnnError, match=r"big\.ts: \d+ bytes, more than the 100 birnn reads from such a file"):
        read_ts(path)
