"""Hydra entry point: ``python -m birnn.train [overrides]`` (``-m`` for a multirun), also under ``torchrun``.

This module is the command: it composes and checks the config, holds the run dir (one writer), finds the run
dir of a torchrun group, and hands over to ``birnn.engine.training.train`` — the loop, read top to bottom.
Started again on a run dir that holds a checkpoint, the run resumes exactly where that checkpoint left off.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from birnn.data import carried
from birnn.engine import rundir
from birnn.engine.training import train
from birnn.schema import console
from birnn.schema.config import CONFIG_DIR, apply_schemas, flatten, import_from_cwd, validate
from birnn.schema.errors import BirnnError
from birnn.schema.metrics import judged_by
from birnn.studies import selection
from birnn.system import distributed, threads
from birnn.system.files import atomic_write

log = logging.getLogger("birnn.train")


def keep_hydra_record(argv: list[str]) -> list[str]:
    """Re-launched on an existing run or sweep dir, send Hydra's new ``.hydra/`` files to ``.hydra/resume-N``.

    Hydra writes its config record before birnn runs; this keeps the original record of the run intact.
    """
    if any(a.startswith("hydra.output_subdir=") for a in argv):
        return argv
    dirs = [Path(a.split("=", 1)[1]) for a in argv if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    records = [p for d in dirs for p in [d / ".hydra", *d.glob("*/.hydra")] if (p / "config.yaml").exists()]
    if not records:
        return argv
    n = 1 + max(
        (int(p.name.split("-")[1]) for r in records for p in r.glob("resume-*") if p.name.split("-")[1].isdigit()),
        default=0,
    )
    return [*argv, f"hydra.output_subdir=.hydra/resume-{n}"]


# Set by ``main`` on torchrun's rank 0: tells the other ranks (and restarted workers) the run dir.
_publish_run_dir: Callable[[Path], None] | None = None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def job(cfg: DictConfig) -> float:
    """One Hydra job. Returns the sweep objective: the best ``trainer.monitor`` score (without a val split the
    monitor's test score: ``birnn.schema.metrics.judged_by``).

    The job holds its run dir (one writer); refused before training, it leaves nothing there.
    """
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    record = run_dir / hc.output_subdir if hc.output_subdir else None
    log_file = OmegaConf.select(hc, "job_logging.handlers.file.filename")
    main_rank = (distributed.world_env() or {"rank": 0})["rank"] == 0
    with rundir.claim(
        run_dir, record, Path(log_file) if log_file else None, hold=main_rank, clean=hc.mode != RunMode.MULTIRUN
    ) as started:
        if cfg.get("search") is not None:
            raise BirnnError(
                "hparams_search=... configures a search: run it with python -m birnn.search (the "
                "same overrides), not birnn.train"
            )
        apply_schemas(cfg)
        selection.resolve(cfg, compared=hc.mode == RunMode.MULTIRUN)
        use_pack_settings(cfg, hc)
        validate(cfg)
        if _publish_run_dir is not None:
            _publish_run_dir(run_dir)
        metrics = train(cfg, run_dir, started=started)
    return judged_by(metrics, cfg.trainer.monitor)


def use_pack_settings(cfg: DictConfig, hc: DictConfig) -> None:
    """``data=packed``: the training settings the pack's source data option set (``birnn.data.carried``), for
    every key that neither the command line nor the experiment preset sets; one log line says which and why."""
    if cfg.data.get("_target_") != "birnn.data.load_packed" or not cfg.data.get("path"):
        return
    settings, source = carried.stored(Path(cfg.data.path))
    if not settings:
        return
    fixed = [o.key_or_group for o in OverridesParser.create().parse_overrides(list(hc.overrides.task))]
    experiment = hc.runtime.choices.get("experiment")
    if experiment:  # a preset comes after the data option: what it sets wins, as over digits' own settings
        overrides = list(hc.overrides.hydra)
        flat = [
            flatten(OmegaConf.to_container(compose("config", overrides=o)))
            for o in ([*overrides, f"experiment={experiment}"], overrides)
        ]
        fixed += [k for k, v in flat[0].items() if k not in flat[1] or flat[1][k] != v]
    applied, kept = carried.apply(cfg, settings, fixed)
    source = source or "its source data option"
    kept_text = ", ".join(f"{k}={OmegaConf.select(cfg, k)}" for k in kept)
    if applied:
        log.info(
            "data=packed: %s from the pack (what %s sets for training, recorded by birnn-pack)%s",
            ", ".join(f"{k}={v}" for k, v in applied.items()),
            source,
            f"; kept {kept_text} as set here" if kept else "",
        )
    else:
        log.info("data=packed: kept %s as set here, not the pack's (what %s sets for training)", kept_text, source)


def main() -> None:
    threads.begin()
    import_from_cwd()
    env = distributed.world_env()
    try:
        with console.one_line_errors():
            if env is None:
                sys.argv += configured_dirs(sys.argv)
                with explicit_dirs_held(sys.argv), sweep_record_kept(sys.argv):
                    sys.argv = keep_hydra_record(sys.argv)
                    console.run_hydra(job)
            else:
                main_distributed(env["rank"])
    except KeyboardInterrupt:
        print("Interrupted. (A run stopped before it started training leaves nothing behind.)", file=sys.stderr)
        raise SystemExit(130) from None


DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir")
PLAIN_PATH = re.compile(r"[\w./@+-]+")  # a path the guards and Hydra's override grammar both take as it is


def configured_dirs(argv: list[str]) -> list[str]:
    """``hydra.run.dir=...``/``hydra.sweep.dir=...`` for each of the two that the user's own config files set (an
    experiment in ``--config-dir``, a ``--config-name`` of theirs) to a fixed path, so that the guards below see
    it as they see the command line's: the dir held, a sweep's ``multirun.yaml`` kept, Hydra's record set aside.

    Composed as Hydra will compose it; only when the user's configs take part (birnn's own set no fixed dir). A
    value with an interpolation (``${now:...}``: a new dir each launch) or other characters than ``PLAIN_PATH``'s
    is left out; so is a config that does not compose, which Hydra then reports itself.
    """
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path, get_args_parser
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    try:
        args = get_args_parser().parse_args(argv[1:])
    except SystemExit:  # Hydra's own parser prints the problem again when it runs
        return []
    named = {o.partition("=")[0].lstrip("+~") for o in args.overrides}
    if not (args.config_dir or args.config_name or any("searchpath" in k for k in named)) or args.config_path:
        return []
    try:
        search = create_automatic_config_search_path(None, None, str(CONFIG_DIR))
        if args.config_dir:
            search.prepend("command-line", f"file://{os.path.abspath(args.config_dir)}", SearchPathQuery("schema"))
        cfg = Hydra.create_main_hydra2("train", search).compose_config(
            args.config_name or "config", list(args.overrides), RunMode.MULTIRUN, validate_sweep_overrides=False
        )
    except Exception:  # Hydra reports it with its own message when it runs
        return []
    finally:
        GlobalHydra.instance().clear()
    found = []
    for key in DIR_KEYS:
        section, _, leaf = key.rpartition(".")
        value = OmegaConf.select(cfg, section)._get_node(leaf)._value()  # as written, no interpolation resolved
        if key not in named and isinstance(value, str) and PLAIN_PATH.fullmatch(value):
            found.append(f"{key}={value}")
    return found


@contextmanager
def explicit_dirs_held(argv: list[str]) -> Iterator[None]:
    """Lock the run or sweep dir named on the command line before Hydra writes anything into it, so that a
    second birnn on the same dir is refused at once; a dir this made and nothing filled is removed again."""
    named = [
        (Path(value), "sweep dir" if key == "hydra.sweep.dir" else "run dir")
        for key, _, value in (a.partition("=") for a in argv[1:])
        if key in ("hydra.run.dir", "hydra.sweep.dir")
    ]
    made = [d.resolve() for d, _ in named if not d.exists()]
    held = []

    def let_go() -> None:
        for lock in held:
            lock.release()
        for d in made:
            if d.is_dir() and all(p.name == rundir.LOCK for p in d.iterdir()):
                rundir.remove_new_dirs(d, Path.cwd().resolve())

    try:
        for folder, what in named:
            held.append(rundir.lock(folder, what))
    except rundir.Busy as e:
        let_go()
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        yield
    finally:
        let_go()


SWEEP_RECORD = "multirun.yaml"
MAX_SWEEP_RECORD = 2**24  # bytes: a multirun.yaml larger than this is left to Hydra


@contextmanager
def sweep_record_kept(argv: list[str]) -> Iterator[None]:
    """Keep the ``multirun.yaml`` of a sweep dir named on the command line as it was: Hydra's sweeper rewrites it
    before any job runs, and so would a relaunch whose jobs are all refused. A relaunch continues the sweep that
    file records; each relaunched job keeps its own config in ``.hydra/resume-N`` (``keep_hydra_record``)."""
    kept: dict[Path, bytes] = {}
    for key, _, value in (a.partition("=") for a in argv[1:]):
        path = Path(value) / SWEEP_RECORD
        if key.lstrip("+") == "hydra.sweep.dir" and path.is_file() and path.stat().st_size <= MAX_SWEEP_RECORD:
            kept[path] = path.read_bytes()
    try:
        yield
    finally:
        for path, old in kept.items():
            try:
                if path.read_bytes() != old:
                    atomic_write(path, lambda f, old=old: f.write(old))
            except OSError as e:
                log.warning("Could not keep %s as it was: %s", path, e)


RUN_RECORDS = Path("outputs") / ".torchrun"  # run id -> run dir, so restarted workers find their run


def main_distributed(rank: int) -> None:
    """Under torchrun: rank 0 makes the run dir (as Hydra always does) and publishes it; the other ranks
    wait for it and join that dir without writing a ``.hydra/`` record or ``train.log`` of their own.

    A restarted worker group (``--max-restarts``) finds the dir through torchrun's run id.
    """
    global _publish_run_dir
    args = sys.argv[1:]
    if any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in args):
        if rank == 0:
            print(
                "error: a multirun (-m) cannot run under torchrun: every process would run every job. Run "
                "the sweep with a launcher that starts one distributed job per point instead, e.g. "
                'hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=N (README "Distributed").',
                file=sys.stderr,
            )
        raise SystemExit(2)
    distributed.init_default_group()
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    record = RUN_RECORDS / run_id
    # each node's record of this run id (rank 0 may come back on another node than the one that recorded it)
    records = distributed.gather_from_all(record.read_text() if run_id != "none" and record.is_file() else None)
    if rank != 0:
        run_dir = distributed.broadcast_from_main(None)
        if run_dir is None:
            raise SystemExit(1)  # rank 0 stopped before training and said why
        keep = [a for a in args if not a.startswith(("hydra.run.dir=", "hydra.output_subdir=", "hydra/job_logging="))]
        sys.argv = [
            sys.argv[0],
            *keep,
            f"hydra.run.dir={run_dir}",
            "hydra.output_subdir=null",
            "hydra/job_logging=none",
        ]
        job()
        return
    explicit = any(a.startswith("hydra.run.dir=") for a in args)
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) + int(
        os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    )
    published = False

    def publish(run_dir: Path) -> None:
        nonlocal published
        if run_id != "none" and not explicit:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(str(run_dir))
        distributed.broadcast_from_main(str(run_dir))
        published = True

    try:
        if run_id == "none" and restarts and not explicit:
            raise BirnnError(
                "torchrun --max-restarts with --rdzv-backend=c10d needs --rdzv-id=<unique id> (or "
                "hydra.run.dir=<dir>) so that restarted workers resume this run's dir, not a new one."
            )
        if not explicit and run_id != "none" and any(records):
            sys.argv.append(f"hydra.run.dir={recorded_run_dir(run_id, records)}")
        sys.argv = keep_hydra_record(sys.argv)
        _publish_run_dir = publish
        with explicit_dirs_held(sys.argv):
            job()
    except BirnnError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if not published:
            distributed.broadcast_from_main(None)


def recorded_run_dir(run_id: str, records: list[str | None]) -> str:
    """The run dir the nodes recorded for torchrun's ``run_id`` (``records``: each rank's, rank 0's first), which
    rank 0 must see: refused when the nodes disagree, or when it was recorded on another node and is not here."""
    known = sorted({r for r in records if r})
    if len(known) > 1:
        raise BirnnError(
            f"The nodes' records of torchrun run {run_id} ({RUN_RECORDS}/{run_id}) name different run dirs: "
            f"{', '.join(known)}. Pass hydra.run.dir=<run dir> to choose, or use a new --rdzv-id"
        )
    if records[0] is None and not Path(known[0]).is_dir():
        raise BirnnError(
            f"torchrun run {run_id} trains in {known[0]} (recorded on another node), which this node does not "
            "see: the run dir must be on a file system that every node mounts at the same path (docs/distributed.md)"
        )
    return known[0]


if __name__ == "__main__":
    main()
