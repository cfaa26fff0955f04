"""Fault tolerance: exact resume after kill -9, signals, refused config changes, and the bad-input catalogue."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from birnn.engine import checkpoint
from birnn.engine.loop import Stepper
from birnn.models.rnn import RNNClassifier
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import FAST, ROOT, VALUES, WALL_CLOCK, make_cfg, run_cli, wait_for

RUN = [*FAST, "trainer.checkpoint_every_n_steps=7", "trainer.log_every_n_steps=4"]


def state_of(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def interrupt_at(monkeypatch, step: int, action) -> None:
    """Call ``action(stepper)`` just before optimizer step number ``step`` (1-based)."""
    original, calls = Stepper.step, []

    def step_and_maybe_act(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == step:
            action(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Stepper, "step", step_and_maybe_act)


def kill_9_then_resume(tmp_path: Path, run: list[str]) -> Path:
    """Train ``run`` for 6 epochs in-process, and again as a process killed with -9 mid-epoch then resumed;
    assert both end bit-identical (metrics and weights). Returns the resumed run dir."""
    reference = train(make_cfg(*run, "trainer.epochs=6"), tmp_path / "reference")
    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "birnn.train", *run, "trainer.epochs=1000", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = state_of(run_dir)["progress"]
    assert killed_at["step_in_epoch"] > 0 and killed_at["global_step"] < 90, killed_at  # mid-epoch, unfinished
    assert not (run_dir / "metrics.json").exists()

    # trainer.epochs may change on resume (no scheduler): finish the same 6 epochs as the reference.
    proc = run_cli(*run, "trainer.epochs=6", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Resuming from" in proc.stdout
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert {k: v for k, v in resumed.items() if k not in WALL_CLOCK} == {
        k: v for k, v in json.loads(json.dumps(reference)).items() if k not in WALL_CLOCK
    }
    ref_weights = state_of(tmp_path / "reference")["model"]
    for name, tensor in state_of(run_dir)["model"].items():
        assert torch.equal(tensor, ref_weights[name]), name
    return run_dir


def test_kill_9_mid_epoch_then_resume_is_bit_identical(tmp_path):
    run_dir = kill_9_then_resume(tmp_path, RUN)
    assert (run_dir / ".hydra" / "resume-1" / "config.yaml").is_file()

    events = EventAccumulator(str(run_dir))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(4, 91, 4))  # each logged step exactly once
    assert [e.step for e in events.Scalars("test/accuracy")] == [15, 30, 45, 60, 75, 90]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_at_the_next_step_and_exits(tmp_path, monkeypatch, caplog, sig):
    # as in a foreground process (a background job may inherit SIGINT ignored, which birnn then respects)
    default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
    previous = signal.signal(sig, default)
    try:
        interrupt_at(monkeypatch, 10, lambda _: os.kill(os.getpid(), sig))
        with pytest.raises(SystemExit) as exit_info:
            train(make_cfg(*RUN, "trainer.epochs=3"), tmp_path)
        assert signal.getsignal(sig) is default  # birnn's handler is removed again
    finally:
        signal.signal(sig, previous)
    assert exit_info.value.code == 128 + sig
    state = state_of(tmp_path)
    assert state["progress"]["global_step"] == 10 and not state["finished"]
    assert f"Stopped by {signal.Signals(sig).name} at step 10" in caplog.text


def test_a_signal_during_a_checkpoint_is_acted_on_at_the_next_step(tmp_path, monkeypatch, caplog):
    # Under DDP the periodic save holds collectives; a signal landing there must not make this rank stop at a step
    # the others agreed to go on from (they would wait for it forever): every rank stops at the next agreed step.
    from birnn.engine.run import Run

    original, saves = Run.save, []

    def save_while_signalled(self, *names, **kwargs):
        saves.append(self.progress.global_step)
        if saves == [7]:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *names, **kwargs)

    monkeypatch.setattr(Run, "save", save_while_signalled)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(SystemExit):
            train(make_cfg(*RUN, "trainer.epochs=3"), tmp_path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert saves == [7, 8] and state_of(tmp_path)["progress"]["global_step"] == 8
    assert "Stopped by SIGTERM at step 8" in caplog.text


@pytest.mark.parametrize(
    "split, nth, extra, said",
    [
        # an epoch end mid-run: its steps are saved, the resumed run evaluates them first
        ("val", 1, ["data.val_size=100"], "evaluating; checkpoint saved to"),
        # the last epoch's test pass: once acted on never (exit 0, no message)
        ("test", 2, [], "evaluating; checkpoint saved to"),
        # the final test pass: the last checkpoint holds everything else, the resume runs the pass again
        ("test", 1, ["data.val_size=100", "trainer.test_every_epoch=false"], "in the final test pass; "),
    ],
)
def test_a_signal_during_an_evaluation_pass_stops_before_its_next_batch(
    tmp_path, monkeypatch, caplog, split, nth, extra, said
):
    from birnn.engine import loop
    from birnn.engine.run import Run

    run = [*RUN, "trainer.epochs=2", "data.eval_batch_size=20", *extra]
    reference = train(make_cfg(*run), tmp_path / "reference")
    original_evaluate, original_forward, passes, after = Run.evaluate, loop.forward, [], []

    def evaluate(self, name, *args, **kwargs):
        passes.append(name)
        return original_evaluate(self, name, *args, **kwargs)

    def forward(model, *args, **kwargs):
        if after or (not model.training and passes[-1] == split and passes.count(split) == nth):
            after.append(model.training)
            if len(after) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # during the pass's first batch
        return original_forward(model, *args, **kwargs)

    monkeypatch.setattr(Run, "evaluate", evaluate)
    monkeypatch.setattr(loop, "forward", forward)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(SystemExit) as exit_info:
            train(make_cfg(*run), tmp_path / "run")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert after == [False]  # no batch (of evaluation or training) after the one the signal arrived in
    step = state_of(tmp_path / "run")["progress"]["global_step"]
    assert f"Stopped by SIGTERM at step {step}, {said}" in caplog.text

    monkeypatch.undo()
    resumed = train(make_cfg(*run), tmp_path / "run")
    assert {k: v for k, v in resumed.items() if k not in WALL_CLOCK} == {
        k: v for k, v in reference.items() if k not in WALL_CLOCK
    }
    ref_weights = state_of(tmp_path / "reference")["model"]
    for name, tensor in state_of(tmp_path / "run")["model"].items():
        assert torch.equal(tensor, ref_weights[name]), name


def test_sigusr2_saves_then_hands_over_to_submitit(tmp_path, monkeypatch):
    handed_over = []

    def submitit_handler(signum, frame):  # stands in for submitit's checkpoint-and-requeue handler
        handed_over.append((signum, state_of(tmp_path)["progress"]["global_step"]))
        raise SystemExit(0)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        interrupt_at(monkeypatch, 12, lambda _: os.kill(os.getpid(), signal.SIGUSR2))
        with pytest.raises(SystemExit):
            train(make_cfg(*RUN, "trainer.epochs=3"), tmp_path)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert handed_over == [(signal.SIGUSR2, 12)]


def test_changed_model_key_is_refused_before_touching_the_run(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(*FAST, "trainer.max_steps=3", f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    original = {p: p.read_bytes() for p in (run_dir / ".hydra").glob("*.yaml")}
    files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    proc = run_cli(*FAST, "trainer.max_steps=3", "model.hidden_size=32", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Cannot resume" in proc.stderr and "model.hidden_size (16 -> 32)" in proc.stderr
    assert {p: p.read_bytes() for p in original} == original
    assert all(p.stat().st_mtime_ns == m for p, m in files.items() if p.name != "train.log")


def test_scheduler_pins_the_step_count_on_resume(tmp_path):
    train(make_cfg(*RUN, "trainer.max_steps=20", "scheduler=cosine"), tmp_path)
    with pytest.raises(BirnnError, match="trainer.max_steps"):
        train(make_cfg(*RUN, "trainer.max_steps=30", "scheduler=cosine"), tmp_path)


def test_truncated_last_checkpoint_falls_back_to_previous(tmp_path, caplog):
    cfg = make_cfg(*RUN, "trainer.epochs=2")
    metrics = train(cfg, tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    state, path = checkpoint.load_latest(tmp_path / "checkpoints")
    assert path.name == "previous.pt" and "Falling back to" in caplog.text
    # resuming from the previous (epoch-end) checkpoint completes the run with the same results
    again = train(cfg, tmp_path)
    assert again["test_accuracy"] == metrics["test_accuracy"] and again["steps"] == metrics["steps"]
    for name in ("last.pt", "previous.pt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"garbage")
    with pytest.raises(BirnnError, match="No valid checkpoint is left"):
        train(cfg, tmp_path)


def test_not_a_checkpoint_and_other_architectures_are_named(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(BirnnError, match="is not a birnn checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(BirnnError, match="not a readable birnn checkpoint \\(not a file torch.save wrote"):
        checkpoint.load(tmp_path / "notes.pt")
    small = RNNClassifier(8, 10, hidden_size=16).state_dict()
    with pytest.raises(BirnnError) as info:
        checkpoint.load_model_state(RNNClassifier(8, 10, hidden_size=32), small, "small.pt")
    assert "lstm.weight_hh_l0: checkpoint (64, 16) vs model (128, 32)" in str(info.value)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    def poison(stepper):
        with torch.no_grad():
            stepper.model.fc.weight.fill_(float("nan"))

    interrupt_at(monkeypatch, 9, poison)
    with pytest.raises(BirnnError, match="Loss became NaN/inf at step 9") as info:
        train(make_cfg(*RUN, "trainer.epochs=2"), tmp_path)
    assert "step 7) is kept" in str(info.value)
    state = state_of(tmp_path)
    assert state["progress"]["global_step"] == 7
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (tmp_path / "metrics.json").exists()


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    """ENOSPC from the file write itself (inside torch.save, before: a RuntimeError from inline_container.cc)."""
    cfg = make_cfg(*RUN, "trainer.epochs=1")
    real_fdopen, opened = os.fdopen, []

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, data):
            self.f.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, *args, **kwargs):
        opened.append(None)
        f = real_fdopen(fd, *args, **kwargs)
        return FullDisk(f) if len(opened) == 2 else f

    monkeypatch.setattr(checkpoint.os, "fdopen", fdopen)
    with pytest.raises(BirnnError, match="No space left on device") as info:
        train(cfg, tmp_path)
    assert "intact" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt"]
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["progress"]["global_step"] == 7


def test_validation_split_best_checkpoint_and_early_stopping(tmp_path):
    cfg = make_cfg(
        *RUN, "data.val_size=200", "trainer.epochs=30", "trainer.early_stopping_patience=1", "optimizer.lr=0.03"
    )
    metrics = train(cfg, tmp_path)
    assert "val_accuracy" in metrics and "best_val_accuracy" in metrics
    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert best["progress"]["best_val_accuracy"] == metrics["best_val_accuracy"]
    assert metrics["epochs"] < 30  # stopped early: validation accuracy stopped improving
    vals = [h["val_accuracy"] for h in metrics["history"]]
    assert vals[-1] <= max(vals[:-1]) and max(vals) == metrics["best_val_accuracy"]
    no_val = train(make_cfg(*RUN, "trainer.max_steps=5"), tmp_path / "no_val")
    assert "val_accuracy" not in no_val and not (tmp_path / "no_val" / "checkpoints" / "best.pt").exists()


def test_kill_9_mid_epoch_then_resume_is_bit_identical_for_values(tmp_path):
    """task=regression (issue #36): 108 training series in batches of 10, 11 steps an epoch."""
    pytest.importorskip("aeon")
    kill_9_then_resume(
        tmp_path, [*VALUES, "data.val_size=32", "trainer.checkpoint_every_n_steps=7", "trainer.log_every_n_steps=4"]
    )


def test_best_checkpoint_and_early_stopping_follow_a_lower_is_better_monitor(tmp_path):
    pytest.importorskip("aeon")
    cfg = make_cfg(*VALUES, "data.val_size=20", "trainer.epochs=40", "trainer.early_stopping_patience=2")
    metrics = train(cfg, tmp_path)
    vals = [h["val_rmse"] for h in metrics["history"]]
    assert metrics["best_val_rmse"] == min(vals)
    assert checkpoint.load(tmp_path / "checkpoints" / "best.pt")["progress"]["best_val_accuracy"] == min(vals)
    assert metrics["epochs"] < 40 and min(vals[-2:]) > min(vals)  # stopped: two epochs without a lower error
