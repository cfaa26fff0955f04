"""A worker of a study: each trial composed from the base overrides and the sampled values, trained in its own
run dir with the pruner watching each epoch, until the study holds ``search.n_trials`` finished trials."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from birnn.engine import checkpoint, rundir
from birnn.engine.training import train
from birnn.records import summary
from birnn.schema.config import apply_schemas, validate
from birnn.schema.errors import BirnnError, first_line
from birnn.schema.metrics import MONITORS, headline
from birnn.studies import selection
from birnn.studies.space import as_override, distribution, suggest

log = logging.getLogger("birnn.search")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


SEARCH_KEYS = ("search", "hparams_search")  # overrides of the study itself, not of its trials


SKIPPED = "skipped"  # user attr of a trial started when n_trials were already running or done: never run


def trial_overrides(task: list[str]) -> list[str]:
    """The command line's overrides that configure each trial (those of the study itself removed)."""
    parsed = OverridesParser.create().parse_overrides(task)
    return [text for text, o in zip(task, parsed) if o.key_or_group.split(".")[0].lstrip("+~") not in SEARCH_KEYS]


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
        apply_schemas(cfg)
        selection.resolve(cfg, compared=True)
        validate(cfg)
        return cfg

    def __call__(self, trial: optuna.Trial) -> float:
        if self.one_too_many(trial):
            return math.nan  # FAIL, marked skipped: never counted, never retried
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
                summary.write_status(run_dir, "failed", summary.one_line(e))
                trial.set_user_attr("error", str(e))
                return math.nan  # Optuna marks the trial FAIL (one line, no traceback)
            except (KeyboardInterrupt, SystemExit):
                self.retry_later(trial)
                raise KeyboardInterrupt from None
        trial.set_user_attr("epochs", metrics["epochs"])
        summary.write_status(run_dir, "pruned" if pruned.stopped else "completed")
        if pruned.stopped:
            log.info("Trial %d pruned at epoch %d of %d.", trial.number, metrics["epochs"], cfg.trainer.epochs)
            raise optuna.TrialPruned()  # Optuna's own line for it is left out: not_optunas_pruned_line
        trial.set_user_attr(headline(metrics), metrics[headline(metrics)])
        trial.set_user_attr("monitor", cfg.trainer.monitor)
        return metrics[f"best_{cfg.trainer.monitor}"]

    def one_too_many(self, trial: optuna.Trial) -> bool:
        """Whether ``search.n_trials`` trials numbered before this one are running or done: workers that counted
        the trials at the same moment each started one, and the later ones must not run (Optuna numbers trials
        in the order the storage created them, so every worker reaches the same verdict)."""
        states = (*DONE, TrialState.RUNNING)
        ahead = [t for t in trial.study.get_trials(deepcopy=False, states=states) if t.number < trial.number]
        if len(ahead) < self.search.n_trials:
            return False
        reason = f"{len(ahead)} trials before it were already running or done (search.n_trials={self.search.n_trials})"
        trial.set_user_attr(SKIPPED, reason)
        log.info("Trial %d not run: %s.", trial.number, reason)
        return True

    def retry_later(self, trial: optuna.Trial) -> None:
        """An interrupted trial (Ctrl-C, SIGTERM; its checkpoint is saved) is queued to continue at the next start."""
        RetryHeartbeatStaleTrialCallback(self.search.max_retries)(trial.study, frozen(trial))
        log.warning("Search interrupted in trial %d; the same command continues it from its checkpoint.", trial.number)


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """The stored record of a running trial (its system attributes say which trial it retries)."""
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


class Pruning:
    """``Run.on_evaluation`` for a trial: report each epoch's ``monitor`` score, stop when the pruner says."""

    def __init__(self, trial: optuna.Trial, epochs: int, monitor: str = MONITORS[0]):
        self.trial, self.epochs, self.monitor, self.reported, self.stopped = trial, epochs, monitor, set(), False

    def __call__(self, history: list[dict]) -> bool:
        for entry in history:  # a resumed trial reports the epochs of its earlier attempt too
            if entry["epoch"] not in self.reported and self.monitor in entry:
                self.trial.report(entry[self.monitor], entry["epoch"])
                self.reported.add(entry["epoch"])
        self.stopped = history[-1]["epoch"] < self.epochs and self.trial.should_prune()
        return self.stopped


def not_optunas_pruned_line(record: logging.LogRecord) -> bool:
    """Leave out Optuna's "Trial N pruned. " line: the trial logs its own, with the epoch it stopped at."""
    return " pruned. " not in record.getMessage()


def counts(study: optuna.Study) -> dict[TrialState, int]:
    """Trials per state, those skipped as one too many left out."""
    states = [t.state for t in study.get_trials(deepcopy=False) if SKIPPED not in t.user_attrs]
    return {state: states.count(state) for state in TrialState}


def work(
    study: optuna.Study, objective: Objective, n_trials: int, poll_s: float, grace_s: int | None, after_trial=None
) -> None:
    """Run trials until ``n_trials`` are COMPLETE or PRUNED, taking over the trials of workers that died: those
    whose heartbeat is ``grace_s`` old (None: the storage has no heartbeat, as Optuna 5's journal storage)."""
    said = 0  # the running trials this worker last said it waits for
    while True:
        if grace_s is not None:
            optuna.storages.fail_stale_trials(study)  # dead workers' trials -> FAIL, retried as WAITING
        n = counts(study)
        done, running, waiting = sum(n[s] for s in DONE), n[TrialState.RUNNING], n[TrialState.WAITING]
        if done >= n_trials:
            return
        if not waiting and done + running >= n_trials:
            if grace_s is None:
                log.info("The last %d trials are running in other workers; this worker is done.", running)
                return
            if running != said:
                log.info(
                    "Waiting for %d trial(s) still running in other workers; a dead worker's trials are retried "
                    "here once its heartbeat has been silent for %d s (search.heartbeat_grace_s).",
                    running,
                    grace_s,
                )
                said = running
            time.sleep(poll_s)  # wait for them: if their worker dies, its heartbeat stops and this one retries
            continue
        if n[TrialState.FAIL] - waiting >= max(n_trials, 3) and not done:
            raise BirnnError(f"{n[TrialState.FAIL]} trials failed and none completed; see their train.log")
        study.optimize(objective, n_trials=1, gc_after_trial=False, callbacks=[after_trial] if after_trial else None)
