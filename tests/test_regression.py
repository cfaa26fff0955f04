"""task=regression (issue #36): values per sequence, several per sequence and per step; scaling stored in the checkpoint
and inverted for every score; the uea and arrays sources; which way a score is better."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import test_arrays
import torch

from birnn import evaluate
from birnn.data.pipeline import load_data
from birnn.data.targets import Values, fit_values
from birnn.engine.restore import restore
from birnn.schema.errors import BirnnError
from birnn.schema.metrics import better, direction, judged_by
from birnn.train import train
from conftest import make_cfg, run_cli

FAST = ["task=regression", *test_arrays.FAST, "data.batch_size=20"]  # the arrays tests' small model, as values


def ramps(n: int, seed: int, outputs: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Series (n, 10 steps, 1 feature) rising with a slope; target: 1000 + 300 x the slope (far from 0 and 1, so an
    unstandardized or uninverted score shows), ``(n,)``, or ``(n, outputs)`` (the k-th: k + 1 times it)."""
    rng = np.random.default_rng(seed)
    slope = rng.uniform(-1, 1, n)
    x = slope[:, None, None] * np.linspace(0, 1, 10)[None, :, None] + rng.normal(0, 0.05, (n, 10, 1))
    y = 1000 + 300 * slope
    if outputs:
        y = np.stack([(k + 1) * y for k in range(outputs)], axis=1)
    return x.astype(np.float32), y


def write(path: Path, outputs: int = 0, **changes) -> Path:
    (xa, ya), (xb, yb) = ramps(100, 0, outputs), ramps(40, 1, outputs)
    np.savez(path, **{"x_train": xa, "y_train": ya, "x_test": xb, "y_test": yb, **changes})
    return path


@pytest.fixture(scope="module")
def value_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model trained on values (a held-out validation split: best.pt by val_rmse), and its file."""
    folder = tmp_path_factory.mktemp("values")
    path = write(folder / "ramps.npz")
    cfg = make_cfg(*FAST, f"data.path={path}", "trainer.epochs=15", "data.val_size=20")
    train(cfg, folder / "run")
    return folder / "run", path


def test_regression_scores_are_in_the_targets_units_and_beat_the_mean(value_run):
    run, _ = value_run
    m = json.loads((run / "metrics.json").read_text())
    assert {"test_rmse", "test_mae", "test_r2", "val_rmse", "best_val_rmse", "test_baseline_rmse"} <= set(m)
    assert "test_accuracy" not in m and m["monitor"] == "val_rmse"
    # the mean predictor's RMSE is the test targets' spread about the training mean: 300 x a uniform slope (~170)
    assert 120 < m["test_baseline_rmse"] < 220 and 120 < m["test_median_rmse"] < 230
    assert m["test_rmse"] < m["test_baseline_rmse"] / 2 and m["test_r2"] > 0.7
    assert m["best_val_rmse"] == min(h["val_rmse"] for h in m["history"])  # lower is better
    assert (run / "checkpoints" / "best.pt").is_file()


def test_the_checkpoint_stores_the_training_scaling_and_evaluate_inverts_it(value_run):
    run, path = value_run
    ckpt = run / "checkpoints" / "last.pt"
    values = restore(ckpt).spec["values"]
    train_y = load_data(make_cfg(*FAST, f"data.path={path}", "data.val_size=20").data, torch.device("cpu"),
                        task={"name": "regression"}).train_y  # fmt: skip
    assert values["mean"][0] == pytest.approx(train_y.double().mean().item(), rel=1e-6)
    assert values["std"][0] == pytest.approx(train_y.double().std(unbiased=False).item(), rel=1e-5)
    assert values["loss"] == "mse" and values["log"] is False and values["per_step"] is False
    m = json.loads((run / "metrics.json").read_text())
    scores = evaluate.evaluate_checkpoint(ckpt, ["device=cpu"])
    assert scores["test_rmse"] == pytest.approx(m["test_rmse"], rel=1e-9)
    assert scores["test_r2"] == pytest.approx(m["test_r2"], rel=1e-9)
    assert "Test RMSE" in evaluate.as_text(scores)


def test_a_crafted_scaling_in_a_checkpoint_is_one_error(value_run, tmp_path):
    from birnn.engine import checkpoint

    run, _ = value_run
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    state["data"]["values"]["std"] = [0.0]
    bad = tmp_path / "bad.pt"
    checkpoint.save(state, tmp_path, "bad.pt")
    with pytest.raises(BirnnError, match="data.values.std"):
        checkpoint.load(bad)


def test_several_outputs_are_averaged_with_each_beside(tmp_path):
    path = write(tmp_path / "two.npz", outputs=2)
    m = train(make_cfg(*FAST, f"data.path={path}", "trainer.max_steps=3"), tmp_path / "run")
    assert {"test_rmse_value0", "test_rmse_value1", "test_r2_value1"} <= set(m)
    assert m["test_rmse"] == pytest.approx((m["test_rmse_value0"] + m["test_rmse_value1"]) / 2)
    assert len(restore(tmp_path / "run" / "checkpoints" / "last.pt").spec["values"]["mean"]) == 2


def test_per_step_values_leave_nan_unscored():
    y = torch.tensor([[1.0, math.nan, 3.0], [2.0, 4.0, math.nan]])
    kind = fit_values(["value"], True, {}, y)
    assert kind.mean.item() == pytest.approx(2.5)  # over the scored steps only
    assert kind.count(y) == 4
    outputs = torch.zeros(2, 3, 1)  # the standardized mean everywhere: predicts 2.5
    assert kind.loss_sum(torch.nn.Identity(), outputs, y, None).isfinite()
    scores = kind.scores(y, kind.predict(torch.nn.Identity(), outputs, None), "val_rmse")
    assert scores["rmse"] == pytest.approx(math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 4))


def test_per_step_regression_trains_on_arrays(tmp_path):
    (xa, _), (xb, _) = ramps(60, 0), ramps(20, 1)
    ya, yb = xa[..., 0] * 100, xb[..., 0] * 100
    ya[:, 0] = np.nan  # not scored
    np.savez(tmp_path / "steps.npz", x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    m = train(make_cfg(*FAST, f"data.path={tmp_path / 'steps.npz'}", "task.per_step=true", "trainer.max_steps=2"),
              tmp_path / "run")  # fmt: skip
    assert math.isfinite(m["test_rmse"]) and math.isfinite(m["train_seconds"])


def test_log_target_fits_log1p_and_inverts_it():
    y = torch.tensor([0.0, 9.0, 99.0, 999.0])
    kind = fit_values(["value"], False, {"log_target": True}, y)
    assert kind.mean.item() == pytest.approx(torch.log1p(y).mean().item())
    assert kind.restored(kind.standardized(y)) == pytest.approx(y, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize(
    "changes, extra, message",
    [
        ({"y_train": np.r_[np.nan, np.ones(99)]}, [], "non-finite target"),
        ({"y_test": np.r_[-1.0, np.ones(39)]}, ["task.log_target=true"], "negative targets"),
    ],
    ids=["nan", "log-negative"],
)
def test_bad_targets_are_one_error(tmp_path, changes, extra, message):
    path = write(tmp_path / "bad.npz", **changes)
    with pytest.raises(BirnnError, match=message):
        train(make_cfg(*FAST, f"data.path={path}", "trainer.max_steps=1", *extra), tmp_path / "run")


def test_float_labels_under_classification_name_task_regression(tmp_path):
    path = write(tmp_path / "values.npz")
    with pytest.raises(BirnnError, match="task=regression"):
        train(make_cfg(*FAST[1:], f"data.path={path}", "trainer.max_steps=1"), tmp_path / "run")


def test_models_without_per_step_outputs_refuse_per_step(tmp_path):
    (xa, _), (xb, _) = ramps(20, 0), ramps(10, 1)
    np.savez(tmp_path / "s.npz", x_train=xa, y_train=xa[..., 0], x_test=xb, y_test=xb[..., 0])
    for model in ("lstm_fcn", "inception_time"):
        plain = [o for o in FAST if not o.startswith("model.")]
        cfg = make_cfg(*plain, f"model={model}", f"data.path={tmp_path / 's.npz'}", "task.per_step=true")
        with pytest.raises(BirnnError, match=f"model={model} gives one output per series.*task.per_step"):
            train(cfg, tmp_path / model)


def test_uea_regression_trains_on_covid3month_and_the_wrong_task_is_one_line(tmp_path):
    pytest.importorskip("aeon")
    common = ["data=uea", "device=cpu", "device.num_threads=1", "model.hidden_size=8", "tracker=none"]
    done = run_cli("task=regression", "data.name=Covid3Month", "trainer.max_steps=2", *common,
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["test_baseline_rmse"] == pytest.approx(0.0447, abs=5e-5)  # the mean predictor (140 series)
    assert "mean predictor RMSE" in done.stderr + done.stdout
    wrong = run_cli("data.name=Covid3Month", *common, f"hydra.run.dir={tmp_path / 'c'}", cwd=tmp_path)
    assert wrong.returncode != 0 and "train it with task=regression" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    back = run_cli(
        "task=regression", "data.name=BasicMotions", *common, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert back.returncode != 0 and "train it with task=classification" in back.stderr


def test_monitors_follow_one_rule():
    assert direction("val_rmse") == "minimize" and direction("val_mae") == "minimize"
    assert direction("val_loss") == "minimize" and direction("val_r2") == "maximize"
    assert better("val_rmse", 0.1, 0.2) and not better("val_r2", 0.1, 0.2)
    assert judged_by({"test_rmse": 0.5}, "val_rmse") == 0.5  # no validation split: the headline test score


def test_regression_monitors_belong_to_regression():
    from birnn.schema.config import validate

    with pytest.raises(BirnnError, match="trainer.monitor must be one of val_rmse"):
        validate(make_cfg("task=regression", "trainer.monitor=val_accuracy"))
    with pytest.raises(BirnnError, match="under task=classification"):
        validate(make_cfg("trainer.monitor=val_rmse"))
    validate(make_cfg("task=regression", "trainer.monitor=val_r2", "task.loss=huber"))


def test_values_kind_round_trips_its_spec():
    kind = Values(["a", "b"], False, "mae", [1.0, 2.0], [3.0, 4.0], False)
    again = Values(["a", "b"], **kind.spec)
    assert again.spec == kind.spec and again.outputs == 2


def test_a_training_split_without_a_scored_target_is_one_error(tmp_path):
    """Per-step targets all NaN in the training split (after the hold-out): nothing to fit; before, the scaling's mean
    was NaN and the run ended 'successfully' with NaN scores."""
    (xa, _), (xb, _) = ramps(20, 0), ramps(10, 1)
    np.savez(tmp_path / "s.npz", x_train=xa, y_train=np.full(xa.shape[:2], np.nan), x_test=xb, y_test=xb[..., 0])
    with pytest.raises(BirnnError, match="train split. holds no scored target"):
        train(make_cfg(*FAST, f"data.path={tmp_path / 's.npz'}", "task.per_step=true", "trainer.max_steps=1"),
              tmp_path / "run")  # fmt: skip


def test_a_checkpoints_values_spec_with_a_field_it_does_not_know_still_builds_its_kind():
    """The checkpoint check keeps unknown fields (a newer release's); building the kind from such a spec was a
    TypeError traceback in birnn-evaluate and birnn-predict."""
    from birnn.data.targets import for_data

    spec = {**Values(["value"], False, "mae", [5.0], [2.0]).spec, "clip": 1}
    kind = for_data(["value"], False, spec)
    assert kind.loss == "mae" and kind.mean.tolist() == [5.0] and kind.std.tolist() == [2.0]


def test_a_run_without_a_validation_split_is_judged_in_its_monitors_direction():
    """Without a validation split a job returns a test score; a sweeper optimizes it in the monitor's direction, so it
    must be the monitor's own test score: test_rmse (lower is better) came back for trainer.monitor=val_r2
    (maximized), and test_accuracy for val_loss (minimized)."""
    values = {"test_rmse": 0.5, "test_mae": 0.4, "test_r2": 0.2, "test_loss": 0.3}
    assert judged_by(values, "val_r2") == 0.2 and judged_by(values, "val_mae") == 0.4
    assert judged_by({"test_accuracy": 0.9, "test_loss": 0.3}, "val_loss") == 0.3
    assert judged_by({"test_accuracy": 0.9, "best_val_loss": 0.1}, "val_loss") == 0.1


@pytest.mark.parametrize(
    "model",
    [
        ["model.readout=last"],
        ["model.readout=mean"],
        ["model.readout=final"],
        ["model=bigru", "model.hidden_size=16", "model.num_layers=1"],
        ["model.stem=conv", "model.stem_kernel=4", "model.stem_stride=2", "model.stem_channels=8"],
        ["model=lstm_fcn", "model.filters=[8,8,8]"],
        ["model=inception_time", "model.depth=1", "model.filters=4", "model.kernel_sizes=[3]"],
    ],
    ids=lambda m: m[0].split("=")[-1],
)
def test_every_model_gives_one_output_per_value(tmp_path, model):
    """The head has d outputs (passed as num_classes) whatever the model."""
    path = write(tmp_path / "two.npz", outputs=2)
    common = [o for o in FAST if not o.startswith("model.")] if model[0].startswith("model=") else FAST
    m = train(make_cfg(*common, *model, f"data.path={path}", "trainer.max_steps=2"), tmp_path / "run")
    assert math.isfinite(m["test_rmse"])
    assert restore(tmp_path / "run" / "checkpoints" / "last.pt").model.fc.out_features == 2
