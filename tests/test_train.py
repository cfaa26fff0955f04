"""End to end through the real CLI: run dir artifacts, a multirun, reload, and clean error exits."""

import io
import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from birnn.data.pipeline import load_data
from birnn.engine import checkpoint
from birnn.engine.loop import eval_pass
from birnn.models.rnn import build_model
from birnn.train import train
from conftest import FAST, make_cfg, run_cli

RUN = [*FAST, "trainer.epochs=3"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """One real ``python -m birnn.train`` run, in the default outputs/<date>/<time>/ layout."""
    cwd = tmp_path_factory.mktemp("cli")
    proc = run_cli(*RUN, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (cwd / "outputs").glob("*/*")
    return run_dir


def test_run_dir_holds_every_artifact(cli_run):
    assert (cli_run / ".hydra" / "config.yaml").is_file() and (cli_run / ".hydra" / "overrides.yaml").is_file()
    log = (cli_run / "train.log").read_text()
    assert "Epoch [1/3], Step [5/15], Loss: " in log
    metrics = json.loads((cli_run / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "test_loss",
        "epochs",
        "steps",
        "train_seconds",
        "train_samples_per_second",
        "birnn_version",
        "torch_version",
        "git_commit",
    ):
        assert key in metrics
    assert metrics["epochs"] == 3 and metrics["steps"] == 45 and 0 < metrics["test_accuracy"] <= 1
    state = torch.load(cli_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["finished"] and state["progress"]["epoch"] == 3 and state["progress"]["global_step"] == 45
    assert state["config"]["model"]["hidden_size"] == 16 and isinstance(state["config"], dict)
    assert state["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    assert {"model", "optimizer", "provenance"} <= state.keys()
    events = EventAccumulator(str(cli_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "test/loss", "test/accuracy"} <= tags
    assert [e.step for e in events.Scalars("test/accuracy")] == [15, 30, 45]
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(metrics["test_accuracy"])


def test_checkpoint_reload_reproduces_test_accuracy(cli_run):
    state = checkpoint.load(cli_run / "checkpoints" / "last.pt")
    cfg = OmegaConf.create(state["config"])
    data = load_data(cfg.data, torch.device("cpu"))
    model = build_model(cfg.model, data.input_size, data.num_classes)
    checkpoint.load_model_state(model, state["model"], "last.pt")
    result = eval_pass(model, data.target, data.test_x, data.test_y, cfg.data.eval_batch_size, torch.device("cpu"))
    metrics = json.loads((cli_run / "metrics.json").read_text())
    assert result.accuracy == metrics["test_accuracy"]
    # the trivial baseline beside the score: the training split's commonest class, scored on the test split
    top = int(torch.bincount(data.train_y).argmax())
    assert metrics["test_baseline_accuracy"] == pytest.approx((data.test_y == top).float().mean().item())
    assert metrics["test_baseline"] == f"always '{data.classes[top]}', the training split's most frequent class"
    final = (cli_run / "train.log").read_text().splitlines()[-1]
    assert f"trivial baseline {metrics['test_baseline_accuracy']:.4f} (always '{data.classes[top]}'" in final


def test_two_job_multirun_and_relaunch_skips_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "optimizer.lr=0.001,0.003", *FAST, "trainer.epochs=2", f"hydra.sweep.dir={sweep}"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lrs = []
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        # 2 x 13 steps: a multirun job holds out 10% of the 1437 training samples for validation
        assert metrics["steps"] == 26 and (sweep / job / "checkpoints" / "last.pt").is_file()
        lrs.append(OmegaConf.load(sweep / job / ".hydra" / "config.yaml").optimizer.lr)
    assert lrs == [0.001, 0.003]
    before = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("already holds a finished run") == 2
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == before
    assert (sweep / "0" / ".hydra" / "resume-1" / "config.yaml").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["data=digits", "model.hidden_size=-1"],
            "model.hidden_size must be in 1..65536",
        ),  # checked where the model is built
        (["data=mnist", "data.download=false", "data.root=empty"], "MNIST is not in"),
    ],
)
def test_bad_input_exits_nonzero_without_traceback(tmp_path, args, message):
    proc = run_cli(*args, "device=cpu", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_in_process_run_is_deterministic(tmp_path):
    cfg = make_cfg(*FAST, "trainer.max_steps=12", "seed=3")
    a, b = train(cfg, tmp_path / "a"), train(cfg, tmp_path / "b")
    assert a["steps"] == 12 and a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == b["test_loss"]
    c = train(make_cfg(*FAST, "trainer.max_steps=12", "seed=4"), tmp_path / "c")
    assert c["test_loss"] != a["test_loss"]
    events = EventAccumulator(str(tmp_path / "a"))
    events.Reload()
    assert events.Tags()["images"] == [] and "test/accuracy" in events.Tags()["scalars"]  # log_images=false


def test_a_step_budget_run_without_epoch_scores_logs_nothing_useless(tmp_path, caplog):
    """experiment=uea's settings: many epochs, a step budget, no test pass during training, no validation split."""
    budget = ["trainer.epochs=100000", "trainer.max_steps=30", "trainer.log_every_n_steps=10"]
    cfg = make_cfg(*FAST, *budget, "trainer.test_every_epoch=false")
    with caplog.at_level(logging.INFO, logger="birnn.train"):
        train(cfg, tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records]
    assert "Epoch [2/2], Step [15/15], Loss: " in "\n".join(lines)
    assert not [line for line in lines if line.startswith("Epoch ") and line.rstrip().endswith(":")]
    assert [line for line in lines if line.startswith("Test accuracy")]  # the one test pass, at the end


def train_lines(tmp_path: Path, caplog, *overrides: str) -> list[str]:
    with caplog.at_level(logging.INFO, logger="birnn.train"):
        train(make_cfg(*FAST, *overrides), tmp_path / "run")
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Epoch [")]


def test_every_epoch_logs_its_training_loss_whatever_log_every_n_steps(tmp_path, caplog):
    """Text and tagged runs have 30-94 steps per epoch against the default log_every_n_steps=100 (issue #38)."""
    lines = train_lines(tmp_path, caplog, "trainer.epochs=2", "trainer.log_every_n_steps=100")
    assert [line.split(", Loss")[0] for line in lines] == ["Epoch [1/2], Step [15/15]", "Epoch [2/2], Step [15/15]"]


def test_a_log_line_is_due_every_log_every_n_seconds(tmp_path, caplog):
    lines = train_lines(
        tmp_path, caplog, "trainer.max_steps=4", "trainer.log_every_n_steps=100", "trainer.log_every_n_seconds=1e-9"
    )
    assert [line.split(", Loss")[0] for line in lines] == [f"Epoch [1/1], Step [{n}/15]" for n in (1, 2, 3, 4)]
    off = ["trainer.max_steps=4", "trainer.log_every_n_steps=2", "trainer.log_every_n_seconds=null"]
    lines = train_lines(tmp_path / "off", caplog, *off)
    assert len(lines) == 4 + 2  # the earlier run's four, then steps 2 and 4 only


def test_the_progress_bar_shows_the_loss_from_the_first_step(tmp_path, monkeypatch):
    """On a terminal the bar shows the loss before the first log line (here at step 15, the epoch's end)."""
    import birnn.engine.training as training

    shown = []

    class Bar(training.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": False, "file": io.StringIO()})

        def set_postfix(self, **kwargs):
            shown.append((self.n, kwargs))

    monkeypatch.setattr(training, "tqdm", Bar)
    train(make_cfg(*FAST, "trainer.max_steps=15", "trainer.log_every_n_steps=100"), tmp_path / "run")
    first_step, postfix = shown[0]
    # at the first step (tqdm counts a step once the next batch is drawn), long before the first log line
    assert first_step == 0 and float(postfix["loss"]) > 0 and 0 <= float(postfix["acc"]) <= 1


def test_a_log_window_without_a_scored_target_logs_nan_not_a_traceback(tmp_path):
    """Per-step values leave NaN steps unscored: a window of steps whose batches hold no scored target (here every
    batch but one) has no mean training loss; a ZeroDivisionError traceback before."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 10))
    y[1:] = np.nan  # one series scored
    data = {"x_train": rng.normal(size=(40, 10, 2)).astype("float32"), "y_train": y}
    np.savez(tmp_path / "s.npz", **data, x_test=data["x_train"][:4], y_test=rng.normal(size=(4, 10)))
    done = run_cli("task=regression", "task.per_step=true", "data=arrays", f"data.path={tmp_path / 's.npz'}",
                   "data.batch_size=1", "trainer.log_every_n_steps=1", "trainer.max_steps=3", "device=cpu",
                   "device.num_threads=1", "model.hidden_size=8", "tracker=none", f"hydra.run.dir={tmp_path / 'r'}",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Loss: nan" in done.stdout + done.stderr
