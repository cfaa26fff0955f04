"""``tracker=mlflow``: one MLflow run per birnn run (the optional extra ``pip install 'birnn[mlflow]'``).

Params: the flattened config. Metrics: the training scalars per logged step, each evaluation pass, and the
final metrics. Artifacts at the end: ``metrics.json``, ``.hydra/``, the checkpoints and the test pictures.
The jobs of a multirun nest under one parent run (its id kept in the sweep dir); a resumed run continues its
own MLflow run (its id kept in the run dir, ``mlflow_run.json``). The default store is a SQLite file under
``outputs/``, which parallel jobs share through a file lock (SQLite allows one writer at a time).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from torch import Tensor

from birnn.records.scores import EvalResult
from birnn.records.tracking import hparams, pictures
from birnn.schema.errors import BirnnError
from birnn.system.files import read_json

try:
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.tracking import MlflowClient
except ImportError:
    raise BirnnError("tracker=mlflow needs MLflow: pip install 'birnn[mlflow]'") from None

RECORD = "mlflow_run.json"  # in the run dir: the MLflow run a resumed run continues
PARENT_RECORD = "mlflow_parent.json"  # in a sweep dir: the parent run of its jobs
BATCH = 100  # params per log_batch call (MLflow's limit)
LOCK_TIMEOUT_S = 120  # the longest a job waits for another's write to the SQLite store (or its sweep's record)


def default_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite file under ``outputs/`` of the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path.cwd() / 'outputs' / 'mlflow.db').resolve()}"


def _lock(uri: str) -> contextlib.AbstractContextManager:
    """One process at a time on a SQLite store (no "database is locked"); any number on a server. A job that
    waits longer than ``LOCK_TIMEOUT_S`` gets ``filelock.Timeout``: its tracker is off, the run goes on."""
    if uri.startswith("sqlite:///"):
        return FileLock(f"{uri.removeprefix('sqlite:///')}.lock", timeout=LOCK_TIMEOUT_S)
    return contextlib.nullcontext()


def _check_sqlite(db: Path) -> None:
    """Fail at once on a SQLite store that cannot be opened (MLflow would retry for about 100 s, warning each
    time), and on a lock file that cannot be created (the lock would wait for its timeout)."""
    Path(f"{db}.lock").touch()
    with contextlib.closing(sqlite3.connect(db, timeout=LOCK_TIMEOUT_S)) as connection:
        connection.execute("PRAGMA schema_version")


def end_parent(sweep_dir: Path) -> None:
    """Mark the multirun's parent run (recorded in ``sweep_dir``) finished; no record, nothing to do."""
    record = sweep_dir / PARENT_RECORD
    if not record.is_file():
        return
    saved = read_json(record)
    with _lock(saved["tracking_uri"]):
        MlflowClient(saved["tracking_uri"]).set_terminated(saved["run_id"], RunStatus.to_string(RunStatus.FINISHED))


def _sweep_dir() -> Path | None:
    """The sweep dir when this process runs one job of a multirun, else None."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().runtime.cwd) / HydraConfig.get().sweep.dir


class MLflow:
    """The run's MLflow run: see the module docstring. Every call goes to ``tracking_uri``'s store."""

    def __init__(
        self,
        run_dir: Path,
        purge_step: int | None = None,
        config: dict | None = None,
        images: bool = True,
        tracking_uri: str | None = None,
        experiment: str = "birnn",
        log_checkpoints: bool = True,
        request_retries: int = 0,
        request_timeout_s: int = 10,
    ):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(request_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(request_timeout_s))
        self.run_dir, self.images, self.log_checkpoints = run_dir, images, log_checkpoints
        self.logged = False  # whether this process logged anything (a finished run started again logs nothing)
        self.resumed_status: str | None = None  # the status of the MLflow run this one continues
        self.uri = tracking_uri or default_uri()
        self.sqlite = Path(self.uri.removeprefix("sqlite:///")) if self.uri.startswith("sqlite:///") else None
        if self.sqlite:
            self.sqlite.parent.mkdir(parents=True, exist_ok=True)
            _check_sqlite(self.sqlite)
        with self._store():
            self.client = MlflowClient(self.uri)
            self.run_id = self._continued() or self._start(experiment, config or {})

    def _store(self) -> contextlib.AbstractContextManager:
        return _lock(self.uri)

    def _continued(self) -> str | None:
        """The run id a resumed run recorded for this store, marked running again; None for a new run."""
        record = self.run_dir / RECORD
        if not record.is_file():
            return None
        saved = read_json(record)
        if saved.get("tracking_uri") != self.uri:
            return None
        self.resumed_status = self.client.get_run(saved["run_id"]).info.status
        self.client.update_run(saved["run_id"], status=RunStatus.to_string(RunStatus.RUNNING))
        return saved["run_id"]

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        artifacts = (self.sqlite.parent / "mlartifacts").resolve().as_uri() if self.sqlite else None
        return self.client.create_experiment(name, artifact_location=artifacts)

    def _parent(self, experiment_id: str, sweep: Path) -> str:
        """The multirun's parent run, created by whichever job comes first (the sweep dir records it)."""
        sweep.mkdir(parents=True, exist_ok=True)
        record = sweep / PARENT_RECORD
        with FileLock(f"{record}.lock", timeout=LOCK_TIMEOUT_S):
            if record.is_file():
                saved = read_json(record)
                if saved.get("tracking_uri") == self.uri:
                    return saved["run_id"]
            parent = self.client.create_run(experiment_id, run_name=sweep.name, tags={"birnn.sweep_dir": str(sweep)})
            record.write_text(json.dumps({"run_id": parent.info.run_id, "tracking_uri": self.uri}) + "\n")
            return parent.info.run_id

    def _start(self, experiment: str, config: dict) -> str:
        experiment_id = self._experiment_id(experiment)
        tags = {"birnn.run_dir": str(self.run_dir.resolve())}
        sweep = _sweep_dir()
        if sweep is not None:
            tags["mlflow.parentRunId"] = self._parent(experiment_id, sweep)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name, tags=tags)
        run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in hparams(config).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(run_id, params=params[i : i + BATCH])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / RECORD).write_text(json.dumps({"run_id": run_id, "tracking_uri": self.uri}) + "\n")
        return run_id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.logged = True
        now = int(time.time() * 1000)
        with self._store():
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def evaluation(
        self,
        step: int,
        split: str,
        result: EvalResult,
        x: Tensor,
        y: Tensor,
        classes: list[str],
        kind: str = "image",
        lengths: Tensor | None = None,
    ) -> None:
        self.scalars(step, result.scalars(split))
        if split != "test" or not self.images:
            return
        figures = pictures(split, result, x, y, classes, kind, lengths)
        with self._store():
            for tag, figure in figures.items():
                self.client.log_figure(self.run_id, figure, f"pictures/{tag.replace('/', '_')}_step{step:07d}.png")

    def finish(self, config: dict, metrics: dict) -> None:
        """The final metrics, then ``metrics.json``, ``.hydra/`` and the checkpoints as artifacts."""
        final = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.scalars(metrics.get("steps", 0), final)
        with self._store():
            self.client.log_artifact(self.run_id, str(self.run_dir / "metrics.json"))
            if (self.run_dir / ".hydra").is_dir():
                self.client.log_artifacts(self.run_id, str(self.run_dir / ".hydra"), ".hydra")
            if self.log_checkpoints and (self.run_dir / "checkpoints").is_dir():
                for path in sorted((self.run_dir / "checkpoints").glob("*.pt")):
                    self.client.log_artifact(self.run_id, str(path), "checkpoints")
            self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))
        self.run_id = None

    def close(self) -> None:
        """A run that stops before ``finish`` (signal, error) is marked KILLED (resuming marks it running again);
        a finished run started again without training keeps its status."""
        if self.run_id is not None:
            status = self.resumed_status if self.resumed_status and not self.logged else "KILLED"
            with self._store():
                self.client.set_terminated(self.run_id, status)
