"""Where a study lives: its Optuna storage (SQLite, a journal file, a database server), opened one worker at a time
with timeouts, and the study created or loaded there."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from filelock import FileLock, Timeout
from omegaconf import DictConfig
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url

from birnn.schema.errors import BirnnError, first_line
from birnn.schema.metrics import direction
from birnn.system.files import not_regular

# the pip package of each database driver SQLAlchemy imports (by module name)
PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}
DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "PyMySQL", "MySQLdb": "mysqlclient"}


OPEN_LOCK = ".open.lock"  # in the study dir: workers open the storage one at a time


LOCK_TIMEOUT_S = 300  # the longest a worker waits for the others to open the storage


CONNECT_TIMEOUT_S = 30  # the longest a worker waits for a database server to answer


def open_storage(cfg: DictConfig, study_dir: Path) -> optuna.storages.BaseStorage:
    """The study's storage: SQLite in the study dir, an SQLAlchemy URL (with heartbeats), or a journal file."""
    url = cfg.storage or f"sqlite:///{study_dir / 'study.db'}"
    try:
        check_file(url)
        if "://" not in url:  # a journal file, e.g. on a shared disk
            return JournalStorage(JournalFileBackend(url))
        return RDBStorage(
            url,
            engine_kwargs={"connect_args": connect_args(url)},
            heartbeat_interval=cfg.heartbeat_interval_s,
            grace_period=cfg.heartbeat_grace_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(cfg.max_retries),
        )
    except BirnnError:
        raise
    except Exception as e:  # SQLAlchemy, drivers, file system: say which storage and why, in one line
        raise BirnnError(f"Cannot open the study storage {url}: {first_line(e)}") from None


def check_file(url: str) -> None:
    """A journal file or SQLite database that exists must be a regular file: a FIFO or a device would block the
    worker or feed it endless bytes."""
    path = url if "://" not in url else make_url(url).database if url.startswith("sqlite") else None
    if path and path != ":memory:" and Path(path).exists() and (reason := not_regular(Path(path))) is not None:
        raise BirnnError(f"search.storage={url}: {reason}")


def connect_args(url: str) -> dict:
    """A timeout on every connection (SQLite: waiting for another writer; a server: its answer). A missing
    database driver is named with its package (Optuna says only "Failed to import DB access module")."""
    parsed = make_url(url)
    try:
        parsed.get_dialect().import_dbapi()
    except ImportError as e:
        hint = f"; pip install '{DRIVERS.get(e.name, e.name)}'" if e.name else ""
        missing = f"needs a database driver that is not installed ({first_line(e)}){hint}"
        raise BirnnError(f"search.storage={url} {missing}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return {"timeout": 60}
    return {"connect_timeout": CONNECT_TIMEOUT_S} if backend in ("postgresql", "mysql") else {}


def open_study(cfg: DictConfig, base: list[str], study_dir: Path) -> optuna.Study:
    """Create the study or load it (its direction: ``trainer.monitor``'s); refuse one whose direction, search space
    or trial overrides differ."""
    s, monitor = cfg.search, cfg.trainer.monitor
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
    try:
        with FileLock(study_dir / OPEN_LOCK, timeout=LOCK_TIMEOUT_S):
            study = create_study(s, study_dir, sampler, pruner, direction(monitor))
    except Timeout:
        raise BirnnError(
            f"Another worker has been opening study {s.study_name!r} for {LOCK_TIMEOUT_S} s (it holds "
            f"{study_dir / OPEN_LOCK}); try again, or look for a hung worker"
        ) from None
    where = s.storage or study_dir
    try:  # every stored field of the study and its trials, read once: Optuna keeps them as JSON text
        existing = len(study.get_trials(deepcopy=False))
        attrs = study.user_attrs
    except ValueError as e:  # json.JSONDecodeError
        raise BirnnError(
            f"Study {s.study_name!r} in {where} is damaged: a stored field is not valid JSON ({first_line(e)}). "
            "Restore its storage from a copy, or start a new search.study_name"
        ) from None
    if existing:  # a restarted worker must not replay its seeded sequence over the trials already run
        study.sampler = optuna.samplers.TPESampler(seed=s.seed + s.worker + 10007 * existing, **s.sampler_args)
    space = {k: str(v) for k, v in s.params.items() if v is not None}
    if "search_space" not in attrs:
        study.set_user_attr("search_space", space)
        study.set_user_attr("trial_overrides", base)
        attrs = study.user_attrs
    problems = (
        [f"direction {study.direction.name.lower()} (birnn {direction(monitor)[:-1]}es {monitor})"]
        if study.direction.name.lower() != direction(monitor)
        else []
    )
    if attrs["search_space"] != space:
        problems.append(f"search space {attrs['search_space']} (now {space})")
    if attrs.get("trial_overrides") != base:
        problems.append(f"trial overrides {attrs.get('trial_overrides')} (now {base})")
    if problems:
        raise BirnnError(
            f"Study {s.study_name!r} in {where} was created with a different "
            f"{'; '.join(problems)}. Use the original command, or a new search.study_name."
        )
    return study


def create_study(
    s: DictConfig,
    study_dir: Path,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    goal: str,
) -> optuna.Study:
    """Create or load the study (``goal``: maximize or minimize); a failure is retried twice (workers on other
    machines may race to create it)."""
    for attempt in (1, 2, 3):
        try:
            return optuna.create_study(
                study_name=s.study_name,
                storage=open_storage(s, study_dir),
                sampler=sampler,
                pruner=pruner,
                direction=goal,
                load_if_exists=True,
            )
        except BirnnError:
            raise
        except Exception as e:
            if attempt == 3:
                raise BirnnError(
                    f"Cannot open study {s.study_name!r} in {s.storage or study_dir}: {first_line(e)}"
                ) from None
            time.sleep(attempt)
