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
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from birnn.schema import console
from birnn.schema.config import CONFIG_DIR, apply_schemas, import_from_cwd
from birnn.schema.errors import BirnnError
from birnn.studies.objective import DONE, Objective, counts, not_optunas_pruned_line, trial_overrides, work
from birnn.studies.outputs import write_outputs
from birnn.studies.storage import OPEN_LOCK, open_study
from birnn.system import threads

log = logging.getLogger("birnn.search")


@contextmanager
def nothing_left_if_refused(study_dir: Path) -> Iterator[None]:
    """A worker refused before its first trial removes what it wrote: the log dir Hydra made for it under
    ``<study dir>/workers/``, then each folder above it that holds nothing else (a multirun's sweep dir with its
    ``multirun.yaml``, ``workers/``, the study dir with its ``.open.lock``, new folders within the working dir)."""
    try:
        yield
    except BirnnError:
        output_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
        if study_dir / "workers" in output_dir.parents:
            cwd = Path.cwd().resolve()
            stop = cwd if cwd in study_dir.parents else study_dir.parent
            shutil.rmtree(output_dir, ignore_errors=True)
            for folder in output_dir.parents:
                if folder == stop or not {p.name for p in folder.iterdir()} <= {OPEN_LOCK, "multirun.yaml"}:
                    break
                shutil.rmtree(folder)
        raise


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def job(cfg: DictConfig) -> None:
    """One worker of the study ``search.study_name``."""
    if cfg.get("search") is None:
        raise BirnnError("No search configured: name a search space, e.g. hparams_search=optuna")
    s = cfg.search
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study_dir = Path(s.dir).resolve()
    with nothing_left_if_refused(study_dir):
        if s.n_trials <= 0 or s.heartbeat_interval_s <= 0 or s.heartbeat_grace_s <= 0 or s.max_retries < 0:
            raise BirnnError(
                "search.n_trials, search.heartbeat_interval_s and search.heartbeat_grace_s must be > 0, "
                "search.max_retries >= 0"
            )
        base = trial_overrides(list(HydraConfig.get().overrides.task))
        apply_schemas(cfg)  # search.params may name keys a data file written without its schema line leaves out
        objective = Objective(cfg, base, study_dir)
        objective.config(base)  # a bad trial override fails here, before the study is touched
        study = open_study(cfg, base, study_dir)
    optuna.logging.enable_propagation()  # Optuna's messages go to train.log too
    optuna.logging.disable_default_handler()
    logging.getLogger("optuna.study._optimize").addFilter(not_optunas_pruned_line)
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
            grace_s=s.heartbeat_grace_s if "://" in (s.storage or "://") else None,
            after_trial=lambda study, _: write_outputs(study, study_dir, final=False),
        )
    finally:
        write_outputs(study, study_dir, final=True)
    log.info("Study %r done; summary in %s", s.study_name, study_dir / "study.md")


def main() -> None:
    threads.begin()
    import_from_cwd()
    if not any(a.startswith(("hparams_search=", "+hparams_search=")) for a in sys.argv[1:]):
        sys.argv.append("hparams_search=optuna")
    try:
        with console.one_line_errors():
            console.run_hydra(job)
    except KeyboardInterrupt:
        print("Search interrupted; run the same command to continue it.", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
