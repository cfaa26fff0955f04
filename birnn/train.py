"""Hydra entry point: ``python -m birnn.train [overrides]`` (``-m`` for a multirun).

Config -> data on the device -> model -> optimizer -> epochs of shuffled batches, with test (and val)
passes at every epoch end -> TensorBoard, checkpoints and ``metrics.json`` in the run dir. Started
again on a run dir that holds a checkpoint, it resumes exactly where that checkpoint left off.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from birnn import checkpoint
from birnn.config import CONFIG_DIR, flatten, import_from_cwd, to_plain, validate
from birnn.data import Splits, load_data, num_batches, shuffled_batches, spec as data_spec
from birnn.device import setup_device, synchronize
from birnn.errors import BirnnError
from birnn.loop import Stepper, evaluate
from birnn.model import build_model
from birnn.schedule import build_scheduler
from birnn.signals import GracefulStop
from birnn.tracking import Tracker, provenance, write_metrics

log = logging.getLogger("birnn.train")

# Keys that may change when a run is resumed; everything else must match the checkpoint's config.
RESUMABLE = ("data.root", "data.download", "trainer.log_every_n_steps", "trainer.checkpoint_every_n_steps",
             "trainer.log_images")
STEP_COUNT_KEYS = ("trainer.epochs", "trainer.max_steps")  # resumable unless a scheduler depends on them


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps done in the epoch under way
    global_step: int = 0
    samples: int = 0
    train_seconds: float = 0.0  # wall time of training steps and checkpoint writes, evaluation excluded
    best_val_accuracy: float | None = None
    epochs_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)  # one entry per evaluation


def check_resumable(cfg: DictConfig, stored: dict) -> None:
    """Refuse (before touching the run dir) a resume whose config differs in a key that changes the run."""
    allowed = RESUMABLE + (STEP_COUNT_KEYS if cfg.scheduler.name == "none" else ())
    now, then = flatten(to_plain(cfg)), flatten(stored)
    changed = sorted(k for k in now.keys() | then.keys()
                     if now.get(k) != then.get(k) and k not in allowed and not k.startswith("device."))
    if changed:
        diffs = ", ".join(f"{k} ({then.get(k)!r} -> {now.get(k)!r})" for k in changed)
        raise BirnnError(f"Cannot resume: the config differs from the checkpoint's in {diffs}. Use the "
                         "original overrides, or start a new run (a fresh hydra.run.dir).")


@dataclass
class Setup:
    """Everything a run trains with, built from the config."""

    data: Splits
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler | None
    stepper: Stepper
    steps_per_epoch: int
    total_steps: int


def build(cfg: DictConfig, device: torch.device) -> Setup:
    """Seed, load the data onto ``device``, and build model, optimizer, schedule and step function."""
    tcfg = cfg.trainer
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, device)
    model = build_model(cfg.model, data.input_size, data.num_classes).to(device)
    optimizer = instantiate(cfg.optimizer, model.parameters())
    steps_per_epoch = num_batches(len(data.train_y), cfg.data.batch_size)
    total_steps = int(min(tcfg.epochs * steps_per_epoch, tcfg.max_steps or math.inf))
    scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps)
    scaler = torch.amp.GradScaler("cuda") if tcfg.precision == "16" else None
    stepper = Stepper(model, optimizer, device, tcfg.precision, tcfg.grad_clip, scheduler, scaler)
    return Setup(data, model, optimizer, scheduler, scaler, stepper, steps_per_epoch, total_steps)


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train (or resume) the configured model in ``run_dir``; return the final metrics."""
    ckpt_dir = run_dir / "checkpoints"
    tcfg = cfg.trainer
    device = setup_device(cfg.device, tcfg.precision)
    resumed = checkpoint.load_latest(ckpt_dir)
    if resumed:
        check_resumable(cfg, resumed[0]["config"])

    run = build(cfg, device)
    plain_cfg = to_plain(cfg)  # the resolved config as stored in checkpoints and TensorBoard
    data, model, optimizer, scheduler, scaler, stepper = (run.data, run.model, run.optimizer, run.scheduler,
                                                          run.scaler, run.stepper)
    steps_per_epoch, total_steps = run.steps_per_epoch, run.total_steps
    shuffle = torch.Generator().manual_seed(cfg.seed)
    progress = Progress()
    if resumed:
        state, path = resumed
        checkpoint.load_model_state(model, state["model"], path)
        optimizer.load_state_dict(state["optimizer"])
        for part, key in ((scheduler, "scheduler"), (scaler, "scaler")):
            if part is not None:
                part.load_state_dict(state[key])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        shuffle.set_state(state["rng"]["shuffle"])
        progress = Progress(**state["progress"])
        patience = tcfg.early_stopping_patience
        if state["finished"] and (progress.epoch >= tcfg.epochs or progress.global_step >= total_steps
                                  or (patience and progress.epochs_without_improvement >= patience)):
            log.info("%s already holds a finished run; nothing to do.", run_dir)
            return state["metrics"]
        log.info("Resuming from %s: epoch %d, step %d.", path, progress.epoch + 1, progress.global_step)

    def save(name: str = checkpoint.LAST, metrics: dict | None = None) -> Path:
        return checkpoint.save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler else None,
            "scaler": scaler.state_dict() if scaler else None,
            "rng": {"torch": torch.get_rng_state(), "shuffle": epoch_shuffle_state,
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
            "progress": asdict(progress), "config": plain_cfg, "metrics": metrics,
            "data": data_spec(data),
            "finished": metrics is not None, "provenance": provenance(),
        }, ckpt_dir, name)

    def run_eval(split: str) -> dict:
        x, y = (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)
        result = evaluate(model, x, y, cfg.data.eval_batch_size, device, tcfg.precision)
        tracker.evaluation(progress.global_step, split, result, x, y, data.classes)
        return {f"{split}_loss": result.loss, f"{split}_accuracy": result.accuracy}

    def check_finite(losses: list[torch.Tensor], first_step: int) -> None:
        """One host sync over the per-step losses since ``first_step``: stop before saving a NaN/inf model."""
        if not losses:
            return
        bad = (~torch.isfinite(torch.stack(losses))).nonzero()
        if len(bad):
            last = checkpoint.load_latest(ckpt_dir)
            kept = f"the last good checkpoint ({last[1]}, step {last[0]['progress']['global_step']}) is kept" \
                if last else "no checkpoint had been written yet"
            raise BirnnError(f"Loss became NaN/inf at step {first_step + int(bad[0, 0])}; training stopped and "
                             f"{kept}. Try a lower optimizer.lr or trainer.grad_clip=1.0.")

    tracker = Tracker(run_dir, purge_step=progress.global_step + 1 if resumed else None, config=plain_cfg,
                      images=tcfg.log_images)
    log.info("Training %s on %s: %d train / %d test samples, %d steps per epoch, %d parameters.",
             cfg.data._target_.rsplit(".", 1)[-1], device, len(data.train_y), len(data.test_y),
             steps_per_epoch, sum(p.numel() for p in model.parameters()))
    epoch_shuffle_state = shuffle.get_state()
    last_eval = progress.history[-1] if progress.history else {}
    metrics = {k: v for k, v in last_eval.items() if k not in ("epoch", "step")}
    try:
        with GracefulStop() as stop:
            while progress.epoch < tcfg.epochs and progress.global_step < total_steps:
                epoch_shuffle_state = shuffle.get_state()  # the epoch's permutation is drawn from here
                batches = shuffled_batches(data.train_x, data.train_y, cfg.data.batch_size, shuffle,
                                           start=progress.step_in_epoch)
                bar = tqdm(batches, total=steps_per_epoch, initial=progress.step_in_epoch, disable=None,
                           desc=f"Epoch {progress.epoch + 1}/{tcfg.epochs}", leave=False)
                losses, corrects, counts = [], [], 0  # the log window, kept on the device
                window_start = progress.global_step + 1
                synchronize(device)
                t0 = time.perf_counter()
                for x, y in bar:
                    loss_sum, correct = stepper.step(x, y)
                    losses.append(loss_sum)
                    corrects.append(correct)
                    counts += len(y)
                    progress.step_in_epoch += 1
                    progress.global_step += 1
                    progress.samples += len(y)
                    step = progress.global_step
                    if step % tcfg.log_every_n_steps == 0:
                        check_finite(losses, window_start)
                        loss = torch.stack(losses).sum().item() / counts
                        acc = torch.stack(corrects).sum().item() / counts
                        log.info("Epoch [%d/%d], Step [%d/%d], Loss: %.4f", progress.epoch + 1, tcfg.epochs,
                                 progress.step_in_epoch, steps_per_epoch, loss)
                        tracker.scalars(step, {"train/loss": loss, "train/accuracy": acc,
                                               "train/lr": optimizer.param_groups[0]["lr"]})
                        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}")
                        losses, corrects, counts, window_start = [], [], 0, step + 1
                    end_of_epoch = progress.step_in_epoch == steps_per_epoch or step >= total_steps
                    every = tcfg.checkpoint_every_n_steps
                    if (every and step % every == 0 and not end_of_epoch) or stop.requested:
                        check_finite(losses, window_start)
                        synchronize(device)
                        path = save()
                        progress.train_seconds += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        if stop.requested:
                            log.warning("Stopped by %s at step %d; checkpoint saved to %s. To resume, run the "
                                        "same command with hydra.run.dir=%s", stop.name, step, path, run_dir)
                            stop.hand_over()
                    if step >= total_steps:
                        break
                bar.close()
                check_finite(losses, window_start)
                synchronize(device)
                progress.train_seconds += time.perf_counter() - t0
                if progress.step_in_epoch == steps_per_epoch:
                    progress.epoch += 1
                    progress.step_in_epoch = 0
                epoch_shuffle_state = shuffle.get_state()

                metrics = run_eval("test")
                if data.val_x is not None:
                    metrics.update(run_eval("val"))
                progress.history.append({"epoch": progress.epoch, "step": progress.global_step, **metrics})
                log.info("Epoch %d: %s", progress.epoch,
                         ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                improved = data.val_x is not None and (progress.best_val_accuracy is None
                                                       or metrics["val_accuracy"] > progress.best_val_accuracy)
                if improved:
                    progress.best_val_accuracy = metrics["val_accuracy"]
                    progress.epochs_without_improvement = 0
                elif data.val_x is not None:
                    progress.epochs_without_improvement += 1
                t0 = time.perf_counter()
                save()
                if improved:
                    save(checkpoint.BEST)
                progress.train_seconds += time.perf_counter() - t0
                patience = tcfg.early_stopping_patience
                if patience and progress.epochs_without_improvement >= patience:
                    log.info("Early stopping: validation accuracy has not improved for %d epochs.", patience)
                    break

        metrics = {
            **metrics,
            **({"best_val_accuracy": progress.best_val_accuracy} if data.val_x is not None else {}),
            "epochs": progress.epoch, "steps": progress.global_step,
            "train_seconds": progress.train_seconds,
            "train_samples_per_second": progress.samples / progress.train_seconds if progress.train_seconds else 0.0,
            "history": progress.history,
            **provenance(),
        }
        save(metrics=metrics)
        write_metrics(run_dir, metrics)
        tracker.finish(plain_cfg, metrics)
    finally:
        tracker.close()
    log.info("Test accuracy %.4f (%.2f%%); run dir %s", metrics["test_accuracy"], 100 * metrics["test_accuracy"],
             run_dir)
    return metrics


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
    n = 1 + max((int(p.name.split("-")[1]) for r in records for p in r.glob("resume-*")
                 if p.name.split("-")[1].isdigit()), default=0)
    return [*argv, f"hydra.output_subdir=.hydra/resume-{n}"]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def run(cfg: DictConfig) -> float:
    """One Hydra job. Returns the sweep objective: validation accuracy when there is a val split, else test."""
    validate(cfg)
    metrics = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    return metrics.get("val_accuracy", metrics["test_accuracy"])


def main() -> None:
    import_from_cwd()
    sys.argv = keep_hydra_record(sys.argv)
    run()


if __name__ == "__main__":
    main()
