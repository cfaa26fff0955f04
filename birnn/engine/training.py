"""The training loop: config -> data on the device -> model -> optimizer -> epochs of shuffled batches, with test
(and val) passes at every epoch end -> trackers, checkpoints and ``metrics.json`` in the run dir.

The policy (when to log, checkpoint, evaluate and stop) is here, top to bottom; ``birnn.engine.run.Run`` holds
the state and knows how to resume and save it; ranks are ``birnn.system.distributed.Dist``'s business.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from birnn.engine import checkpoint
from birnn.engine.run import Run
from birnn.engine.signals import GracefulStop, Stopped
from birnn.system import threads
from birnn.system.distributed import Dist

log = logging.getLogger("birnn.train")
BAR_S = 1.0  # seconds between two updates of the progress bar's loss between log lines


def train(
    cfg: DictConfig,
    run_dir: Path,
    on_evaluation: Callable[[list[dict]], bool] | None = None,
    started: Callable[[], None] = lambda: None,
) -> dict:
    """Train (or resume) the configured model in ``run_dir`` on this process's share; return the final metrics.

    The whole policy is here, top to bottom: step, log, checkpoint, evaluate at each epoch end, stop early.
    ``Run`` holds the state (model, optimizer, data, progress) and knows how to resume and save it.
    ``on_evaluation`` (a search's pruner) sees the history after every epoch end; True stops the run there,
    pruned: it is not tested.
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
        pruned = False
        logged, bar_shown = time.monotonic(), -math.inf  # when the last log line, the bar's last loss were shown
        with GracefulStop() as stop:

            def agreed() -> int:
                """The stop signal of any rank (0: none), the same on every rank: a collective, asked as often by
                every rank. One that arrives later (during a save's collectives, say) is agreed on at the next ask,
                never acted on by one rank alone."""
                return dist.agree(stop.requested or 0)

            while not run.done:
                bar = tqdm(
                    run.epoch_batches(),
                    total=run.steps_per_epoch,
                    initial=p.step_in_epoch,
                    disable=None if dist.is_main else True,
                    desc=f"Epoch {p.epoch + 1}/{run.epochs}",
                    leave=False,
                )
                for batch in bar:
                    if p.global_step >= run.total_steps:  # resumed where only the evaluation was left to do
                        break
                    run.step(batch)
                    threads.refit()
                    now = time.monotonic()
                    # Every rank stops at the same step, on the signal agreed here: one that arrives later (during the
                    # save's collectives, say) is agreed on at the next step, never acted on by one rank alone. A log
                    # line due by the clock on any rank rides along (+1), as every rank takes part in its sums.
                    every_s = t.get("log_every_n_seconds")
                    by_clock = bool(every_s) and now - logged >= every_s
                    decided = dist.agree(2 * (stop.requested or 0) + by_clock)
                    stopping = decided // 2
                    epoch_start = p.global_step - p.step_in_epoch
                    unlogged_epoch = p.global_step // t.log_every_n_steps == epoch_start // t.log_every_n_steps
                    if p.global_step % t.log_every_n_steps == 0 or decided % 2 or (run.epoch_ends and unlogged_epoch):
                        scores = run.train_scores()
                        log.info(
                            "Epoch [%d/%d], Step [%d/%d], Loss: %.4f",
                            p.epoch + 1,
                            run.epochs,
                            p.step_in_epoch,
                            run.steps_per_epoch,
                            scores["train/loss"],
                        )
                        run.track(scores)
                        accuracy = {"acc": f"{scores['train/accuracy']:.3f}"} if "train/accuracy" in scores else {}
                        bar.set_postfix(loss=f"{scores['train/loss']:.4f}", **accuracy)
                        logged = bar_shown = now
                    elif not bar.disable and now - bar_shown >= BAR_S:  # the bar between log lines: this rank's window
                        bar.set_postfix(**run.running_scores())
                        bar_shown = now
                    every = t.checkpoint_every_n_steps  # epoch ends save anyway
                    if stopping or (every and p.global_step % every == 0 and not run.epoch_ends):
                        path = run.save()
                        if stopping:
                            _stop(stop, stopping, f"at step {p.global_step}; checkpoint saved to {path}", run_dir)
                    if p.global_step >= run.total_steps:
                        break
                bar.close()

                run.close_epoch()  # the epoch (or the step budget) is over: evaluate, record, checkpoint
                try:
                    scores = run.evaluate("test", agreed) if test_every_epoch else {}
                    if run.data.val_x is not None:
                        scores |= run.evaluate("val", agreed)
                except Stopped as s:  # the steps are saved; the resumed run evaluates them first
                    path = run.save()
                    _stop(stop, s.signum, f"at step {p.global_step}, evaluating; checkpoint saved to {path}", run_dir)
                improved = run.record(scores)
                shown = p.epoch + (p.step_in_epoch > 0)  # a max_steps stop mid-epoch: the epoch it stopped in
                if scores:  # none without a test pass during training and a validation split
                    log.info("Epoch %d: %s", shown, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
                    logged = time.monotonic()
                run.save(checkpoint.LAST, *((checkpoint.BEST,) if improved else ()))
                patience = t.early_stopping_patience
                if patience and p.epochs_without_improvement >= patience:
                    log.info("Early stopping: %s has not improved for %d epochs.", t.monitor, patience)
                    break
                if on_evaluation is not None and on_evaluation(p.history):
                    pruned = True
                    break
            try:
                return run.finish(test=not pruned, stop=agreed)
            except Stopped as s:  # the last checkpoint holds every step and evaluation: a resume runs this pass again
                kept = run.ckpt_dir / checkpoint.LAST
                _stop(stop, s.signum, f"at step {p.global_step}, in the final test pass; {kept} is kept", run_dir)
    except RuntimeError as e:
        lost = dist.lost_peer(e)
        if lost is None:
            raise
        raise lost from None
    finally:
        if run is not None:
            run.close()
        dist.close()


def _stop(stop: GracefulStop, signum: int, where: str, run_dir: Path) -> None:
    """Say where the run stopped and how to resume it, then exit (128 + signal, or submitit's requeue)."""
    log.warning(
        "Stopped by %s %s. To resume, run the same command with hydra.run.dir=%s",
        signal.Signals(signum).name,
        where,
        run_dir,
    )
    stop.hand_over(signum)
