"""Hydra callback: each job records how it ended, and a multirun keeps its summary up to date.

Hydra's basic sweeper re-raises a failed job's error before ``on_multirun_end`` runs, so the summary is
rebuilt at the end of every job (from the records of all jobs finished so far) as well as at the end of
the multirun. Parallel jobs (joblib, submitit) take turns through a lock on the sweep dir.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from birnn.records import summary
from birnn.schema.errors import BirnnError, Lost, Refused

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """``status.json`` in every run dir; ``summary.{csv,md,png}`` in every sweep dir.

    ``metric``: the summary's sort key, best first (null: best_val_accuracy when the runs have it, else test_accuracy).
    """

    def __init__(self, metric: str | None = None):
        self.metric = metric

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.get("search") is not None:
            return  # a search worker: birnn.search records its trials and writes the study's summary
        run_dir = Path(config.hydra.runtime.output_dir)
        failed = job_return.status == JobStatus.FAILED
        # a refused run leaves nothing; one that lost its dir writes nothing at that path (another run's now)
        if not (failed and isinstance(job_return._return_value, (Refused, Lost))):
            summary.write_status(
                run_dir,
                "failed" if failed else "completed",
                summary.one_line(job_return._return_value) if failed else "",
            )
        if config.hydra.mode == RunMode.MULTIRUN:
            # output_dir is <sweep dir>/<subdir>, both resolved by the job itself
            self.summarize(run_dir.parents[len(Path(str(config.hydra.sweep.subdir)).parts) - 1])

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        log.info("Sweep dir %s", Path(config.hydra.runtime.cwd) / str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("search") is not None:
            return
        sweep_dir = Path(config.hydra.runtime.cwd) / str(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            self.summarize(sweep_dir)
            log.info("Sweep summary in %s (summary.md, summary.csv, summary.png)", sweep_dir)

    def summarize(self, sweep_dir: Path) -> None:
        """A broken summary is logged, never allowed to fail the job that triggered it."""
        try:
            with locked(sweep_dir):
                summary.summarize(summary.find_runs([sweep_dir]), sweep_dir, self.metric)
        except Exception as e:
            log.warning("Could not write the sweep summary in %s: %s", sweep_dir, summary.one_line(e))


SUMMARY_LOCK = ".summary.lock"  # in a sweep or study dir: one writer of its summaries at a time
SUMMARY_LOCK_TIMEOUT_S = 300


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Serialize the writers of ``folder``'s summaries (parallel jobs, search workers): a lock on
    ``<folder>/.summary.lock``, not on the folder itself, which its run (the sweep) holds; waited for at most
    ``SUMMARY_LOCK_TIMEOUT_S``."""
    lock = FileLock(folder / SUMMARY_LOCK)
    try:
        lock.acquire(timeout=SUMMARY_LOCK_TIMEOUT_S)
    except Timeout:
        raise BirnnError(
            f"{folder / SUMMARY_LOCK} stayed locked for {SUMMARY_LOCK_TIMEOUT_S} s: another process is stuck "
            "writing this summary."
        ) from None
    try:
        yield
    finally:
        lock.release()


class MLflowParent(Callback):
    """``tracker=mlflow``: when a multirun ends, mark its MLflow parent run finished
    (``birnn.records.mlflow_tracking``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.runtime.cwd) / str(config.hydra.sweep.dir)
        if not (sweep_dir / "mlflow_parent.json").is_file():
            return
        try:
            from birnn.records.mlflow_tracking import end_parent

            end_parent(sweep_dir)
        except Exception as e:
            log.warning("Could not mark the MLflow parent run of %s finished: %s", sweep_dir, summary.one_line(e))
