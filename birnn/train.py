"""Hydra entry point: ``python -m birnn.train [overrides]`` (``-m`` for a multirun), also under ``torchrun``.

This module is the command: it composes and checks the config, holds the run dir (one writer), finds the run
dir of a torchrun group, and hands over to ``birnn.engine.training.train`` — the loop, read top to bottom.
Started again on a run dir that holds a checkpoint, the run resumes exactly where that checkpoint left off.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from birnn.engine import rundir
from birnn.engine.training import train
from birnn.schema import console
from birnn.schema.config import CONFIG_DIR, apply_schemas, import_from_cwd, validate
from birnn.schema.errors import BirnnError
from birnn.schema.metrics import judged_by
from birnn.studies import selection
from birnn.system import distributed

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
    """One Hydra job. Returns the sweep objective: the best ``trainer.monitor`` score (test accuracy only without a
    val split: ``birnn.schema.metrics.judged_by``).

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
        validate(cfg)
        if _publish_run_dir is not None:
            _publish_run_dir(run_dir)
        metrics = train(cfg, run_dir, started=started)
    return judged_by(metrics, cfg.trainer.monitor)


def main() -> None:
    import_from_cwd()
    env = distributed.world_env()
    try:
        with console.one_line_errors():
            if env is None:
                with explicit_dirs_held(sys.argv):
                    sys.argv = keep_hydra_record(sys.argv)
                    console.run_hydra(job)
            else:
                main_distributed(env["rank"])
    except KeyboardInterrupt:
        print("Interrupted. (A run stopped before it started training leaves nothing behind.)", file=sys.stderr)
        raise SystemExit(130) from None


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
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    record = RUN_RECORDS / run_id
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
        if not explicit and run_id != "none" and record.is_file():
            sys.argv.append(f"hydra.run.dir={record.read_text()}")
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


if __name__ == "__main__":
    main()
