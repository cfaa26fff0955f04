"""Trackers: the tracker group, a failing tracker costing one warning, and MLflow against a real server and
the default SQLite store (needs the ``mlflow`` extra)."""

import json
import logging
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from birnn.records.tracking import Trackers, hparams
from birnn.train import train
from conftest import FAST, VALUES, free_port, make_cfg, run_cli

RUN = [*FAST, "trainer.max_steps=4", "trainer.log_every_n_steps=2"]


class Broken:
    """A tracker whose every call fails, as a tracker whose server is down does."""

    def __init__(self, run_dir, purge_step=None, config=None, images=True):
        pass

    def scalars(self, step, values):
        raise ConnectionError("server down\nsecond line")

    evaluation = finish = close = scalars


def test_tracker_none_writes_no_events_and_the_run_still_records(tmp_path):
    metrics = train(make_cfg(*RUN, "tracker=none"), tmp_path)
    assert not list(tmp_path.glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]


def test_a_failing_tracker_costs_one_warning_never_the_run(tmp_path, caplog):
    cfg = make_cfg(*RUN, "+tracker.broken._target_=test_trackers.Broken")
    with caplog.at_level(logging.WARNING, logger="birnn.train"):
        metrics = train(cfg, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        (
            "Tracker broken failed (ConnectionError: server down); it is off for the rest of this run "
            "(metrics.json and the checkpoints are unaffected)."
        )
    ]
    assert metrics["steps"] == 4 and (tmp_path / "metrics.json").is_file()
    assert list(tmp_path.glob("events.out.tfevents.*"))  # the other tracker (tensorboard) carried on


def test_trackers_are_built_from_the_group_options():
    both = make_cfg("tracker=[tensorboard,mlflow]").tracker
    assert list(both) == ["tensorboard", "mlflow"] and both.mlflow.tracking_uri is None
    assert Trackers(make_cfg("tracker=none").tracker, Path("unused")).active == {}


# --- MLflow ---------------------------------------------------------------------------------------------------


def rest(url: str, endpoint: str, body: dict | None = None) -> dict:
    """MLflow's REST API: POST ``body`` as JSON, or GET without one."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{endpoint}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def mlflow_server(tmp_path):
    pytest.importorskip("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    yield url, proc
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_multirun_nests_under_one_parent_then_a_stopped_server_costs_one_warning(mlflow_server, tmp_path):
    url, server = mlflow_server
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        *RUN,
        "optimizer.lr=0.003,0.01",
        "tracker=mlflow",
        f"tracker.mlflow.tracking_uri={url}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Tracker mlflow failed" not in proc.stdout + proc.stderr

    experiment = rest(url, "experiments/get-by-name?experiment_name=birnn")["experiment"]["experiment_id"]
    runs = rest(url, "runs/search", {"experiment_ids": [experiment]})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if "mlflow.parentRunId" not in t]
    assert len(runs) == 3 and len(parents) == 1
    parent_id = parents[0]["info"]["run_id"]
    assert parents[0]["info"]["status"] == "FINISHED" and parents[0]["info"]["run_name"] == sweep.name
    children = {t["birnn.run_dir"]: r for r, t in zip(runs, tags) if t.get("mlflow.parentRunId") == parent_id}
    assert sorted(children) == [str((sweep / job).resolve()) for job in ("0", "1")]
    for run_dir, run in children.items():
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        config = torch.load(Path(run_dir) / "checkpoints" / "last.pt", weights_only=True)["config"]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params == {k: str(v) for k, v in hparams(config).items()}
        final = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert {k: final[k] for k in numbers} == numbers
        assert run["info"]["status"] == "FINISHED"
        assert Path(run_dir, "mlflow_run.json").is_file()
    assert {p["value"] for c in children.values() for p in c["data"]["params"] if p["key"] == "optimizer.lr"} == {
        "0.003",
        "0.01",
    }

    server.terminate()
    server.wait(timeout=30)
    run_dir = tmp_path / "down"
    proc = run_cli(
        *RUN,
        "tracker=mlflow",
        f"tracker.mlflow.tracking_uri={url}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert output.count("WARNING") == 1 and "Tracker mlflow failed" in output
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.parametrize("store", ["/proc/m.db", "folder"])
def test_a_sqlite_store_that_cannot_be_opened_costs_one_warning_never_a_hang(tmp_path, monkeypatch, store):
    """/proc: the lock file cannot be created (the lock waited forever); a folder: MLflow retried for ~100 s."""
    pytest.importorskip("mlflow")
    (tmp_path / "folder").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / store}")
    proc = run_cli(*RUN, "tracker=mlflow", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert output.count("WARNING") == 1 and "Tracker mlflow failed" in output, output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 4


@pytest.mark.slow
def test_parallel_jobs_share_the_default_sqlite_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    proc = run_cli(
        "-m",
        *RUN,
        "seed=0,1,2",
        "tracker=mlflow",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Tracker mlflow failed" not in proc.stdout + proc.stderr and "database is locked" not in proc.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("birnn").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 4 and len(children) == 3 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.params["seed"] for r in children} == {"0", "1", "2"}
    assert all(
        r.data.metrics["test_accuracy"]
        == json.loads((Path(r.data.tags["birnn.run_dir"]) / "metrics.json").read_text())["test_accuracy"]
        for r in children
    )


def test_a_resumed_run_continues_its_own_mlflow_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    run = [*RUN, "tracker=mlflow", f"tracker.mlflow.tracking_uri={uri}", "tracker.mlflow.log_checkpoints=false"]
    train(make_cfg(*run), tmp_path / "run")
    train(make_cfg(*run, "trainer.max_steps=6"), tmp_path / "run")  # resumes the finished run for 2 more steps
    train(make_cfg(*run, "trainer.max_steps=6"), tmp_path / "run")  # finished: nothing to do
    client = MlflowClient(uri)
    [only] = client.search_runs([client.get_experiment_by_name("birnn").experiment_id])
    assert only.info.status == "FINISHED" and only.data.metrics["steps"] == 6
    assert [m.step for m in client.get_metric_history(only.info.run_id, "train/loss")] == [2, 4, 6]
    assert json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"] == only.info.run_id


def test_pictures_cut_long_class_names(tmp_path):
    """A 12,000-character class name (data=arrays' classes, a .ts label) once sized a confusion figure of 720 inches
    square that matplotlib drew for minutes after every test pass; names are cut to 40 characters in pictures."""
    from birnn.records.scores import EvalResult
    from birnn.records.tracking import pictures

    classes = ["x" * 12_000, "short"]
    y, pred = torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0])
    figures = pictures("test", EvalResult(0.5, 1 / 3, pred), torch.zeros(3, 8, 8), y, classes)
    confusion, wrong = figures["test/confusion_matrix"], figures["test/misclassified"]
    assert max(confusion.get_size_inches()) < 5
    ticks = [t.get_text() for t in confusion.axes[0].get_xticklabels()]
    assert ticks == ["x" * 39 + "\u2026", "short"]
    captions = [t.get_text() for t in wrong.axes[0].texts]
    assert captions == ["x" * 39 + "\u2026\n\u2192 short", "short\n\u2192 " + "x" * 39 + "\u2026"]


def test_mlflow_records_a_regression_runs_scores_per_epoch_and_at_the_end(tmp_path):
    """task=regression (issue #36) with the default SQLite store: val/rmse per epoch, the final test_rmse and its
    trivial baselines."""
    pytest.importorskip("mlflow")
    pytest.importorskip("aeon")
    from mlflow.tracking import MlflowClient

    run = [*VALUES, "data.val_size=20", "trainer.epochs=2", "tracker=mlflow", "tracker.mlflow.log_checkpoints=false"]
    proc = run_cli(*run, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("birnn").experiment_id])
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test_rmse", "test_mae", "test_r2", "best_val_rmse", "test_baseline_rmse", "test_median_rmse"):
        assert found.data.metrics[key] == pytest.approx(m[key]), key
    assert [h.step for h in client.get_metric_history(found.info.run_id, "val/rmse")] == [12, 24]
    assert "train/accuracy" not in found.data.metrics
