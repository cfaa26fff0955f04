"""``python -m birnn.search [overrides]``: one worker of an Optuna study over the training config.

The search space and the study's settings are ``search.*`` (``conf/hparams_search/optuna.yaml``); every
other override is the base of each trial. Trials train in this process, each in its own run dir
``<search.dir>/trials/<n>``, and report their validation accuracy after every epoch to the pruner. The study
lives in a storage (SQLite in the study dir by default), so the same command started again, or started on
several processes or machines at once, continues the same study: COMPLETE and PRUNED trials are never rerun,
and a trial whose worker died (heartbeat) or was interrupted is retried in its own run dir, resuming from
its checkpoint. Every worker stops once ``search.n_trials`` trials are COMPLETE or PRUNED.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import optuna
from filelock import FileLock
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from birnn import report
from birnn.engine import checkpoint, rundir
from birnn.engine.checkpoint import atomic_write
from birnn.records.callbacks import locked
from birnn.schema.config import CONFIG_DIR, import_from_cwd, validate
from birnn.schema.errors import BirnnError, first_line
from birnn.studies import selection
from birnn.studies.space import as_override, distribution, suggest

log = logging.getLogger("birnn.search")

PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
SEARCH_KEYS = ("search", "hparams_search")  # overrides of the study itself, not of its trials
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def open_storage(cfg: DictConfig, study_dir: Path) -> optuna.storages.BaseStorage:
    """The study's storage: SQLite in the study dir, an SQLAlchemy URL (with heartbeats), or a journal file."""
    url = cfg.storage or f"sqlite:///{study_dir / 'study.db'}"
    try:
        if "://" not in url:  # a journal file, e.g. on a shared disk
            return JournalStorage(JournalFileBackend(url))
        sqlite = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        return RDBStorage(
            url,
            engine_kwargs=sqlite,
            heartbeat_interval=cfg.heartbeat_interval_s,
            grace_period=cfg.heartbeat_grace_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(cfg.max_retries),
        )
    except Exception as e:  # SQLAlchemy, drivers, file system: say which storage and why, in one line
        raise BirnnError(f"Cannot open the study storage {url}: {first_line(e)}") from None


def trial_overrides(task: list[str]) -> list[str]:
    """The command line's overrides that configure each trial (those of the study itself removed)."""
    parsed = OverridesParser.create().parse_overrides(task)
    return [text for text, o in zip(task, parsed) if o.key_or_group.split(".")[0].lstrip("+~") not in SEARCH_KEYS]


def open_study(cfg: DictConfig, base: list[str], study_dir: Path) -> optuna.Study:
    """Create the study or load it; refuse one whose direction, search space or trial overrides differ."""
    s = cfg.search
    pruner_args = dict(s.pruners.get(s.pruner) or {})
    if s.pruner not in PRUNERS:
        raise BirnnError(f"search.pruner must be one of {', '.join(PRUNERS)}; got {s.pruner!r}")
    try:
        pruner = PRUNERS[s.pruner](**pruner_args)
        sampler = optuna.samplers.TPESampler(seed=s.seed + s.worker, **s.sampler_args)
    except TypeError as e:
        raise BirnnError(f"search.pruners.{s.pruner} / search.sampler_args: {e}") from None
    study_dir.mkdir(parents=True, exist_ok=True)
    # Workers started together would race to create the storage's tables and the study: one at a time here
    # (workers on other machines sharing an RDB server keep the retries).
    with FileLock(study_dir / ".open.lock"):
        for attempt in range(3):
            try:
                study = optuna.create_study(
                    study_name=s.study_name,
                    storage=open_storage(s, study_dir),
                    sampler=sampler,
                    pruner=pruner,
                    direction="maximize",
                    load_if_exists=True,
                )
                break
            except BirnnError:
                raise
            except Exception as e:
                if attempt == 2:
                    raise BirnnError(
                        f"Cannot open study {s.study_name!r} in {s.storage or study_dir}: {first_line(e)}"
                    ) from None
                time.sleep(1 + attempt)
    existing = len(study.get_trials(deepcopy=False))
    if existing:  # a restarted worker must not replay its seeded sequence over the trials already run
        study.sampler = optuna.samplers.TPESampler(seed=s.seed + s.worker + 10007 * existing, **s.sampler_args)
    space = {k: str(v) for k, v in s.params.items() if v is not None}
    attrs = study.user_attrs
    if "search_space" not in attrs:
        study.set_user_attr("search_space", space)
        study.set_user_attr("trial_overrides", base)
        attrs = study.user_attrs
    problems = (
        [f"direction {study.direction.name.lower()} (birnn maximizes validation accuracy)"]
        if study.direction != optuna.study.StudyDirection.MAXIMIZE
        else []
    )
    if attrs["search_space"] != space:
        problems.append(f"search space {attrs['search_space']} (now {space})")
    if attrs["trial_overrides"] != base:
        problems.append(f"trial overrides {attrs['trial_overrides']} (now {base})")
    if problems:
        raise BirnnError(
            f"Study {s.study_name!r} in {s.storage or study_dir} was created with a different "
            f"{'; '.join(problems)}. Use the original command, or a new search.study_name."
        )
    return study


@contextmanager
def trial_log(run_dir: Path) -> Iterator[None]:
    """Also log to ``<run_dir>/train.log`` while the trial runs (as Hydra does for a run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


class Objective:
    """Runs one trial: compose its config, train it in its run dir, report each epoch to the pruner."""

    def __init__(self, cfg: DictConfig, base: list[str], study_dir: Path):
        self.search, self.base, self.study_dir = cfg.search, base, study_dir
        self.space = {k: distribution(k, str(v)) for k, v in cfg.search.params.items() if v is not None}
        for key in self.space:
            if OmegaConf.select(cfg, key, default=KeyError) is KeyError:
                raise BirnnError(f"search.params.{key} is not a config key")

    def config(self, overrides: list[str]) -> DictConfig:
        try:
            cfg = compose(config_name="config", overrides=overrides)
        except Exception as e:  # Hydra's composition errors name the bad override
            raise BirnnError(f"Cannot compose a trial with {overrides}: {first_line(e)}") from None
        selection.resolve(cfg, compared=True)
        validate(cfg)
        return cfg

    def __call__(self, trial: optuna.Trial) -> float:
        from birnn.train import train

        params = {k: suggest(trial, k, d) for k, d in self.space.items()}
        root = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen(trial))
        run_dir = self.study_dir / "trials" / str(trial.number if root is None else root)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", self.search.worker)
        overrides = [*self.base, *(as_override(k, v) for k, v in params.items())]
        with trial_log(run_dir):
            try:
                cfg = self.config(overrides)
                if root is not None:
                    found = checkpoint.load_latest(run_dir / "checkpoints")
                    log.info(
                        "Trial %d continues trial %d %s",
                        trial.number,
                        root,
                        f"from its checkpoint ({found[1].name}, epoch {found[0]['progress']['epoch']}, step "
                        f"{found[0]['progress']['global_step']})"
                        if found
                        else "from the start (no checkpoint)",
                    )
                record = run_dir / ".hydra"
                if not (record / "overrides.yaml").is_file():
                    record.mkdir(parents=True, exist_ok=True)
                    OmegaConf.save(cfg, record / "config.yaml")
                    OmegaConf.save(OmegaConf.create(overrides), record / "overrides.yaml")
                log.info("Trial %d in %s: %s", trial.number, run_dir, " ".join(overrides[len(self.base) :]))
                pruned = Pruning(trial, cfg.trainer.epochs, cfg.trainer.monitor)
                with rundir.claim(run_dir, None, None, clean=False):  # one writer per trial dir
                    metrics = train(cfg, run_dir, on_evaluation=pruned)
            except rundir.Busy as e:  # another live worker has this trial's dir: its status is not ours to write
                log.error("Trial %d failed: %s", trial.number, e)
                trial.set_user_attr("error", str(e))
                return math.nan
            except BirnnError as e:
                log.error("Trial %d failed: %s", trial.number, e)
                report.write_status(run_dir, "failed", report.one_line(e))
                trial.set_user_attr("error", str(e))
                return math.nan  # Optuna marks the trial FAIL (one line, no traceback)
            except (KeyboardInterrupt, SystemExit):
                self.retry_later(trial)
                raise KeyboardInterrupt from None
        trial.set_user_attr("test_accuracy", metrics["test_accuracy"])
        trial.set_user_attr("epochs", metrics["epochs"])
        report.write_status(run_dir, "pruned" if pruned.stopped else "completed")
        if pruned.stopped:
            raise optuna.TrialPruned(f"at epoch {metrics['epochs']} of {cfg.trainer.epochs}")
        return metrics[f"best_{cfg.trainer.monitor}"]

    def retry_later(self, trial: optuna.Trial) -> None:
        """An interrupted trial (Ctrl-C, SIGTERM; its checkpoint is saved) is queued to continue at the next start."""
        RetryHeartbeatStaleTrialCallback(self.search.max_retries)(trial.study, frozen(trial))
        log.warning("Search interrupted in trial %d; the same command continues it from its checkpoint.", trial.number)


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """The stored record of a running trial (its system attributes say which trial it retries)."""
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


class Pruning:
    """``Run.on_evaluation`` for a trial: report each epoch's validation accuracy, stop when the pruner says."""

    def __init__(self, trial: optuna.Trial, epochs: int, monitor: str = "val_accuracy"):
        self.trial, self.epochs, self.monitor, self.reported, self.stopped = trial, epochs, monitor, set(), False

    def __call__(self, history: list[dict]) -> bool:
        for entry in history:  # a resumed trial reports the epochs of its earlier attempt too
            if entry["epoch"] not in self.reported and self.monitor in entry:
                self.trial.report(entry[self.monitor], entry["epoch"])
                self.reported.add(entry["epoch"])
        self.stopped = history[-1]["epoch"] < self.epochs and self.trial.should_prune()
        if self.stopped:
            log.info("Trial %d pruned after epoch %d.", self.trial.number, history[-1]["epoch"])
        return self.stopped


def counts(study: optuna.Study) -> dict[TrialState, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {state: states.count(state) for state in TrialState}


def work(
    study: optuna.Study, objective: Objective, n_trials: int, poll_s: float, heartbeat: bool, after_trial=None
) -> None:
    """Run trials until ``n_trials`` are COMPLETE or PRUNED, taking over the trials of workers that died
    (``heartbeat``: the storage has one; Optuna 5's journal storage has none)."""
    while True:
        if heartbeat:
            optuna.storages.fail_stale_trials(study)  # dead workers' trials -> FAIL, retried as WAITING
        n = counts(study)
        done, running, waiting = sum(n[s] for s in DONE), n[TrialState.RUNNING], n[TrialState.WAITING]
        if done >= n_trials:
            return
        if not waiting and done + running >= n_trials:
            if not heartbeat:
                log.info("The last %d trials are running in other workers; this worker is done.", running)
                return
            time.sleep(poll_s)  # wait for them: if their worker dies, its heartbeat stops and this one retries
            continue
        if n[TrialState.FAIL] - waiting >= max(n_trials, 3) and not done:
            raise BirnnError(f"{n[TrialState.FAIL]} trials failed and none completed; see their train.log")
        study.optimize(objective, n_trials=1, gc_after_trial=False, callbacks=[after_trial] if after_trial else None)


def write_outputs(study: optuna.Study, study_dir: Path, final: bool) -> None:
    """study.md (best trial, every trial's state) after each trial; at the end also summary.{csv,md,png} over
    the trial run dirs (as for a sweep) and Optuna's plots."""
    trials = study.get_trials(deepcopy=False)
    with locked(study_dir):
        atomic_write(study_dir / "study.md", lambda f: f.write(study_markdown(study, trials).encode()))
        if not final:
            return
        runs = sorted(
            {Path(t.user_attrs["run_dir"]) for t in trials if "run_dir" in t.user_attrs}, key=report.natural_key
        )
        runs = [r for r in runs if (r / ".hydra" / "overrides.yaml").is_file()]
        if runs:
            report.summarize(runs, study_dir)
        write_plots(study, study_dir)


def study_markdown(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    n = Counter(t.state.name for t in trials)
    lines = [
        f"# Study {study.study_name}",
        "",
        f"{len(trials)} trials: " + ", ".join(f"{k} {v}" for k, v in sorted(n.items())) + ".",
        "",
    ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        lines += [
            f"Best trial {best.number} ({best.user_attrs.get('run_dir')}): best validation accuracy "
            f"{best.value:.4f}, test accuracy {best.user_attrs.get('test_accuracy', float('nan')):.4f} "
            "(its tested checkpoint; test not used for selection).",
            "",
            "Best parameters: " + ", ".join(f"{k}={v}" for k, v in best.params.items()),
            "",
        ]
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    columns = ["trial", "state", *keys, "best_val_accuracy", "test_accuracy †", "epochs", "run dir", "retry of"]
    rows = [
        [
            str(t.number),
            t.state.name,
            *(str(t.params.get(k, "")) for k in keys),
            f"{t.value:.4f}" if t.value is not None and not math.isnan(t.value) else "",
            f"{t.user_attrs['test_accuracy']:.4f}" if "test_accuracy" in t.user_attrs else "",
            str(t.user_attrs.get("epochs", "")),
            Path(t.user_attrs.get("run_dir", "")).name,
            retried(t),
        ]
        for t in trials
    ]
    return "\n".join([*lines, report.table(columns, rows), "", "† not used for selection.", ""])


def retried(trial: FrozenTrial) -> str:
    """The number of the trial that ``trial`` continues, or an empty string."""
    number = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return "" if number is None else str(number)


def write_plots(study: optuna.Study, study_dir: Path) -> None:
    """Optuna's optimization history and parameter importances (matplotlib) as PNGs; skipped when too few trials."""
    from optuna.visualization import matplotlib as plots

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        log.info("No history.png / importance.png yet: they need two completed trials.")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, plot in (("history", plots.plot_optimization_history), ("importance", plots.plot_param_importances)):
            try:
                axes = plot(study)
                axes.figure.savefig(study_dir / f"{name}.png", dpi=100, bbox_inches="tight")
                axes.figure.clf()
            except Exception as e:  # e.g. importances need two completed trials
                log.info("No %s.png: %s", name, first_line(e))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def job(cfg: DictConfig) -> None:
    """One worker of the study ``search.study_name``."""
    if cfg.get("search") is None:
        raise BirnnError("No search configured: name a search space, e.g. hparams_search=optuna")
    s = cfg.search
    if s.n_trials <= 0 or s.heartbeat_interval_s <= 0 or s.heartbeat_grace_s <= 0 or s.max_retries < 0:
        raise BirnnError(
            "search.n_trials, search.heartbeat_interval_s and search.heartbeat_grace_s must be > 0, "
            "search.max_retries >= 0"
        )
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study_dir = Path(s.dir).resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    base = trial_overrides(list(HydraConfig.get().overrides.task))
    objective = Objective(cfg, base, study_dir)
    objective.config(base)  # a bad trial override fails here, before the study is touched
    study = open_study(cfg, base, study_dir)
    optuna.logging.enable_propagation()  # Optuna's messages go to train.log too
    optuna.logging.disable_default_handler()
    log.info(
        "Worker %d on study %r (%s): %d of %d trials done.",
        s.worker,
        s.study_name,
        s.storage or study_dir,
        sum(counts(study)[st] for st in DONE),
        s.n_trials,
    )
    try:
        work(
            study,
            objective,
            s.n_trials,
            poll_s=min(5.0, s.heartbeat_interval_s),
            heartbeat="://" in (s.storage or "://"),
            after_trial=lambda study, _: write_outputs(study, study_dir, final=False),
        )
    finally:
        write_outputs(study, study_dir, final=True)
    log.info("Study %r done; summary in %s", s.study_name, study_dir / "study.md")


def main() -> None:
    import_from_cwd()
    if not any(a.startswith(("hparams_search=", "+hparams_search=")) for a in sys.argv[1:]):
        sys.argv.append("hparams_search=optuna")
    try:
        job()
    except KeyboardInterrupt:
        print("Search interrupted; run the same command to continue it.", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
