"""Values around the regression core (issue #36): packs and Parquet/CSV tables with float targets, text with a
numeric label column, and what birnn-predict, birnn-export and the test pictures make of values."""

import json
import math
import re

import numpy as np
import pytest
import torch
from test_packed import edit_manifest, one_error_line, resave

from birnn import evaluate, export
from birnn.data.packed import MANIFEST, PackWriter, load_packed
from birnn.data.tables import pack_tables
from birnn.data.text import load_text
from birnn.schema.errors import BirnnError
from conftest import run_cli


def values_pack(out, y_train, y_test, variable=False):
    """A pack of 6 train and 3 test series (4 steps, 2 features) with float targets ``y_*``."""
    rng = np.random.default_rng(0)
    lengths = {"train": np.array([4, 2, 3, 4, 1, 4]), "test": np.array([2, 4, 3])} if variable else {}
    with PackWriter(out, [], "series", variable=variable, values=True) as pack:
        for split, y in (("train", y_train), ("test", y_test)):
            x = rng.normal(size=(len(y), 4, 2)).astype(np.float32)
            pack.split(split).append(x, y, lengths.get(split))
    return out


@pytest.mark.parametrize(
    ("y_train", "y_test"),
    [
        (np.linspace(-1, 1, 6, dtype=np.float32), np.array([0.5, 2.0, -3.25], np.float32)),  # one value each
        (np.arange(12.0).reshape(6, 2), np.ones((3, 2))),  # two outputs, float64 kept
        (np.where(np.arange(24).reshape(6, 4) % 5, np.arange(24.0).reshape(6, 4), np.nan), np.ones((3, 4))),
    ],
    ids=["per-sequence", "two-outputs", "per-step-with-nan"],
)
def test_a_pack_holds_float_targets_as_written(tmp_path, y_train, y_test):
    pack = values_pack(tmp_path / "p", y_train, y_test)
    manifest = json.loads((pack / MANIFEST).read_text())
    assert manifest["targets"] == "values" and manifest["classes"] == []
    assert manifest["splits"]["train"]["y"]["dtype"] == y_train.dtype.str
    splits = load_packed(path=str(pack))
    assert splits.classes == [] and splits.train_y.dtype == torch.from_numpy(y_train).dtype
    np.testing.assert_array_equal(splits.train_y.numpy(), y_train)  # NaN where NaN, every bit else
    np.testing.assert_array_equal(splits.test_y.numpy(), y_test)


def test_integer_targets_of_a_values_pack_become_float32(tmp_path):
    pack = values_pack(tmp_path / "p", np.arange(6), np.arange(3))
    assert load_packed(path=str(pack)).train_y.dtype == torch.float32


def test_a_class_pack_has_no_targets_key(tmp_path):
    """Class packs are written as before values existed: the previous release reads them, and they read here."""
    with PackWriter(tmp_path / "p", ["a", "b"]) as pack:
        for split in ("train", "test"):
            pack.split(split).append(np.zeros((2, 3, 1), np.float32), np.array([0, 1]))
    assert "targets" not in json.loads((tmp_path / "p" / MANIFEST).read_text())
    assert load_packed(path=str(tmp_path / "p")).train_y.dtype == torch.int64


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (np.array([1.0, np.inf]), "sample 1 has target inf: targets must be finite numbers"),
        (np.array([np.nan, 1.0]), "sample 0 has target nan: targets must be finite numbers (NaN marks a step"),
        (np.array([[1.0, 2.0, 3.0, 4.0], [1.0, -np.inf, 3.0, 4.0]]), "sample 1 step 1 has target -inf"),
        (np.array(["1.5", "2"]), "targets must be real numbers shaped (2,) or (2, d); got <U3 (2,)"),
        (np.zeros((2, 2, 2)), "targets must be real numbers shaped (2,) or (2, d); got float64 (2, 2, 2)"),
    ],
)
def test_the_writer_refuses_targets_it_cannot_score(tmp_path, y, message):
    with pytest.raises(BirnnError, match=re.escape(message)):
        with PackWriter(tmp_path / "p", [], values=True) as pack:
            pack.split("train").append(np.zeros((2, 4, 1), np.float32), y)
    assert not (tmp_path / "p" / MANIFEST).exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: resave(p, "train_y", np.arange(6)), "train_y holds int64 [6]; expected float targets (6,) or"),
        (lambda p: resave(p, "test_y", np.array([1.0, np.nan, 2.0])), "test_y: sample 1 has target nan"),
        (lambda p: edit_manifest(p, targets="counts"), "manifest.json is damaged"),
        (lambda p: edit_manifest(p, targets=None), "manifest.json is damaged"),
    ],
)
def test_a_damaged_values_pack_is_refused_when_opened(tmp_path, edit, message):
    pack = values_pack(tmp_path / "p", np.linspace(0, 1, 6), np.ones(3))
    load_packed(path=str(pack))
    edit(pack)
    with pytest.raises(BirnnError, match=re.escape(message)):
        load_packed(path=str(pack))


def test_a_class_pack_without_classes_stays_damaged(tmp_path):
    pack = values_pack(tmp_path / "p", np.linspace(0, 1, 6), np.ones(3))
    manifest = json.loads((pack / MANIFEST).read_text())
    del manifest["targets"]
    (pack / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BirnnError, match="manifest.json is damaged: it needs classes"):
        load_packed(path=str(pack))


def write_value_tables(folder):
    """CSV files with one column per step and a float label column, and Parquet files with a list column per
    channel, lengths and a float64 label column of whole numbers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    header = "label,s0,s1,s2\n"
    (folder / "train.csv").write_text(header + "".join(f"{i / 4},{i},{i + 0.5},{-i}\n" for i in range(8)))
    (folder / "test.csv").write_text(header + "2.5,1,2,3\n-1e3,0,0,0\n")
    for split, n in (("train", 9), ("test", 4)):
        lengths = np.arange(n) % 3 + 1
        table = pa.table({"a": [[1.0] * k for k in lengths], "label": np.arange(n, dtype=np.float64), "n": lengths})
        pq.write_table(table, folder / f"{split}.parquet", row_group_size=4)


def pack_cli(folder, out, *args):
    return run_cli(
        out, "--train", f"train.{args[0]}", "--test", f"test.{args[0]}", *args[1:], cwd=folder, module="birnn.pack"
    )


def test_a_float_label_column_packs_as_float_targets(tmp_path):
    write_value_tables(tmp_path)
    proc = pack_cli(tmp_path, "csv", "csv")
    assert proc.returncode == 0, proc.stderr
    assert "float targets" in proc.stdout
    splits = load_packed(path=str(tmp_path / "csv"))
    assert splits.train_y.dtype == torch.float64 and splits.train_y.tolist() == [i / 4 for i in range(8)]
    assert splits.test_y.tolist() == [2.5, -1000.0]
    files = {s: tmp_path / f"{s}.parquet" for s in ("train", "test")}
    pack_tables(tmp_path / "pq", files, length="n")  # a float column of whole numbers: values too
    splits = load_packed(path=str(tmp_path / "pq"))
    assert splits.train_y.tolist() == list(range(9)) and splits.train_lengths.tolist() == [1, 2, 3] * 3


def test_task_chooses_classes_or_values_of_a_table(tmp_path):
    write_value_tables(tmp_path)
    (tmp_path / "int.csv").write_text("label,s0\n0,1\n2,3\n")
    files = {"train": tmp_path / "int.csv", "test": tmp_path / "int.csv"}
    pack_tables(tmp_path / "out", files)
    assert load_packed(path=str(tmp_path / "out")).classes == ["0", "1", "2"]
    pack_tables(tmp_path / "out", files, overwrite=True, task="regression")
    assert load_packed(path=str(tmp_path / "out")).train_y.tolist() == [0.0, 2.0]
    line = one_error_line(pack_cli(tmp_path, "refused", "csv", "--task", "classification"))
    assert "column 'label' of train.csv, test.csv holds numbers that are not integer class labels" in line
    assert "--task regression" in line and not (tmp_path / "refused" / MANIFEST).exists()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("nan,1,2,3", "test.csv row 2 column label: target nan is not a finite number"),
        ("inf,1,2,3", "test.csv row 2 column label: target inf is not a finite number"),
        ("abc,1,2,3", "test.csv row 2 column label: 'abc' is not a number"),
    ],
)
def test_a_non_finite_table_target_is_one_line_naming_its_row(tmp_path, row, message):
    write_value_tables(tmp_path)
    (tmp_path / "test.csv").write_text(f"label,s0,s1,s2\n2.5,1,2,3\n{row}\n")
    line = one_error_line(pack_cli(tmp_path, "out", "csv"))
    assert message in line and not (tmp_path / "out" / MANIFEST).exists()


REVIEWS = "text,label\n" + "".join(
    f"{w} movie,{r}\n" for w, r in [("great", 4.5), ("awful", 1), ("fine", 3), ("good", 4), ("bad", 1.5)] * 4
)


def test_a_numeric_text_label_is_a_value_under_regression(tmp_path):
    (tmp_path / "r.csv").write_text(REVIEWS)
    splits = load_text(path=str(tmp_path / "r.csv"), test_fraction=0.25, task="regression")
    assert splits.classes == [] and splits.train_y.dtype == torch.float64
    assert sorted(splits.train_y.tolist() + splits.test_y.tolist()) == sorted([4.5, 1, 3, 4, 1.5] * 4)
    classes = load_text(path=str(tmp_path / "r.csv"), test_fraction=0.25)
    assert classes.classes == ["1", "1.5", "3", "4", "4.5"] and classes.train_y.dtype == torch.int64


@pytest.mark.parametrize("label", ["good", "nan", "inf", ""])
def test_a_text_label_that_is_no_finite_number_is_refused_under_regression(tmp_path, label):
    (tmp_path / "r.csv").write_text(REVIEWS.replace("fine movie,3\n", f"fine movie,{label}\n", 1))
    with pytest.raises(BirnnError, match=re.escape(f"r.csv: sample 3 has label {label!r}, not a finite number")):
        load_text(path=str(tmp_path / "r.csv"), test_fraction=0.25, task="regression")


# ---- through training (the regression core: task=regression) ----

RUN = ["task=regression", "device=cpu", "device.num_threads=1", "model.hidden_size=8", "model.num_layers=1"]
RUN += ["trainer.log_images=false", "data.batch_size=16", "trainer.epochs=2", "trainer.checkpoint_every_n_steps=5"]


def ramps(path, per_step=False, seed=0):
    """Series (n, 6 steps, 2 features) rising with a slope; targets about 1000 + 300 x the slope (far from 0 and 1:
    an uninverted scaling shows), per sequence, or per step with the last step unscored (NaN)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", 48), ("test", 16)):
        slope = rng.uniform(-1, 1, n)
        x = slope[:, None, None] * np.linspace(0, 1, 6)[None, :, None] + rng.normal(0, 0.05, (n, 6, 2))
        y = 1000 + 300 * slope
        if per_step:
            y = y[:, None] + 10 * np.arange(6)[None, :]
            y[:, -1] = np.nan
        splits |= {f"x_{split}": x.astype(np.float32), f"y_{split}": y.astype(np.float32)}
    np.savez(path, **splits)
    return path


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def same_runs(a, b, ra, rb):
    assert a["history"] == b["history"] and a["test_rmse"] == b["test_rmse"] and a["test_r2"] == b["test_r2"]
    ref = weights(rb)
    for name, w in weights(ra).items():
        assert torch.equal(w, ref[name]), name


@pytest.mark.parametrize("per_step", [False, True], ids=["per-sequence", "per-step"])
def test_training_from_a_values_pack_is_bit_identical_to_the_file(tmp_path, per_step):
    from birnn.pack import pack_config
    from birnn.train import train
    from conftest import make_cfg

    data = ["data=arrays", f"data.path={ramps(tmp_path / 'r.npz', per_step)}"]
    task = ["task.per_step=true"] if per_step else []
    pack_config(tmp_path / "pack", [*data, "task=regression", *task], overwrite=False)
    assert json.loads((tmp_path / "pack" / MANIFEST).read_text())["targets"] == "values"
    extra = ["data.val_size=8", "data.normalize=true", *task]
    files = train(make_cfg(*RUN, *data, *extra), tmp_path / "files")
    packed = train(make_cfg(*RUN, "data=packed", f"data.path={tmp_path / 'pack'}", *extra), tmp_path / "packed")
    same_runs(packed, files, tmp_path / "packed", tmp_path / "files")
    scores = evaluate.evaluate_checkpoint(tmp_path / "packed" / "checkpoints" / "last.pt")
    assert scores["test_rmse"] == pytest.approx(packed["test_rmse"], rel=1e-6)


def test_a_values_pack_trained_as_classes_is_one_line(tmp_path):
    pack = values_pack(tmp_path / "p", np.linspace(0, 1, 6), np.ones(3))
    cmd = ["data=packed", f"data.path={pack}", "device=cpu", "trainer.max_steps=1", "hydra.run.dir=run"]
    line = one_error_line(run_cli(*cmd, cwd=tmp_path))
    assert "task=regression" in line


def reviews(path, bad=None):
    rng = np.random.default_rng(0)
    words = {"great": 5, "good": 4, "fine": 3, "dull": 2, "awful": 1}
    rows = []
    for _ in range(80):
        chosen = rng.choice(list(words), 3)
        rows.append(f"{' '.join(chosen)} film,{np.mean([words[w] for w in chosen]):.3f}\n")
    if bad is not None:
        rows[5] = f"some film,{bad}\n"
    path.write_text("text,label\n" + "".join(rows))
    return path


def test_a_text_pack_of_ratings_trains_bit_identically_and_predicts_ratings(tmp_path):
    from birnn.pack import pack_config
    from birnn.train import train
    from conftest import make_cfg

    data = ["data=text", f"data.path={reviews(tmp_path / 'r.csv')}", "data.test_fraction=0.25"]
    pack_config(tmp_path / "pack", [*data, "task=regression"], overwrite=False)
    # train() takes no pack settings (birnn-train applies them): both runs set the data option's model keys
    model = ["model.embedding_dim=8", "model.readout=final", "model.embedding_dropout=0.3", "model.head_dropout=0.3"]
    files = train(make_cfg(*RUN, *model, *data), tmp_path / "files")
    packed = train(make_cfg(*RUN, *model, "data=packed", f"data.path={tmp_path / 'pack'}"), tmp_path / "packed")
    same_runs(packed, files, tmp_path / "packed", tmp_path / "files")
    scores = evaluate.evaluate_checkpoint(tmp_path / "packed" / "checkpoints" / "last.pt")
    assert scores["test_rmse"] == pytest.approx(packed["test_rmse"], rel=1e-6)
    ckpt = str(tmp_path / "packed" / "checkpoints" / "last.pt")
    proc = run_cli(ckpt, "--text", "great great film", "--json", cwd=tmp_path, module="birnn.predict")
    assert proc.returncode == 0, proc.stderr
    (answer,) = json.loads(proc.stdout)
    assert isinstance(answer["value"], float) and answer["probability"] is None


def test_a_text_label_that_is_no_number_stops_training_with_one_line(tmp_path):
    path = reviews(tmp_path / "r.csv", bad="good")
    cmd = ["data=text", f"data.path={path}", "task=regression", "device=cpu", "hydra.run.dir=run"]
    line = one_error_line(run_cli(*cmd, cwd=tmp_path))
    assert "r.csv: sample 6 has label 'good', not a finite number" in line


@pytest.fixture(scope="module", params=[False, True], ids=["per-sequence", "per-step"])
def value_run(request, tmp_path_factory):
    """A tiny regression run on ramps (log_target for the per-sequence one), pictures on; its checkpoint."""
    from birnn.train import train
    from conftest import make_cfg

    folder = tmp_path_factory.mktemp("values")
    data = ["data=arrays", f"data.path={ramps(folder / 'r.npz', request.param)}", "trainer.log_images=true"]
    task = ["task.per_step=true"] if request.param else ["task.log_target=true"]
    train(make_cfg(*RUN, *data, *task, "data.val_size=8"), folder / "run")
    return folder / "run", request.param


def in_units(restored, x):
    """What the checkpoint's model predicts for ``x``, in the target's units, computed here from the stored scaling."""
    values = restored.spec["values"]
    with torch.inference_mode():
        z = restored.model(x).float()
    z = z[..., 0] if values["per_step"] or z.shape[-1] == 1 else z
    v = z * torch.tensor(values["std"]) + torch.tensor(values["mean"])
    return torch.expm1(v) if values["log"] else v


def test_predict_prints_values_in_the_targets_units(value_run, tmp_path):
    from birnn.engine.restore import restore

    run, per_step = value_run
    ckpt = run / "checkpoints" / "last.pt"
    x = np.load(run.parent / "r.npz")["x_test"][:2]
    for i in range(2):
        np.save(tmp_path / f"s{i}.npy", x[i])
    files = [str(tmp_path / f"s{i}.npy") for i in range(2)]
    expected = in_units(restore(ckpt), torch.from_numpy(x))
    proc = run_cli(str(ckpt), *files, "--json", cwd=tmp_path, module="birnn.predict")
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout)
    got = torch.tensor([a["value"] for a in answers])
    assert got.shape == ((2, 6) if per_step else (2,))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)
    assert 300 < float(got.abs().mean()) < 3000  # the target's units, not the standardized ones
    proc = run_cli(str(ckpt), *files, cwd=tmp_path, module="birnn.predict")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["file", "prediction", "probability"] and len(rows) == 2
    shown = [float(v) for v in rows[0].split()[1:-1]]
    assert shown == pytest.approx(answers[0]["value"] if per_step else [answers[0]["value"]], rel=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_export_outputs_values_in_the_targets_units(value_run, tmp_path, fmt, capsys):
    from birnn.engine.restore import restore

    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    run, per_step = value_run
    ckpt = run / "checkpoints" / "last.pt"
    out = tmp_path / f"m.{fmt}"
    export.main([str(ckpt), "--format", fmt, "--out", str(out)])
    printed = capsys.readouterr().out
    assert "output values" in printed and "max |values - PyTorch values|" in printed
    x = torch.from_numpy(np.load(run.parent / "r.npz")["x_test"])
    expected = in_units(restore(ckpt), x)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["values"]
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    else:
        with torch.inference_mode():
            got = torch.export.load(str(out)).module()(x)
    assert got.shape == expected.shape and 300 < float(got.abs().mean()) < 3000
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-2)


def test_tensorboard_draws_predicted_against_true_and_the_worst_series(value_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = value_run
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    steps = [h["step"] for h in json.loads((run / "metrics.json").read_text())["history"]]
    for tag in ("test/predicted_vs_true", "test/worst_predicted"):
        assert [e.step for e in events.Images(tag)] == steps, tag
    assert "test/confusion_matrix" not in events.Tags()["images"]
    assert {"val/rmse", "val/mae", "val/r2", "test/rmse"} <= set(events.Tags()["scalars"])


def test_the_worst_predicted_series_come_first_captioned_in_the_targets_units():
    from birnn.data.targets import Values
    from birnn.records.scores import EvalResult
    from birnn.records.tracking import pictures

    x, y = torch.zeros(4, 5, 2), torch.tensor([1.0, 10.0, 5.0, 2.0])
    result = EvalResult(0.1, 0.0, torch.tensor([1.5, 0.0, 5.0, 4.0]), {"test_loss": 0.1}, Values(["price"]))
    figures = pictures("test", result, x, y, [], kind="series", lengths=torch.tensor([5, 3, 2, 4]))
    assert set(figures) == {"test/predicted_vs_true", "test/worst_predicted"}
    worst = figures["test/worst_predicted"]
    visible = [ax for ax in worst.axes if ax.axison]
    assert [ax.get_title() for ax in visible] == [
        "true 10 \u2192 predicted 0",
        "true 2 \u2192 predicted 4",
        "true 1 \u2192 predicted 1.5",
        "true 5 \u2192 predicted 5",
    ]
    assert [len(ax.lines[0].get_xdata()) for ax in visible] == [3, 4, 5, 2]  # each cut to its length
    (scatter,) = figures["test/predicted_vs_true"].axes
    assert scatter.get_xlabel() == "true price" and len(scatter.collections[0].get_offsets()) == 4

    per_step = Values(["v"], per_step=True)
    y = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 4.0, 4.0]])
    result = EvalResult(0.1, 0.0, torch.tensor([[1.0, 2.0, 9.0], [0.0, 4.0, 5.0]]), None, per_step)
    figures = pictures("test", result, torch.zeros(2, 3, 1), y, [], kind="series")
    titles = [ax.get_title() for ax in figures["test/worst_predicted"].axes if ax.axison]
    assert titles == ["true mean 4 \u2192 predicted 3, MAE 1.67", "true mean 1.5 \u2192 predicted 1.5, MAE 0"]
    (scatter,) = figures["test/predicted_vs_true"].axes
    assert len(scatter.collections[0].get_offsets()) == 5  # the scored steps only


def test_a_test_split_without_a_scored_target_is_one_line(tmp_path):
    """Per-step targets all NaN in the test split: nothing to score there; a ZeroDivisionError traceback from the
    run's evaluation before."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 6, 2)).astype("float32")
    np.savez(
        tmp_path / "s.npz", x_train=x, y_train=rng.normal(size=(20, 6)), x_test=x[:4], y_test=np.full((4, 6), np.nan)
    )
    done = run_cli("task=regression", "task.per_step=true", "data=arrays", f"data.path={tmp_path / 's.npz'}",
                   "trainer.max_steps=2", "device=cpu", "device.num_threads=1", "model.hidden_size=8", "tracker=none",
                   f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "(test split) holds no scored target" in done.stderr


def test_outputs_named_twice_are_one_error(tmp_path):
    """``classes`` names the outputs; per-output scores are keyed by name (test_rmse_<name>): a name given twice lost
    one output's figures without a word."""
    from birnn.data.pipeline import load_data
    from conftest import make_cfg

    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 4, 2)).astype("float32")
    y = rng.normal(size=(10, 3))
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y, classes=np.array(["a", "a", "b"]))
    cfg = make_cfg("task=regression", "data=arrays", f"data.path={tmp_path / 'd.npz'}")
    with pytest.raises(BirnnError, match="names output 'a' twice"):
        load_data(cfg.data, torch.device("cpu"), task={"name": "regression"})


def write_step_tables(folder, bad_row=None):
    """Parquet files of series (two list columns) with one target per step (a list label column) and lengths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        lengths = rng.integers(2, 6, n)
        y = [(1000 + 10 * np.arange(k)).tolist() for k in lengths]
        y[1][0] = float("nan")  # not scored
        if bad_row is not None and split == "train":
            y[bad_row] = y[bad_row][:-1]
        table = pa.table(
            {
                "a": [np.linspace(0, 1, k).tolist() for k in lengths],
                "b": [rng.normal(size=k).tolist() for k in lengths],
                "target": y,
                "n": lengths,
            }
        )
        pq.write_table(table, folder / f"{split}.parquet", row_group_size=5)


def test_a_list_label_column_packs_one_target_per_step(tmp_path, monkeypatch):
    from birnn.data import tables
    from birnn.train import train
    from conftest import make_cfg

    write_step_tables(tmp_path)
    monkeypatch.setattr(tables, "BLOCK_ROWS", 5)  # several blocks per file
    files = {s: tmp_path / f"{s}.parquet" for s in ("train", "test")}
    tables.pack_tables(tmp_path / "pack", files, label="target", length="n")
    splits = load_packed(path=str(tmp_path / "pack"))
    lengths, y = splits.train_lengths, splits.train_y
    assert y.shape == (24, 5) and y.dtype == torch.float64
    beyond = torch.arange(5) >= lengths.unsqueeze(1)
    assert y[beyond].isnan().all() and y[1, 0].isnan()
    within = ~beyond
    within[1, 0] = False
    assert torch.equal(y[within], (1000 + 10 * torch.arange(5).expand(24, 5))[within].double())
    metrics = train(
        make_cfg(*RUN, "data=packed", f"data.path={tmp_path / 'pack'}", "task.per_step=true", "trainer.max_steps=2"),
        tmp_path / "run",
    )
    assert math.isfinite(metrics["test_rmse"])


def test_a_ragged_list_label_names_its_row(tmp_path):
    write_step_tables(tmp_path, bad_row=3)
    cmd = ["out", "--train", "train.parquet", "--test", "test.parquet", "--label", "target", "--length", "n"]
    line = one_error_line(run_cli(*cmd, cwd=tmp_path, module="birnn.pack"))
    assert re.search(r"train.parquet row 4 column target: \d values; expected \d \(its length column\)", line)


def test_packing_a_non_finite_target_is_one_line(tmp_path):
    path = ramps(tmp_path / "r.npz")
    arrays = dict(np.load(path))
    arrays["y_train"][3] = np.inf
    np.savez(path, **arrays)
    cmd = ["out", "data=arrays", f"data.path={path}", "task=regression"]
    line = one_error_line(run_cli(*cmd, cwd=tmp_path, module="birnn.pack"))
    assert "train chunk at sample 0: sample 3 has target inf: targets must be finite numbers" in line
    assert not (tmp_path / "out" / MANIFEST).exists()


@pytest.mark.parametrize(
    ("kind", "shape"),
    [
        ({"names": ["a", "b"], "mean": [1.0, 2.0], "std": [10.0, 20.0]}, (3, 2)),
        ({"names": ["v"], "mean": [0.5], "std": [2.0], "log": True}, (3,)),
        ({"names": ["v"], "per_step": True, "mean": [5.0], "std": [3.0]}, (3, 4)),
    ],
    ids=["two-outputs", "log-target", "per-step"],
)
def test_the_exported_graph_inverts_the_scaling_as_predict_does(kind, shape):
    from birnn.data.targets import Values

    class Head(torch.nn.Module):  # outputs (N, d), or per step (N, steps, 1)
        def forward(self, x, lengths=None):
            return x if kind.get("per_step") else x.mean(1)[:, : len(kind["names"])]

    values, model = Values(**kind), Head()
    x = torch.randn(3, 4, 2) if not kind.get("per_step") else torch.randn(3, 4, 1)
    graph = values.graph(model)
    assert graph(x).shape == shape
    torch.testing.assert_close(graph(x), values.predict(model, model(x), None))
    answers = values.answers(model, model(x))
    torch.testing.assert_close(torch.tensor([a["value"] for a in answers]), graph(x))
