"""Hydra entry point: ``python -m birnn.train [overrides]`` (``-m`` for a multirun), also under ``torchrun``.

Config -> data on the device -> model -> optimizer -> epochs of shuffled batches, with test (and val)
passes at every epoch end -> TensorBoard, checkpoints and ``metrics.json`` in the run dir. Started
again on a run dir that holds a checkpoint, it resumes exactly where that checkpoint left off. The run's
state lives in ``birnn.engine.run.Run``; ranks in ``birnn.system.distributed``; this module is the loop and the entry.
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
from tqdm import tqdm

from birnn.engine import checkpoint, rundir
from birnn.engine.run import Run
from birnn.engine.signals import GracefulStop
from birnn.schema import console
from birnn.schema.config import CONFIG_DIR, import_from_cwd, validate
from birnn.schema.errors import BirnnError
from birnn.studies import selection
from birnn.system import distributed
from birnn.system.distributed import Dist

log = logging.getLogger("birnn.train")


def train(
    cfg: DictConfig,
    run_dir: Path,
    on_evaluation: Callable[[list[dict]], bool] | None = None,
    started: Callable[[], None] = lambda: None,
) -> dict:
    """Train (or resume) the configured model in ``run_dir`` on this process's share; return the final metrics.

    The whole policy is here, top to bottom: step, log, checkpoint, evaluate at each epoch end, stop early.
    ``Run`` holds the state (model, optimizer, data, progress) and knows how to resume and save it.
    ``on_evaluation`` (a search's pruner) sees the history after every epoch end; True stops the run there.
    ``started`` is called once the run is built (data loaded, checkpoint accepted): from then on it keeps its dir.
    """
    dist = Dist.start(cfg.device.type, cfg.device.dist_timeout_s)
    run = None
    try:
        run = Run(cfg, run_dir, dist)
        started()
        if run.finished is not None:
            return run.complete()
        log.info(run.describe())
        t, p = cfg.trainer, run.progress
        test_every_epoch = t.get("test_every_epoch") is not False
        with GracefulStop() as stop:
            while not run.done:
                bar = tqdm(
                    run.epoch_batches(),
                    total=run.steps_per_epoch,
                    initial=p.step_in_epoch,
                    disable=None if dist.is_main else True,
                    desc=f"Epoch {p.epoch + 1}/{t.epochs}",
                    leave=False,
                )
                for batch in bar:
                    run.step(batch)
                    if p.global_step % t.log_every_n_steps == 0:
                        scores = run.train_scores()
                        log.info(
                            "Epoch [%d/%d], Step [%d/%d], Loss: %.4f",
                            p.epoch + 1,
                            t.epochs,
                            p.step_in_epoch,
                            run.steps_per_epoch,
                            scores["train/loss"],
                        )
                        run.track(scores)
                        bar.set_postfix(loss=f"{scores['train/loss']:.4f}", acc=f"{scores['train/accuracy']:.3f}")
                    stop.requested = dist.agree(stop.requested or 0) or None  # every rank stops at the same step
                    last_step = p.step_in_epoch == run.steps_per_epoch or p.global_step >= run.total_steps
                    every = t.checkpoint_every_n_steps  # epoch ends save anyway
                    if stop.requested or (every and p.global_step % every == 0 and not last_step):
                        path = run.save()
                        if stop.requested:
                            log.warning(
                                "Stopped by %s at step %d; checkpoint saved to %s. To resume, run the same "
                                "command with hydra.run.dir=%s",
                                stop.name,
                                p.global_step,
                                path,
                                run_dir,
                            )
                            stop.hand_over()
                    if p.global_step >= run.total_steps:
                        break
                bar.close()

                run.close_epoch()  # the epoch (or the step budget) is over: evaluate, record, checkpoint
                scores = run.evaluate("test") if test_every_epoch else {}
                if run.data.val_x is not None:
                    scores |= run.evaluate("val")
                improved = run.record(scores)
                shown = p.epoch + (p.step_in_epoch > 0)  # a max_steps stop mid-epoch: the epoch it stopped in
                log.info("Epoch %d: %s", shown, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
                run.save(checkpoint.LAST, *((checkpoint.BEST,) if improved else ()))
                patience = t.early_stopping_patience
                if patience and p.epochs_without_improvement >= patience:
                    log.info("Early stopping: %s has not improved for %d epochs.", t.monitor, patience)
                    break
                if on_evaluation is not None and on_evaluation(p.history):
                    break
        return run.finish()
    except RuntimeError as e:
        lost = dist.lost_peer(e)
        if lost is None:
            raise
        raise lost from None
    finally:
        if run is not None:
            run.close()
        dist.close()


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
    val split).

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
        selection.resolve(cfg, compared=hc.mode == RunMode.MULTIRUN)
        validate(cfg)
        if _publish_run_dir is not None:
            _publish_run_dir(run_dir)
        metrics = train(cfg, run_dir, started=started)
    return metrics.get(f"best_{cfg.trainer.monitor}", metrics["test_accuracy"])


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
