"""Sweeps: summaries (with failures and seeds), the report CLI, HParams events and launchers.

Each sweep starts Python processes (~5 s of imports each), so the two main sweeps also serve as the launcher
tests: the card's learning-rate preset runs on submitit_local, the seed sweep with failures on joblib.
"""

import csv
import json
import shutil
import statistics
from pathlib import Path

import joblib
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from birnn import report
from birnn.records import summary
from birnn.system.threads import threads_per_job
from conftest import CONF, FAST, VALUES, run_cli

TINY = [*FAST, "trainer.epochs=1"]
CORES = joblib.cpu_count()


def compose_with_hydra(*overrides: str):
    """The composed config with its ``hydra`` node (launcher, sweeper), as a job sees it."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory) -> Path:
    """The card's learning-rate sweep preset (three jobs, no -m) on digits, each job a submitit_local process."""
    tmp = tmp_path_factory.mktemp("lr")
    proc = run_cli(
        "experiment=sweep_lr", "hydra/launcher=submitit_local", *TINY, f"hydra.sweep.dir={tmp / 'sweep'}", cwd=tmp
    )
    assert proc.returncode == 0, proc.stderr
    return tmp / "sweep"


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory) -> tuple[Path, object]:
    """Two seeds x two learning rates, one of which is invalid (two jobs fail), two jobs at a time with joblib.

    ``device.num_threads`` is left null, so each job takes its share of the cores.
    """
    tmp = tmp_path_factory.mktemp("seeds")
    no_threads = [a for a in FAST if not a.startswith("device.num_threads")]
    proc = run_cli(
        "-m",
        "optimizer.lr=0.01,-1",
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *no_threads,
        "trainer.max_steps=4",
        f"hydra.sweep.dir={tmp / 'sweep'}",
        cwd=tmp,
    )
    return tmp / "sweep", proc


def test_sweep_summary_csv_matches_every_job(lr_sweep):
    rows = read_csv(lr_sweep / "summary.csv")
    assert list(rows[0]) == [
        "job",
        "status",
        "error",
        "optimizer.lr",
        "test_accuracy",
        "test_loss",
        "train_seconds",
        "test_epoch",
        "val_accuracy",
        "best_val_accuracy",
        "best_epoch",
        "ranked_on",
    ]
    assert sorted(r["job"] for r in rows) == ["0", "1", "2"]
    assert {r["ranked_on"] for r in rows} == {"best_val_accuracy"}  # the card's sweep ranks on validation
    ranked = [float(r["best_val_accuracy"]) for r in rows]
    assert ranked == sorted(ranked, reverse=True)  # best first
    lrs = {}
    for row in rows:
        m = metrics(lr_sweep / row["job"])
        assert row["status"] == "completed" and row["error"] == ""
        for key in ("test_accuracy", "test_loss", "train_seconds", "best_val_accuracy"):
            assert float(row[key]) == m[key]
        lrs[row["job"]] = float(row["optimizer.lr"])
    assert lrs == {"0": 1e-3, "1": 3e-3, "2": 1e-2}
    md = (lr_sweep / "summary.md").read_text()
    assert "Ranked on best_val_accuracy; † test scores are reported, not used for selection." in md
    assert (
        "| job | status | error | optimizer.lr | test_accuracy † | test_loss † | train_seconds | test_epoch † | "
        "val_accuracy | best_val_accuracy | best_epoch |"
    ) in md
    best = rows[0]
    assert f"| {best['job']} | completed |  | {best['optimizer.lr']} | {float(best['test_accuracy']):.4f} |" in md
    assert "Mean ± std over seeds" not in md
    with Image.open(lr_sweep / "summary.png") as image:
        assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 200


def test_event_files_hold_hparams_with_final_metrics(lr_sweep):
    for job, lr in (("0", 1e-3), ("2", 1e-2)):
        run_dir = lr_sweep / job
        assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == [".hydra", "checkpoints"]  # no sub-runs
        events = EventAccumulator(str(run_dir))
        events.Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["optimizer.lr"].number_value == pytest.approx(lr)
        assert hparams["model.hidden_size"].number_value == 16
        assert hparams["data._target_"].string_value == "birnn.data.load_digits"
        final = events.Scalars("hparams/test_accuracy")
        assert [(e.step, e.value) for e in final] == [
            (metrics(run_dir)["steps"], pytest.approx(metrics(run_dir)["test_accuracy"]))
        ]


@pytest.mark.parametrize(
    "record, reason",
    [
        ("- !!python/object/apply:os.system ['touch pwned']\n", "could not determine a constructor for the tag"),
        ("optimizer.lr: 0.1\n", "not a list of override strings"),
        ("- 'optimizer.lr=(('\n", "mismatched input"),
        ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("- optimizer.lr=range(0,1000)\n", "optimizer.lr=range(0,1000) is a sweep, not one job's value"),
        ("- optimizer.lr=0.1,0.2\n", "optimizer.lr=0.1,0.2 is a sweep, not one job's value"),
    ],
)
def test_a_crafted_overrides_record_is_one_error_line(tmp_path, monkeypatch, capsys, record, reason):
    """A sweep's ``.hydra/overrides.yaml`` is data: read as plain YAML; a tag (ConstructorError) or anything but a
    list of overrides is one line naming the file."""
    for job, text in (("0", "- optimizer.lr=0.1\n"), ("1", record)):
        (tmp_path / "sweep" / job / ".hydra").mkdir(parents=True)
        (tmp_path / "sweep" / job / ".hydra" / "overrides.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert report.main([str(tmp_path / "sweep")]) == 2
    path = tmp_path / "sweep" / "1" / ".hydra" / "overrides.yaml"
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {path} is not a Hydra overrides record: {reason}")
    assert not (tmp_path / "pwned").exists()


def test_report_cli_rebuilds_the_summary_without_creating_run_dirs(lr_sweep, tmp_path, monkeypatch, capsys):
    sweep = shutil.copytree(lr_sweep, tmp_path / "copy")
    own = {name: (sweep / name).read_bytes() for name in ("summary.csv", "summary.md", "summary.png")}
    monkeypatch.chdir(tmp_path)
    assert report.main([str(sweep), "--metric", "test_loss"]) == 0
    out = capsys.readouterr().out
    rows = read_csv(sweep / "summary-test_loss.csv")
    losses = [float(r["test_loss"]) for r in rows]
    assert losses == sorted(losses)  # lower is better
    assert "best first by test_loss" in out and f"| {rows[0]['job']} | completed |" in out
    assert (sweep / "summary-test_loss.md").is_file() and (sweep / "summary-test_loss.png").is_file()
    stem = "summary-test_loss"
    assert out.strip().endswith(f"Wrote {stem}.csv, {stem}.md and {stem}.png to {sweep}")
    assert {name: (sweep / name).read_bytes() for name in own} == own  # the sweep's own summary is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no outputs/ from a Hydra app
    for name in own:
        (sweep / name).unlink()
    assert report.main([str(sweep)]) == 0  # without --metric: the sweep's own summary, rebuilt
    assert read_csv(sweep / "summary.csv")[0]["ranked_on"] == "best_val_accuracy"

    assert report.main([str(tmp_path / "missing")]) == 2
    assert report.main([str(sweep), "--metric", "nope"]) == 2
    err = capsys.readouterr().err
    assert "missing is not a directory" in err and "error: metric 'nope' is in no run's metrics.json" in err


def test_failed_jobs_are_marked_and_the_others_summarized(seed_sweep):
    sweep, proc = seed_sweep
    assert proc.returncode == 1  # Hydra reports the failure at the end
    rows = read_csv(sweep / "summary.csv")
    by_job = {r["job"]: r for r in rows}
    assert [r["status"] for r in rows] == ["completed", "completed", "failed", "failed"]
    for job in ("0", "1"):  # optimizer.lr=0.01, seeds 0 and 1
        assert by_job[job]["optimizer.lr"] == "0.01"
        assert float(by_job[job]["test_accuracy"]) == metrics(sweep / job)["test_accuracy"]
    for job in ("2", "3"):
        assert by_job[job]["optimizer.lr"] == "-1" and by_job[job]["test_accuracy"] == ""
        assert by_job[job]["error"] == "BirnnError: Invalid config: optimizer.lr must be a finite number > 0, got -1.0"
        assert not (sweep / job / "metrics.json").exists()
    assert json.loads((sweep / "2" / "status.json").read_text())["status"] == "failed"
    assert (
        "| 2 | failed | BirnnError: Invalid config: optimizer.lr must be a finite number > 0, got -1.0 | -1 | 0 |"
        in (sweep / "summary.md").read_text()
    )


def test_seed_sweep_gets_mean_and_std_over_seeds(seed_sweep):
    sweep, _ = seed_sweep
    accuracies = [metrics(sweep / job)["test_accuracy"] for job in ("0", "1")]
    losses = [metrics(sweep / job)["test_loss"] for job in ("0", "1")]
    md = (sweep / "summary.md").read_text()
    means = md.split("Mean ± std over seeds:")[1]
    assert "| optimizer.lr | seeds | test_accuracy † | test_loss † | train_seconds |" in means
    assert (
        f"| 0.01 | 2 | {statistics.fmean(accuracies):.4f} ± {statistics.stdev(accuracies):.4f} | "
        f"{statistics.fmean(losses):.4f} ± {statistics.stdev(losses):.4f} |"
    ) in means
    assert "| -1 |" not in means  # no completed seed to average


def test_joblib_launcher_shares_the_cores_between_parallel_jobs(seed_sweep):
    sweep, _ = seed_sweep
    for job in ("0", "1"):
        log = (sweep / job / "train.log").read_text()
        # run_cli's OMP_NUM_THREADS=1 reaches each worker and is kept; on more than 3 cores it is not the share
        kept = "" if CORES // 2 <= 1 else " (OMP_NUM_THREADS=1 in the environment)"
        assert f"joblib launcher with n_jobs=2 on {CORES} cores{kept}: 1 torch threads per job" in log


def test_threads_per_job_follows_the_joblib_launcher():
    try:
        for n_jobs, expected in ((-1, 1), (1, CORES), (10**6, 1)):
            HydraConfig.instance().set_config(
                compose_with_hydra("hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}")
            )
            assert threads_per_job()[1] == expected
        HydraConfig.instance().set_config(compose_with_hydra())
        assert threads_per_job() is None  # the basic launcher runs one job at a time
    finally:
        HydraConfig.instance().cfg = None


def test_submitit_local_ran_each_job_as_its_own_process(lr_sweep):
    logs = sorted((lr_sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 3  # one submitit job per sweep job
    # 13 steps: each job holds out 10% of the 1437 training samples for validation (1294 / 100 per batch)
    assert all(metrics(lr_sweep / job)["steps"] == 13 for job in ("0", "1", "2"))


def test_slurm_launcher_config_documents_the_cluster_keys():
    launcher = compose_with_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node, launcher.cpus_per_task) == (
        "gpu",
        240,
        1,
        8,
    )
    assert launcher.max_num_timeout > 0  # a timed-out job is requeued (and resumes in place)


def test_sweep_lr_preset_is_a_multirun_over_the_cards_rates():
    cfg = compose_with_hydra("experiment=sweep_lr")
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params == {"optimizer.lr": "1e-3,3e-3,1e-2"}


def test_a_failed_attempt_keeps_a_completed_record(tmp_path):
    summary.write_status(tmp_path, "failed", "RuntimeError: out of memory")
    summary.write_status(tmp_path, "completed")  # a retry that succeeded
    summary.write_status(tmp_path, "failed", "BirnnError: Cannot resume ...")  # then a refused relaunch
    assert json.loads((tmp_path / "status.json").read_text()) == {"status": "completed", "error": ""}


def test_a_validation_ranking_reports_the_test_scores_of_the_model_it_chose():
    """Issue #38: ranked on the best epoch's validation score, a job's test scores are that epoch's model's (best.pt),
    not the last epoch's; test_epoch says which epoch was tested."""

    def job(name: str, history: list[tuple[float, float]], **extra) -> summary.Job:
        epochs = [
            {"epoch": i + 1, "step": 10 * (i + 1), "test_accuracy": t, "val_accuracy": v}
            for i, (t, v) in enumerate(history)
        ]
        best = max(v for _, v in history)
        last = {"test_accuracy": history[-1][0], "val_accuracy": history[-1][1], "best_val_accuracy": best}
        m = {**last, "test_loss": 1.0, "train_seconds": 1.0, "epochs": len(history), "history": epochs, **extra}
        return summary.Job(name, "completed", "", {"seed": name}, {"seed": int(name)}, m)

    jobs = [
        job("0", [(0.90, 0.95), (0.85, 0.93)]),  # best epoch 1 (val 0.95): its test score is 0.90, not the last 0.85
        job("1", [(0.70, 0.80), (0.97, 0.96)]),  # best = last epoch
        job("2", [(0.5, 0.9)], test_on="best", test_epoch=1),  # tested best.pt itself
    ]
    rows = summary.Summary(jobs).rows()
    assert [r["best_epoch"] for r in rows] == [2, 1, 1]
    assert [(r["job"], r["test_accuracy"], r["test_epoch"]) for r in rows] == [
        ("1", 0.97, 2),
        ("0", 0.90, 1),
        ("2", 0.5, 1),
    ]
    assert [r["best_val_accuracy"] for r in rows] == [0.96, 0.95, 0.9]
    no_scores = job("3", [(0.9, 0.95), (0.8, 0.9)])  # test_every_epoch=false: the last model's score, said so
    no_scores.metrics["history"] = [
        {k: v for k, v in h.items() if k != "test_accuracy"} for h in no_scores.metrics["history"]
    ]
    (row,) = summary.Summary([no_scores]).rows()
    assert (row["test_accuracy"], row["test_epoch"], row["best_epoch"]) == (0.8, 2, 1)
    assert "test_epoch is the epoch whose model they score" in summary.Summary(jobs).markdown()


def test_the_docs_example_table_is_what_the_summary_writes():
    """docs/sweeps.md's example summary.md: its columns are the summary's for that sweep (validation columns
    included), best first by best_val_accuracy (issue #38: it showed a ranking on test)."""
    page = (CONF.parent / "docs" / "sweeps.md").read_text()
    example = page.split("/summary.md`", 1)[1].split("**Failed jobs.**")[0]
    lines = next(p for p in example.split("\n\n") if p.strip().startswith("| job |")).strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    metrics = {"test_accuracy": 0.9, "test_loss": 0.1, "train_seconds": 1.0, "val_accuracy": 0.9}
    metrics |= {"best_val_accuracy": 0.9, "epochs": 1, "history": [{"epoch": 1, "step": 9, "val_accuracy": 0.9}]}
    jobs = [
        summary.Job(str(i), "completed", "", {"optimizer.lr": lr, "seed": str(i)}, {}, metrics)
        for i, lr in enumerate(["0.001", "0.01"])
    ]
    expected = summary.Summary(jobs)
    assert "9 jobs (9 completed), best first by best_val_accuracy." in example
    assert expected.selection_note in " ".join(example.split())
    assert header == [expected.header(c) for c in expected.columns[:-1]]
    ranked = [float(r["best_val_accuracy"]) for r in rows]
    assert len(rows) == 9 and ranked == sorted(ranked, reverse=True)


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_a_non_finite_metric_among_seeds_is_summarized(tmp_path, monkeypatch, capsys, value):
    """``metrics.json`` may hold NaN or Infinity (Python's json reads and writes them): the mean and std over seeds
    were an AttributeError from ``statistics.stdev``."""
    for job, loss in (("0", "0.5"), ("1", value)):
        (tmp_path / "sweep" / job / ".hydra").mkdir(parents=True)
        (tmp_path / "sweep" / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / "sweep" / job / "metrics.json").write_text(f'{{"test_accuracy": 0.5, "test_loss": {loss}}}')
    monkeypatch.chdir(tmp_path)
    assert report.main([str(tmp_path / "sweep")]) == 0
    table = (tmp_path / "sweep" / "summary.md").read_text()
    assert "| 2 | 0.5000 ± 0.0000 | " + {"NaN": "nan ± nan", "Infinity": "inf ± nan"}[value] in table, table


def test_a_sweep_of_regression_runs_is_ranked_lowest_error_first(tmp_path):
    """task=regression (issue #36): the jobs rank on best_val_rmse ascending; the test columns are RMSE, not
    accuracy, averaged over seeds."""
    pytest.importorskip("aeon")
    sweep = tmp_path / "sweep"
    lrs = "optimizer.lr=0.0001,0.003,0.03"
    proc = run_cli("-m", lrs, "seed=0,1", *VALUES, "data.val_size=20", "trainer.epochs=2", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(sweep / "summary.csv")
    assert {r["ranked_on"] for r in rows} == {"best_val_rmse"} and "test_accuracy" not in rows[0]
    ranked = [float(r["best_val_rmse"]) for r in rows]
    assert ranked == sorted(ranked) and len(set(ranked)) > 1  # lowest error first
    for row in rows:
        m = metrics(sweep / row["job"])
        assert float(row["test_rmse"]) == m["test_rmse"] and float(row["best_val_rmse"]) == m["best_val_rmse"]
    md = (sweep / "summary.md").read_text()
    assert "Ranked on best_val_rmse" in md and "test_rmse †" in md and "Mean ± std over seeds" in md
