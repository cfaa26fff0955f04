"""Studies: selection on validation (test_on, test_every_epoch), K-fold CV, and the Optuna search
(``python -m birnn.search``): several workers on one storage, kill -9 and resume, pruning, clear errors."""

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from birnn.data.pipeline import holdout, load_digits
from birnn.schema.config import validate
from birnn.schema.errors import BirnnError
from birnn.studies.objective import SKIPPED, Objective, counts, work
from birnn.studies.outputs import study_markdown
from birnn.studies.space import distribution
from conftest import FAST, ROOT, VALUES, free_port, make_cfg, run_cli, wait_for

TINY_SPACE = "search.params={optimizer.lr:'tag(log,interval(0.003,0.03))',model.hidden_size:null,data.batch_size:null}"
BAD_RANGES = {
    "interval(3e-2,1e-4)": "`low <= high` must hold, but got (low=0.03, high=0.0001).",
    "tag(log,interval(0,1))": "`low > 0` must hold for `log=True`, but got (low=0.0, high=1.0).",
    "range(1,5,0)": "the step must not be 0",
    "range(5,1)": "the range holds no values (from 5 to 1 by 1)",
    "interval(1e-3,inf)": "the bounds must be finite numbers, got 0.001, inf",
}


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def search_args(study: Path, *extra: str) -> list[str]:
    return [*FAST, "trainer.epochs=2", TINY_SPACE, "search.pruner=none", f"search.dir={study}", *extra]


def load(study: Path) -> optuna.Study:
    return optuna.load_study(study_name="birnn", storage=f"sqlite:///{study / 'study.db'}")


def by_state(study: optuna.Study, state: TrialState) -> list:
    return study.get_trials(deepcopy=False, states=(state,))


def kill_args(study_dir: Path, *extra: str) -> list[str]:
    """A study whose trials checkpoint each of their six epochs, so a worker killed mid-trial leaves one to resume;
    a dead worker's trial is failed and retried two seconds after its last heartbeat."""
    return [
        *FAST,
        "trainer.epochs=6",
        "data.batch_size=20",
        TINY_SPACE,
        "search.pruner=none",
        f"search.dir={study_dir}",
        "search.heartbeat_interval_s=1",
        "search.heartbeat_grace_s=2",
        *extra,
    ]


def start_worker(args: list[str], cwd: Path, name: str = "worker") -> subprocess.Popen:
    """A search worker in its own process, its output in ``<cwd>/<name>.log`` (a pipe nobody reads could fill)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with (cwd / f"{name}.log").open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "birnn.search", *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def finish(workers: list[subprocess.Popen], cwd: Path, names: list[str]) -> None:
    """Wait for the workers; each must succeed (else their logs' ends are the failure message)."""
    codes = [w.wait(timeout=300) for w in workers]
    assert codes == [0] * len(workers), "\n".join((cwd / f"{n}.log").read_text()[-3000:] for n in names)


def assert_continued_from_its_checkpoint(study: optuna.Study, dead: FrozenTrial) -> None:
    """The killed trial is FAIL; its retry completed in the killed trial's run dir, resuming from its checkpoint."""
    assert study.trials[dead.number].state == TrialState.FAIL
    [retry] = [t for t in by_state(study, TrialState.COMPLETE) if t.system_attrs.get("failed_trial") == dead.number]
    run_dir = Path(dead.user_attrs["run_dir"])
    assert retry.params == dead.params and retry.user_attrs["run_dir"] == str(run_dir)
    log = (run_dir / "train.log").read_text()
    assert f"Trial {retry.number} continues trial {dead.number} from its checkpoint" in log and "Resuming from" in log
    assert metrics(run_dir)["epochs"] == 6


# --- selection on validation -------------------------------------------------------------------------------


def test_test_on_best_scores_the_best_val_checkpoint_once(tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        *FAST,
        "trainer.epochs=4",
        "data.val_size=300",
        "optimizer.lr=0.03",
        "trainer.test_on=best",
        "trainer.test_every_epoch=false",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    m = metrics(run)
    assert all("test_accuracy" not in e for e in m["history"])  # no per-epoch test pass
    best = max(m["history"], key=lambda e: e["val_accuracy"])  # the first of equals, as best.pt keeps it
    assert m["test_on"] == "best" and m["test_epoch"] == best["epoch"]
    assert m["best_val_accuracy"] == best["val_accuracy"]
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert state["progress"]["epoch"] == best["epoch"]


def test_a_single_run_scores_test_every_epoch_and_a_multirun_does_not(tmp_path):
    cfg = make_cfg(*FAST)
    assert cfg.trainer.test_every_epoch is None and cfg.trainer.test_on == "last"
    proc = run_cli(
        "-m", *FAST, "trainer.epochs=2", "optimizer.lr=0.01", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    m = metrics(tmp_path / "s" / "0")
    assert [sorted(e) for e in m["history"]] == [["epoch", "step", "val_accuracy", "val_loss"]] * 2
    assert "test_accuracy" in m and m["test_on"] == "last"
    assert "holding out data.val_fraction=0.1" in (tmp_path / "s" / "0" / "train.log").read_text()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("trainer.test_on=best",), "trainer.test_on=best needs a validation split"),
        (("data.folds=5", "data.val_size=100"), "data.folds and data.val_size/data.val_fraction exclude each other"),
        (("data.folds=5", "data.fold=5"), "data.fold must be in [0, data.folds)"),
        (("data.folds=1",), "data.folds must be 0 (off) or > 1"),
    ],
)
def test_bad_selection_settings_are_refused(overrides, message):
    with pytest.raises(BirnnError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        validate(make_cfg(*FAST, *overrides))


# --- cross-validation --------------------------------------------------------------------------------------


def test_stratified_folds_are_disjoint_and_cover_the_training_split():
    train_y = load_digits().train_y
    folds = [holdout(make_cfg(*FAST, "data.folds=5", f"data.fold={i}").data, train_y) for i in range(5)]
    together = torch.cat(folds)
    assert len(together) == len(train_y) and len(set(together.tolist())) == len(train_y)  # disjoint, covering
    for fold in folds:  # stratified: every class in the same proportion, within one sample
        expected = torch.bincount(train_y, minlength=10) / 5
        assert (torch.bincount(train_y[fold], minlength=10) - expected).abs().max() <= 1
    other_seed = holdout(make_cfg(*FAST, "data.folds=5", "data.fold=0", "data.split_seed=1").data, train_y)
    assert not torch.equal(other_seed, folds[0])


def test_five_fold_cv_on_digits_gives_mean_and_std_over_folds(tmp_path):
    sweep = tmp_path / "cv"
    proc = run_cli("experiment=cv", *FAST, "trainer.epochs=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = [metrics(sweep / str(i)) for i in range(5)]
    assert not (sweep / "5").exists()
    val = [m["best_val_accuracy"] for m in runs]
    md = (sweep / "summary.md").read_text()
    assert "best first by best_val_accuracy" in md and "Mean ± std over folds:" in md
    assert "| 5 | " in md.split("Mean ± std over folds:")[1]
    assert f"{statistics.fmean(val):.4f} ± {statistics.stdev(val):.4f}" in md
    test = [m["test_accuracy"] for m in runs]
    assert len(set(test)) > 1  # five different models, one test split


def test_folds_of_values_are_plain_kfold_over_the_training_split():
    """task=regression (issue #36): no class to stratify by; the folds are scikit-learn's KFold, seeded the same."""
    pytest.importorskip("aeon")
    from sklearn.model_selection import KFold

    from birnn.data.pipeline import load_data
    from birnn.data.uea import load_uea

    train_y = load_uea(name="Covid3Month", task="regression").train_y.float()
    folds = KFold(n_splits=5, shuffle=True, random_state=0).split(train_y.numpy())
    for i, (_, expected) in enumerate(folds):
        cfg = make_cfg(*VALUES, "data.folds=5", f"data.fold={i}")
        splits = load_data(cfg.data, torch.device("cpu"), task={"name": "regression"})
        assert torch.equal(splits.val_y, train_y[expected]), i
        assert len(splits.train_y) + len(splits.val_y) == len(train_y)


def test_more_plain_folds_than_training_samples_are_one_error():
    """Plain KFold (values, tags) over fewer training samples than folds: scikit-learn's ValueError traceback
    before."""
    with pytest.raises(BirnnError, match="data.folds=3 needs at least 3 training samples; there are 2"):
        holdout(make_cfg(*FAST, "data.folds=3", "data.fold=0").data, torch.tensor([1.5, 2.5]), stratified=False)


def test_a_search_on_values_minimizes_the_error(tmp_path):
    """birnn-search under task=regression: the study minimizes best_val_rmse, and study.md says so."""
    pytest.importorskip("aeon")
    study_dir = tmp_path / "study"
    space = "search.params={optimizer.lr:'choice(0.0001,0.03)',model.hidden_size:null,data.batch_size:null}"
    args = [*VALUES, "data.val_size=20", "trainer.epochs=2", space, "search.pruner=none", "search.n_trials=3"]
    proc = run_cli(*args, f"search.dir={study_dir}", cwd=tmp_path, module="birnn.search", timeout=300)
    assert proc.returncode == 0, proc.stderr
    study = load(study_dir)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    complete = by_state(study, TrialState.COMPLETE)
    assert study.best_trial.value == min(t.value for t in complete)
    for t in complete:
        assert metrics(Path(t.user_attrs["run_dir"]))["best_val_rmse"] == t.value
    md = (study_dir / "study.md").read_text()
    assert "| best_val_rmse | test_rmse † |" in md
    assert f"best val_rmse {study.best_trial.value:.4f}, test_rmse" in md


# --- the search --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_on_one_storage_complete_the_trials_between_them(tmp_path):
    study_dir = tmp_path / "study"
    args = search_args(study_dir, "search.n_trials=8", "search.heartbeat_interval_s=2", "search.heartbeat_grace_s=20")
    names = ["worker0", "worker1"]
    workers = [start_worker([*args, f"search.worker={i}"], tmp_path, name) for i, name in enumerate(names)]
    finish(workers, tmp_path, names)
    study = load(study_dir)
    trials = study.get_trials(deepcopy=False)
    assert len(by_state(study, TrialState.COMPLETE)) == 8 and len(trials) == 8
    assert sorted(t.number for t in trials) == list(range(8))
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}  # both took trials
    for t in trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == study_dir / "trials" / str(t.number)
        assert metrics(run_dir)["best_val_accuracy"] == t.value
    md = (study_dir / "study.md").read_text()
    assert "COMPLETE 8" in md and f"Best trial {study.best_trial.number} " in md
    assert (study_dir / "history.png").is_file() and (study_dir / "importance.png").is_file()


@pytest.mark.slow
def test_kill_9_of_the_driver_then_the_same_command_finishes_the_study(tmp_path):
    study_dir = tmp_path / "study"
    args = kill_args(study_dir, "search.n_trials=3")
    driver = start_worker(args, tmp_path)
    wait_for(lambda: (study_dir / "trials" / "1" / "checkpoints" / "last.pt").exists() or driver.poll() is not None)
    driver.kill()  # mid-trial 1: one of its six epochs is checkpointed
    driver.wait()
    assert not (study_dir / "trials" / "1" / "metrics.json").exists()
    first = (study_dir / "trials" / "0" / "metrics.json").stat().st_mtime_ns

    proc = run_cli(*args, cwd=tmp_path, module="birnn.search", timeout=300)
    assert proc.returncode == 0, proc.stderr
    study = load(study_dir)
    complete = by_state(study, TrialState.COMPLETE)
    assert len(complete) == 3  # exactly n_trials
    assert len({tuple(t.params.items()) for t in complete}) == 3  # none rerun
    assert (study_dir / "trials" / "0" / "metrics.json").stat().st_mtime_ns == first
    [dead] = by_state(study, TrialState.FAIL)
    assert dead.number == 1
    assert_continued_from_its_checkpoint(study, dead)
    assert sorted(p.name for p in (study_dir / "trials").iterdir()) == sorted(
        {Path(t.user_attrs["run_dir"]).name for t in complete}
    )  # the retry used trial 1's own run dir


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on localhost (Debian's ``postgresql`` package) holding an empty database."""
    pytest.importorskip("psycopg", reason="postgresql:// needs psycopg: pip install 'birnn[optuna]'")
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    bin_dir, port = found[-1].parent, free_port()
    data = Path(tempfile.mkdtemp(prefix="birnn-pg-"))  # outside pytest's tmp dir, which the postgres user cannot enter
    as_postgres = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(data, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]

    def pg(tool: str, *args: str) -> None:
        subprocess.run([*as_postgres, str(bin_dir / tool), *args], check=True, capture_output=True, timeout=120)

    pg("initdb", "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    pg("pg_ctl", "-D", str(data), "-o", options, "-l", str(data / "server.log"), "-w", "start")
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "studies")
        yield f"postgresql://postgres@127.0.0.1:{port}/studies"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_three_workers_on_postgresql_one_killed_9_finish_exactly_n_trials(tmp_path, postgres_url):
    study_dir = tmp_path / "study"
    args = kill_args(study_dir, "search.n_trials=4", f"search.storage={postgres_url}")
    names = ["worker0", "worker1", "worker2"]
    workers = [start_worker([*args, f"search.worker={i}"], tmp_path, name) for i, name in enumerate(names)]
    wait_for(lambda: any(study_dir.glob("trials/*/checkpoints/last.pt")))  # the study and its tables exist
    study = optuna.load_study(study_name="birnn", storage=postgres_url)
    running: list[FrozenTrial] = []

    def mid_trial() -> bool:
        """A running trial with a checkpoint and epochs left (``running`` holds it)."""
        running[:] = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if "run_dir" in t.user_attrs  # a trial just started has no run dir yet
            and (Path(t.user_attrs["run_dir"]) / "checkpoints" / "last.pt").exists()
            and not (Path(t.user_attrs["run_dir"]) / "metrics.json").exists()
        ]
        return bool(running)

    wait_for(mid_trial)
    dead = running[0]
    killed = workers.pop(dead.user_attrs["worker"])
    names.pop(dead.user_attrs["worker"])
    killed.kill()
    killed.wait()
    finish(workers, tmp_path, names)

    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4  # exactly n_trials, over the three workers
    assert_continued_from_its_checkpoint(study, dead)
    skipped = [t for t in trials if SKIPPED in t.user_attrs]
    assert all(t.state == TrialState.FAIL and not t.params for t in skipped)  # started at once, never run
    assert len(trials) == 4 + 1 + len(skipped)  # the finished ones, the killed one, the skipped ones
    assert "5 trials: COMPLETE 4, FAIL 1." in (study_dir / "study.md").read_text()
    assert (study_dir / "history.png").is_file()


def test_a_poor_region_is_pruned_before_its_last_epoch(tmp_path):
    study_dir = tmp_path / "study"
    poor = "search.params={optimizer.lr:'choice(0.03,0.00001)',model.hidden_size:null,data.batch_size:null}"
    proc = run_cli(
        *FAST,
        "trainer.epochs=4",
        poor,
        "search.pruner=median",
        "search.pruners.median={n_startup_trials:1,n_warmup_steps:0}",
        "search.n_trials=6",
        f"search.dir={study_dir}",
        cwd=tmp_path,
        module="birnn.search",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    study = load(study_dir)
    pruned = by_state(study, TrialState.PRUNED)
    assert pruned and all(t.params["optimizer.lr"] == 0.00001 for t in pruned)
    output = proc.stdout + proc.stderr
    for t in pruned:
        run_dir = Path(t.user_attrs["run_dir"])
        epochs = metrics(run_dir)["epochs"]
        assert epochs < 4  # stopped early; its run dir and records stay
        assert json.loads((run_dir / "status.json").read_text())["status"] == "pruned"
        assert f"Trial {t.number} pruned at epoch {epochs} of 4.\n" in output
        assert "test_accuracy" not in metrics(run_dir) and "Test accuracy" not in (run_dir / "train.log").read_text()
    assert " pruned. " not in output
    assert len(by_state(study, TrialState.COMPLETE)) + len(pruned) == 6
    assert "| pruned |" in (study_dir / "summary.md").read_text()
    assert "PRUNED" in (study_dir / "study.md").read_text()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
def test_a_worker_waiting_for_a_dead_workers_trial_says_so_once(tmp_path, caplog):
    storage = RDBStorage(
        f"sqlite:///{tmp_path / 'study.db'}",
        heartbeat_interval=1,
        grace_period=1,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(1),
    )
    study = optuna.create_study(storage=storage)
    storage.record_heartbeat(study.ask()._trial_id)  # a worker that then died mid-trial
    with caplog.at_level(logging.INFO, logger="birnn.search"):
        work(study, lambda trial: 0.5, n_trials=1, poll_s=0.05, grace_s=1)
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Waiting")]
    assert waits == [
        "Waiting for 1 trial(s) still running in other workers; a dead worker's trials are retried here once its "
        "heartbeat has been silent for 1 s (search.heartbeat_grace_s)."
    ]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]  # retried here


@pytest.mark.slow
def test_one_worker_on_a_fresh_storage_samples_the_same_trials(tmp_path):
    params = []
    for name in ("a", "b"):
        proc = run_cli(
            *search_args(tmp_path / name, "search.n_trials=2", "trainer.epochs=1"), cwd=tmp_path, module="birnn.search"
        )
        assert proc.returncode == 0, proc.stderr
        params.append([t.params for t in load(tmp_path / name).get_trials()])
    assert params[0] == params[1] and params[0][0] != params[0][1]


@pytest.mark.slow
def test_bad_search_input_is_one_clear_line_and_loses_nothing(tmp_path):
    study_dir = tmp_path / "study"
    proc = run_cli(
        *search_args(study_dir, "search.n_trials=1", "trainer.epochs=1"), cwd=tmp_path, module="birnn.search"
    )
    assert proc.returncode == 0, proc.stderr
    before = (study_dir / "study.db").read_bytes()
    cases = [
        (
            search_args(study_dir, "search.n_trials=1", "search.params={model.hiddn:'choice(8,16)'}"),
            "search.params.model.hiddn is not a config key",
        ),
        (
            search_args(study_dir, "search.n_trials=1", "search.params={optimizer.lr:'choice(0.01,0.02)'}"),
            "was created with a different search space",
        ),
        (
            search_args(tmp_path / "other", "search.storage=sqlite:////nonexistent/dir/s.db"),
            "Cannot open the study storage sqlite:////nonexistent/dir/s.db",
        ),
    ]
    for args, message in cases:
        proc = run_cli(*args, cwd=tmp_path, module="birnn.search")
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert (study_dir / "study.db").read_bytes() == before
    assert len(list((study_dir / "workers").iterdir())) == 1  # the first worker's record only
    assert not (tmp_path / "other").exists()
    proc = run_cli("hparams_search=optuna", *FAST, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode != 0 and "run it with python -m birnn.search" in proc.stderr


@pytest.mark.parametrize(
    "table, column",
    [("study_user_attributes", "value_json"), ("trial_params", "distribution_json")],
)
def test_a_damaged_study_field_is_one_clear_line(tmp_path, table, column):
    """Optuna keeps attributes and distributions as JSON text: a damaged one was a JSONDecodeError traceback."""
    import sqlite3

    study_dir = tmp_path / "study"
    study_dir.mkdir()
    storage = f"sqlite:///{study_dir / 'study.db'}"
    study = optuna.create_study(study_name="birnn", storage=storage, direction="maximize")
    study.set_user_attr("search_space", {})
    trial = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(0.003, 0.03, log=True)})
    study.tell(trial, 0.5)
    with sqlite3.connect(study_dir / "study.db") as db:
        db.execute(f"UPDATE {table} SET {column} = '{{broken'")
    proc = run_cli(*search_args(study_dir, "search.n_trials=1"), cwd=tmp_path, module="birnn.search")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1:] == [
        f"error: Study 'birnn' in {study_dir} is damaged: a stored field is not valid JSON (Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1)). Restore its storage from a copy, or start a new "
        "search.study_name"
    ]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("spec", BAD_RANGES)
def test_a_bad_search_range_is_one_clear_error(spec):
    with pytest.raises(BirnnError) as info:
        distribution("optimizer.lr", spec)
    assert str(info.value) == f"search.params.optimizer.lr={spec}: {BAD_RANGES[spec]}"


def test_ranges_convert_to_the_values_hydra_would_sweep():
    assert distribution("k", "range(5,1,-1)") == optuna.distributions.IntDistribution(2, 5)
    assert distribution("k", "range(1,10,3)") == optuna.distributions.IntDistribution(1, 7, step=3)
    assert distribution("k", "tag(log,interval(1e-4,3e-2))") == optuna.distributions.FloatDistribution(
        1e-4, 3e-2, log=True
    )


@pytest.mark.parametrize("spec", ["interval(1e-3,inf)", "range(1,5,0)"])
def test_a_refused_search_writes_nothing(tmp_path, spec):
    space = f"search.params={{optimizer.lr:'{spec}',model.hidden_size:null,data.batch_size:null}}"
    proc = run_cli(*search_args(tmp_path / "study"), space, cwd=tmp_path, module="birnn.search")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: search.params.optimizer.lr={spec}: {BAD_RANGES[spec]}"]
    assert list(tmp_path.iterdir()) == []  # no study.db, no workers/ (the worker's Hydra dir is removed)


def test_a_trial_started_when_n_trials_are_running_or_done_is_not_run_nor_counted(tmp_path):
    """Workers that count the trials at the same moment may each start one: only the first n_trials run."""
    objective = Objective(make_cfg("hparams_search=optuna", *FAST, "search.n_trials=2"), [], tmp_path)
    study = optuna.create_study(direction="maximize")
    dead, _ = study.ask(), study.ask()  # two workers' trials, running
    study.tell(dead, state=TrialState.FAIL)  # one of them died: its retry still runs
    assert not objective.one_too_many(study.ask())
    study.optimize(objective, n_trials=1)  # a third worker's trial, started while those two run: not run
    extra = study.trials[-1]
    assert extra.number == 3 and extra.state == TrialState.FAIL and extra.params == {}
    assert extra.user_attrs[SKIPPED] == "2 trials before it were already running or done (search.n_trials=2)"
    assert counts(study)[TrialState.FAIL] == 1  # the dead trial only
    md = study_markdown(study, study.trials)
    assert "3 trials: FAIL 1, RUNNING 2." in md and "Not counted: trial 3, started by workers" in md
