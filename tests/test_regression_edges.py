"""Edges of task=regression a hostile user found: a constant output's R², NaN scores as "best" and in a sweep's
ranking, overflowing targets, re-tasking a checkpoint, wording under values, and a stopped export."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_regression import FAST, write

from birnn.data.targets import Values, value_scores
from birnn.engine import checkpoint
from birnn.records.summary import Job, Summary
from birnn.schema.metrics import best_first, better
from birnn.train import train
from conftest import make_cfg, run_cli


def test_a_constant_output_scores_r2_as_scikit_learn_does():
    from sklearn.metrics import r2_score

    y = torch.tensor([[1.0, 5], [2, 5], [3, 5]])
    scores = value_scores(y, y + 0.1, ["a", "b"], False)
    assert scores["r2"] == pytest.approx(r2_score(y.numpy(), (y + 0.1).numpy()), rel=1e-6)  # 0.4925
    assert scores["r2_b"] == 0.0  # constant, not predicted exactly
    assert value_scores(y, y, ["a", "b"], False)["r2_b"] == 1.0  # constant, predicted exactly
    per_step = torch.tensor([[4.0, 4, math.nan], [4, 4, 4]])
    assert value_scores(per_step, per_step + 1, ["v"], True)["r2"] == 0.0
    assert math.isnan(value_scores(torch.full((2, 3), math.nan), torch.zeros(2, 3), ["v"], True)["r2"])


def test_nan_never_improves_and_a_finite_score_improves_on_a_nan_best():
    nan = math.nan
    assert not better("val_r2", nan, None) and not better("val_rmse", nan, None)
    assert not better("val_r2", nan, 0.5) and not better("val_rmse", nan, 0.5)
    assert better("val_r2", -3.0, nan) and better("val_rmse", 1e9, nan)
    assert best_first("val_rmse", 5.0) < best_first("val_rmse", nan)
    assert best_first("val_r2", -9.0) < best_first("val_r2", nan)


def test_a_first_nan_is_not_best_and_the_next_finite_score_is(tmp_path, monkeypatch):
    """A NaN validation score at the first epoch (the old rule made it best for good: best.pt stayed there, early
    stopping fired, and the checkpoint holding a NaN best could not be loaded again): the next epoch's finite score
    is best, best.pt moves there and the run goes on."""
    scores, seen = Values.scores, []

    def first_val_nan(self, y, predictions, monitor):
        got = scores(self, y, predictions, monitor)
        if len(y) == 20:  # the validation split
            seen.append(1)
            return got | {"r2": math.nan} if len(seen) == 1 else got
        return got

    monkeypatch.setattr(Values, "scores", first_val_nan)
    path = write(tmp_path / "ramps.npz")
    cfg = make_cfg(*FAST, f"data.path={path}", "data.val_size=20", "trainer.monitor=val_r2", "trainer.epochs=3",
                   "trainer.early_stopping_patience=2")  # fmt: skip
    m = train(cfg, tmp_path / "run")
    assert math.isnan(m["history"][0]["val_r2"]) and m["epochs"] >= 2
    assert math.isfinite(m["best_val_r2"]) and m["best_val_r2"] == max(h["val_r2"] for h in m["history"][1:])
    best = checkpoint.load(tmp_path / "run" / "checkpoints" / "best.pt")  # loads: its best is a number
    assert best["progress"]["epoch"] >= 2


def test_nan_scores_rank_last_in_a_sweep_summary_in_a_stable_order():
    def job(name: str, r2: float) -> Job:
        return Job(name, "completed", "", {"seed": name}, {"seed": name}, {"best_val_r2": r2, "test_rmse": 1.0})

    jobs = [job("0", math.nan), job("1", 0.2), job("2", math.nan), job("3", 0.9), job("4", 0.5)]
    for order in (jobs, jobs[::-1]):
        ranked = [j.name for j in Summary(order, "best_val_r2").jobs]
        assert ranked[:3] == ["3", "4", "1"] and set(ranked[3:]) == {"0", "2"}
    assert [j.name for j in Summary(jobs, "best_val_r2").jobs][3:] == ["0", "2"]  # NaN last, in their order


def test_a_ts_target_beyond_float32_is_named_as_such(tmp_path):
    """``1e39`` is a finite number in the file that float32 cannot hold: not "non-finite (NaN or inf)"."""
    pytest.importorskip("aeon")
    header = "@problemName Big\n@timeStamps false\n@missing false\n@univariate true\n@equalLength true\n"
    header += "@seriesLength 4\n@targetLabel true\n@data\n"
    for split, targets in (("TRAIN", [1.5, 2.5, 1e39, 3.0, 2.0, 1.0]), ("TEST", [1.0, 2.0])):
        rows = "".join(f"{i},{i + 1},{i + 2},{i + 3}:{t!r}\n" for i, t in enumerate(targets))
        (tmp_path / "Big").mkdir(exist_ok=True)
        (tmp_path / "Big" / f"Big_{split}.ts").write_text(header + rows)
    data = ["task=regression", "data=uea", "data.name=Big", f"data.root={tmp_path}"]
    done = run_cli(*data, "device=cpu", "tracker=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "1 target beyond float32's range" in error[0] and "1e+39" in error[0], done.stderr
    assert "NaN or inf" not in done.stderr


@pytest.fixture(scope="module")
def value_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny regression checkpoint (one step)."""
    folder = tmp_path_factory.mktemp("values")
    train(make_cfg(*FAST, f"data.path={write(folder / 'ramps.npz')}", "trainer.max_steps=1"), folder / "run")
    return folder / "run" / "checkpoints" / "last.pt"


@pytest.mark.parametrize("override", ["task=regression", "task.name=regression", "task.log_target=true"])
def test_a_checkpoints_task_cannot_be_changed_by_an_override(override, value_ckpt, tmp_path):
    """Re-tasking a classification checkpoint was a merge error or a two-line "Invalid config"; a task.* override
    on a regression checkpoint was silently ignored. Now each is one line saying the task is fixed."""
    classes = Path(__file__).parent / "fixtures" / "digits-17dab9d.pt"
    for ckpt in (classes, value_ckpt):
        done = run_cli(str(ckpt), override, "device=cpu", cwd=tmp_path, module="birnn.evaluate")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("error: ") and "a checkpoint's task is fixed" in lines[0]
        assert f"train again with {override}" in lines[0]


def test_predict_and_export_speak_of_series_and_values(value_ckpt, tmp_path):
    """Under regression on series: "no series could be given a value" (not "no image could be classified"), and
    export's line names series as its input (the graph's input keeps its name, images)."""
    (tmp_path / "bad.npy").write_bytes(b"nope")
    done = run_cli(str(value_ckpt), str(tmp_path / "bad.npy"), cwd=tmp_path, module="birnn.predict")
    assert done.returncode == 2 and "error: no series could be given a value" in done.stderr, done.stderr
    assert "image" not in done.stderr
    out = tmp_path / "m.pt2"
    done = run_cli(str(value_ckpt), "--format", "pt2", "--out", str(out), cwd=tmp_path, module="birnn.export")
    assert done.returncode == 0, done.stderr
    assert "input series float32 (N, 10, 1) scaled as in training, output values (N,)" in done.stdout, done.stdout
    assert "images" not in done.stdout


STOPPED_MID_WRITE = """import os, signal, sys, torch
save = torch.export.save
def save_then_stopped(program, f, **kw):
    save(program, f, **kw)
    with open(f, "r+b") as half:  # half written when the signal comes
        half.truncate(os.path.getsize(f) // 2)
    os.kill(os.getpid(), signal.SIGTERM)
torch.export.save = save_then_stopped
from birnn import export
export.main(sys.argv[1:])
"""


def test_export_stopped_by_sigterm_says_so_in_one_line_and_leaves_no_half_file(value_ckpt, tmp_path):
    """SIGTERM while the file is being written: one line, exit 128 + 15, nothing at --out (nor a temp file)."""
    out = tmp_path / "out" / "model.pt2"
    out.parent.mkdir()
    cmd = [sys.executable, "-c", STOPPED_MID_WRITE, str(value_ckpt), "--format", "pt2", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip().splitlines() == ["Stopped by SIGTERM: the export did not finish."]
    assert list(out.parent.iterdir()) == []
    done = run_cli(str(value_ckpt), "--format", "pt2", "--out", str(out), cwd=tmp_path, module="birnn.export")
    assert done.returncode == 0 and [p.name for p in out.parent.iterdir()] == ["model.pt2"], done.stderr
