"""The state of one training run and what can be done with it: build, resume, step, evaluate, save, finish.

``birnn.train.train`` is the loop and its policy (when to log, checkpoint, evaluate and stop); a ``Run``
holds what trains (model, optimizer, schedule, data), where it stands (``Progress``), how it resumes, and
how it is recorded (checkpoints, trackers, ``metrics.json``). Ranks are the business of
``birnn.system.distributed.Dist``: every process holds a ``Run``, the main one writes the records.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from birnn.data.pipeline import Batch, Splits, load_data, num_batches, shuffled_batches, subset
from birnn.data.pipeline import spec as data_spec
from birnn.data.vectors import resolve_embedding_dim
from birnn.engine import checkpoint, rundir
from birnn.engine.loop import Stepper, loss_and_predictions
from birnn.engine.resume import Progress, check_resumable, check_same_data, check_state
from birnn.engine.schedule import build_scheduler
from birnn.engine.signals import Stopped
from birnn.models import crf
from birnn.models.embedding import load_vectors
from birnn.models.rnn import build_model
from birnn.records.scores import EvalResult
from birnn.records.tracking import Trackers, provenance, write_metrics
from birnn.schema.config import to_plain
from birnn.schema.errors import BirnnError
from birnn.schema.metrics import better
from birnn.system.device import effective_precision, setup_device, synchronize
from birnn.system.distributed import Dist
from birnn.system.files import read_json

log = logging.getLogger("birnn.train")


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """ValueError unless each per-parameter state tensor of Adam, AdamW or SGD (moments, momentum) has its parameter's
    shape and dtype: ``load_state_dict`` takes any, and a crafted one failed at the first step with a traceback.
    Other optimizers' states may be factored (Adafactor's), so they are left to the optimizer."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)):
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                fits = (value.shape, value.dtype) == (p.shape, p.dtype) if isinstance(value, torch.Tensor) else True
                if not fits and value.ndim > 0:
                    raise ValueError(
                        f"{name} is a {value.dtype} tensor of shape {tuple(value.shape)} for a {p.dtype} parameter of "
                        f"shape {tuple(p.shape)}"
                    )


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


def build(cfg: DictConfig, device: torch.device, dist: Dist = Dist()) -> Setup:
    """Seed, load the data onto ``device``, and build model, optimizer, schedule and step function.

    Every rank builds the same initial model from ``seed``; its own dropout stream is ``seed + rank``.
    """
    tcfg = cfg.trainer
    torch.manual_seed(cfg.seed)
    resolve_embedding_dim(cfg.model, cfg.data)
    data = load_data(
        cfg.data,
        device,
        fingerprint=True,
        task=to_plain(cfg.task) if "task" in cfg else None,
        characters=cfg.model.get("char_encoder", "none") != "none",
    )
    empty = [s for s in ("train", "test", "val") if (y := getattr(data, f"{s}_y")) is not None and not len(y)]
    if empty:
        raise BirnnError(f"{cfg.data._target_} gives no {empty[0]} samples: too little data to train and test on")
    target = data.target
    frozen = data.vocab_size - data.trained_vocab if data.trained_vocab is not None else 0
    model = build_model(
        cfg.model, data.input_size, target.outputs, None, data.vocab_size, target.per_step, frozen, data.characters
    )
    model = model.to(device)
    if data.word_vectors is not None:
        load_vectors(model, data.word_vectors)
    if isinstance(getattr(model, "crf", None), crf.CRF):  # decoding's BIO/BIOES constraints: model.crf_constraints
        crf.configure(model.crf, cfg.model.get("crf_constraints", "auto"), data.classes, data.train_y)
    if dist.rank:
        torch.manual_seed(cfg.seed + dist.rank)
    optimizer = instantiate(cfg.optimizer, model.parameters())
    steps_per_epoch = num_batches(len(data.train_y), cfg.data.batch_size)
    total_steps = int(min(tcfg.epochs * steps_per_epoch, tcfg.max_steps or math.inf))
    scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps)
    scaler = torch.amp.GradScaler("cuda") if tcfg.precision == "16" else None
    stepper = Stepper(
        dist.wrap(model, device),
        target,
        optimizer,
        device,
        tcfg.precision,
        tcfg.grad_clip,
        scheduler,
        scaler,
        dist.world_size,
    )
    return Setup(data, model, optimizer, scheduler, scaler, stepper, steps_per_epoch, total_steps)


def rng_state(device: torch.device) -> dict:
    """This process's random state (the torch CPU generator and, on CUDA, its device's)."""
    return {"torch": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}


def _mean(total: float, count: int) -> float:
    """A window's mean per scored target; NaN when none was scored (per-step values may leave whole batches
    unscored)."""
    return total / count if count else math.nan


@dataclass
class Window:
    """Training losses and correct counts since the last log line, kept on the device."""

    first_step: int
    losses: list[torch.Tensor] = field(default_factory=list)
    corrects: list[torch.Tensor] = field(default_factory=list)
    samples: int = 0


class Run:
    """One training run in ``run_dir`` on this process: built from ``cfg``, resumed from its checkpoint."""

    def __init__(self, cfg: DictConfig, run_dir: Path, dist: Dist):
        self.cfg, self.run_dir, self.dist = cfg, run_dir, dist
        self.ckpt_dir = run_dir / "checkpoints"
        self.device = dist.place(setup_device(cfg.device, cfg.trainer.precision))
        cfg.trainer.precision = effective_precision(cfg.trainer.precision, self.device)
        dist.check_batch(cfg.data.batch_size)
        resolve_embedding_dim(cfg.model, cfg.data)  # as the checkpoint's config holds it
        resumed = self._resume_point()
        if resumed:
            check_resumable(cfg, resumed[0]["config"])
        setup = build(cfg, self.device, dist)
        self.data, self.model, self.optimizer = setup.data, setup.model, setup.optimizer
        self.scheduler, self.scaler, self.stepper = setup.scheduler, setup.scaler, setup.stepper
        self.steps_per_epoch, self.total_steps = setup.steps_per_epoch, setup.total_steps
        self.config = to_plain(cfg)  # the resolved config as stored in checkpoints and TensorBoard
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.progress = Progress()
        self.finished: dict | None = None  # the metrics of a run that had already finished
        if resumed:
            self._resume(*resumed)
        self.epoch_shuffle_state = self.shuffle.get_state()  # the running epoch's permutation is drawn from here
        self.tracker = (
            Trackers(
                cfg.tracker,
                run_dir,
                purge_step=self.progress.global_step + 1 if resumed else None,
                config=self.config,
                images=cfg.trainer.log_images,
                guard=lambda: rundir.check(run_dir),  # nothing is recorded once another run has the path
            )
            if dist.is_main
            else None
        )
        last_eval = self.progress.history[-1] if self.progress.history else {}
        self.metrics = {k: v for k, v in last_eval.items() if k not in ("epoch", "step")}
        self.window = Window(self.progress.global_step + 1)
        self.clock = time.perf_counter()

    def _resume_point(self) -> tuple[dict, Path] | None:
        """The newest usable checkpoint in the run dir, read by the main rank and sent to the others."""
        found, error = None, None
        if self.dist.is_main:
            try:
                checkpoint.remove_stale(self.ckpt_dir)  # the run dir is ours: temp files are a killed write's
                found = checkpoint.load_latest(self.ckpt_dir, check_state, self.cfg.trainer.allow_unverified)
            except BirnnError as e:
                error = str(e)
        found, error = self.dist.broadcast((found, error))
        if error:
            raise BirnnError(error)
        return found

    def _resume(self, state: dict, path: Path) -> None:
        check_same_data(state.get("data"), data_spec(self.data), path)
        checkpoint.load_model_state(self.model, state["model"], path)
        parts = [(self.optimizer, "optimizer"), (self.scheduler, "scheduler"), (self.scaler, "scaler")]
        for part, key in parts:
            if part is None:
                continue
            try:
                part.load_state_dict(state[key])
                if part is self.optimizer:
                    check_optimizer_state(part)
            except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a crafted state torch cannot take
                a = "an" if key == "optimizer" else "a"
                raise BirnnError(f"{path} holds {a} {key} state that does not fit this run's {key}: {e}") from None
        rng = state["rng"]
        ranks = rng["ranks"]
        if len(ranks) != self.dist.world_size and self.dist.is_main:
            log.warning(
                "Resuming a %d-process run with %d processes: the global batch and the data order are "
                "unchanged; dropout draws differ from an uninterrupted run.",
                len(ranks),
                self.dist.world_size,
            )
        try:  # the schema checks each state's size and dtype; torch checks its content (a crafted one: RuntimeError)
            if self.dist.rank < len(ranks):
                mine = ranks[self.dist.rank]
                torch.set_rng_state(mine["torch"])
                if self.device.type == "cuda" and mine["cuda"]:
                    torch.cuda.set_rng_state(mine["cuda"][0], self.device)
            self.shuffle.set_state(rng["shuffle"])
        except RuntimeError as e:
            raise BirnnError(f"{path} is not a usable birnn checkpoint (crafted or damaged): rng: {e}") from None
        self.progress = Progress(**state["progress"])
        if not self.progress.step_in_epoch <= min(self.steps_per_epoch, self.progress.global_step):
            raise BirnnError(  # beyond the epoch's last batch, no step ends the epoch: training would spin forever
                f"{path} is not a usable birnn checkpoint (crafted or damaged): progress.step_in_epoch "
                f"{self.progress.step_in_epoch} is beyond this run's {self.steps_per_epoch} steps per epoch or its "
                f"global_step {self.progress.global_step}."
            )
        patience = self.cfg.trainer.early_stopping_patience
        done = (
            self.progress.epoch >= self.cfg.trainer.epochs
            or self.progress.global_step >= self.total_steps
            or (patience and self.progress.epochs_without_improvement >= patience)
        )
        if state.get("finished") and done:
            self.finished = state["metrics"]
            return
        log.info(
            "Resuming from %s: epoch %d, step %d.",
            path,
            min(self.progress.epoch + 1, self.cfg.trainer.epochs),
            self.progress.global_step,
        )

    def describe(self) -> str:
        d = self.data
        world = f" x {self.dist.world_size} processes" if self.dist.enabled else ""
        return (
            f"Training {self.cfg.data._target_.rsplit('.', 1)[-1]} on {self.device}{world}: {len(d.train_y)} "
            f"train / {len(d.test_y)} test samples, {self.steps_per_epoch} steps per epoch, "
            f"{sum(p.numel() for p in self.model.parameters())} parameters."
        )

    @property
    def epochs(self) -> int:
        """The epochs this run trains: trainer.epochs, or fewer when trainer.max_steps ends it first."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def done(self) -> bool:
        p = self.progress
        return (p.epoch >= self.cfg.trainer.epochs or p.global_step >= self.total_steps) and not self.evaluation_due

    @property
    def evaluation_due(self) -> bool:
        """The running epoch's steps (or the step budget) are all taken, but its evaluation is not recorded yet: a
        stop during that evaluation (or at the last step) saved this point, and a resume evaluates first."""
        p = self.progress
        if p.step_in_epoch == self.steps_per_epoch:
            return True
        evaluated = bool(p.history) and p.history[-1]["step"] == p.global_step
        return p.global_step >= self.total_steps and p.step_in_epoch > 0 and not evaluated

    @property
    def epoch_ends(self) -> bool:
        """Whether the step just taken is the running epoch's last (its last batch, or the run's step budget)."""
        p = self.progress
        return p.step_in_epoch == self.steps_per_epoch or p.global_step >= self.total_steps

    def epoch_batches(self) -> Iterator[Batch]:
        """This rank's share of the running epoch's batches, from the first one not yet trained on."""
        self.epoch_shuffle_state = self.shuffle.get_state()
        d = self.data
        return shuffled_batches(
            d.train_x,
            d.train_y,
            self.cfg.data.batch_size,
            self.shuffle,
            start=self.progress.step_in_epoch,
            lengths=d.train_lengths,
            dist=self.dist,
            target=self.stepper.target,
        )

    def step(self, batch: Batch) -> None:
        """One optimizer step on ``batch`` (gradients averaged over ranks as over one global batch)."""
        labels = batch.labels
        loss_sum, correct = self.stepper.step(batch.x, batch.y, batch.lengths, labels)
        self.window.losses.append(loss_sum)
        self.window.corrects.append(correct)
        self.window.samples += labels
        self.progress.step_in_epoch += 1
        self.progress.global_step += 1
        self.progress.samples += batch.size
        self.progress.tokens += batch.tokens

    def window_totals(self) -> tuple[torch.Tensor, float]:
        """Per-step loss sums over all ranks since the last log line, and their correct count.

        Stops the run (before any save) if a loss is NaN/inf: every rank sees the same sums, so all stop.
        """
        w = self.window
        if not w.losses:
            return torch.zeros(0), 0.0
        totals = self.dist.sum(torch.stack([torch.stack(w.losses), torch.stack(w.corrects).to(w.losses[0])]))
        losses = totals[0]
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            last = (
                checkpoint.load_latest(self.ckpt_dir, check_state, self.cfg.trainer.allow_unverified)
                if self.dist.is_main
                else None
            )
            kept = (
                f"the last good checkpoint ({last[1]}, step {last[0]['progress']['global_step']}) is kept"
                if last
                else "no checkpoint had been written yet"
                if self.dist.is_main
                else "rank 0 keeps the last"
            )
            raise BirnnError(
                f"Loss became NaN/inf at step {w.first_step + int(bad[0, 0])}; training stopped and "
                f"{kept}. Try a lower optimizer.lr or trainer.grad_clip=1.0."
            )
        return losses, totals[1].sum().item()

    def running_scores(self) -> dict[str, str]:
        """This process's mean training loss and accuracy (where the kind of target has one) since the last log
        line, as the progress bar shows them (no collective: the bar's between log lines)."""
        w = self.window
        shown = {"loss": f"{_mean(torch.stack(w.losses).sum().item(), w.samples):.4f}"}
        if self.stepper.target.accuracy:
            shown["acc"] = f"{_mean(torch.stack(w.corrects).sum().item(), w.samples):.3f}"
        return shown

    def train_scores(self) -> dict[str, float]:
        """Mean training loss and accuracy since the last call (over all ranks), and the lr; starts a new window."""
        losses, correct = self.window_totals()
        w = self.window
        self.window = Window(self.progress.global_step + 1)
        return {
            "train/loss": _mean(losses.sum().item(), w.samples),
            **({"train/accuracy": _mean(correct, w.samples)} if self.stepper.target.accuracy else {}),
            "train/lr": self.optimizer.param_groups[0]["lr"],
        }

    def track(self, scores: dict[str, float]) -> None:
        """Send scores at the current step to the trackers (the main rank's)."""
        if self.tracker:
            self.tracker.scalars(self.progress.global_step, scores)

    def _clock(self) -> None:
        """Add the wall time since the last call to the training time."""
        synchronize(self.device)
        now = time.perf_counter()
        self.progress.train_seconds += now - self.clock
        self.clock = now

    def save(self, *names: str, metrics: dict | None = None) -> Path | None:
        """Checkpoint as ``names`` (default ``last.pt``); every rank gives its RNG state, the main rank writes."""
        self.window_totals()  # never save a model that a NaN/inf loss has reached
        bad = checkpoint.non_finite(self.model.state_dict())
        if bad:  # the last step's update can make weights non-finite before any loss shows it
            raise BirnnError(
                f"The weights became NaN/inf at step {self.progress.global_step} ({bad}); training "
                f"stopped without saving them, earlier checkpoints in {self.ckpt_dir} are kept. Try a "
                "lower optimizer.lr or trainer.grad_clip=1.0."
            )
        ranks = self.dist.gather(rng_state(self.device))
        self._clock()
        path = None
        if self.dist.is_main:
            rundir.check(self.run_dir)  # still this run's dir: nobody removed or replaced it to get in
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": {"shuffle": self.epoch_shuffle_state, "ranks": ranks},
                "progress": asdict(self.progress),
                "config": self.config,
                "metrics": metrics,
                "data": data_spec(self.data),
                "world_size": self.dist.world_size,
                "finished": metrics is not None,
                "provenance": provenance(),
            }
            for name in names or (checkpoint.LAST,):
                path = checkpoint.save(state, self.ckpt_dir, name)
        self._clock()
        return path

    def evaluate(self, split: str, stop: Callable[[], int] = lambda: 0) -> dict[str, float]:
        """Loss and accuracy on ``split`` (each rank takes a share; sums over ranks give the whole split), and the
        other scores its kind of target reports (``birnn.data.targets``: per-step labels are scored per token,
        with macro-F1 over tags and span scores for BIO/BIOES tags; classes get macro-F1 when ``trainer.monitor``
        is ``val_f1``).

        ``stop`` (the stop signal every rank agrees on, 0 for none) is asked before each batch, as often on every
        rank; a signal raises ``Stopped`` there, before anything of the pass is recorded.
        """
        d, target = self.data, self.stepper.target
        x, y, lengths = (d.test_x, d.test_y, d.test_lengths) if split == "test" else (d.val_x, d.val_y, d.val_lengths)
        part = self.dist.shard(len(y))
        size = self.cfg.data.eval_batch_size

        def poll() -> None:
            if signum := stop():
                raise Stopped(signum)

        loss_sum, predictions = loss_and_predictions(
            self.model,
            target,
            subset(x, part),
            y[part],
            size,
            self.device,
            self.cfg.trainer.precision,
            lengths[part] if lengths is not None else None,
            poll,
        )
        largest = -(-len(y) // self.dist.world_size)  # the first rank's share: it polls most often
        for _ in range(num_batches(largest, size) - num_batches(part.stop - part.start, size)):
            poll()
        loss_sum, right = self.dist.sum(torch.stack([loss_sum, target.correct(predictions, y[part]).to(loss_sum)]))
        predictions = self.dist.cat(predictions)
        n = target.count(y)
        loss, accuracy = loss_sum.item() / n, right.item() / n
        scores = {f"{split}_loss": loss, **({f"{split}_accuracy": accuracy} if target.accuracy else {})}
        scores |= {f"{split}_{k}": v for k, v in target.scores(y, predictions, self.cfg.trainer.monitor).items()}
        result = EvalResult(loss, accuracy, predictions, scores, target)
        if self.tracker and (not target.pictures or d.vocab_size is not None):  # no pictures of tokens or tags
            self.tracker.scalars(self.progress.global_step, {k.replace("_", "/", 1): v for k, v in scores.items()})
        elif self.tracker:
            self.tracker.evaluation(self.progress.global_step, split, result, x, y, d.classes, d.kind, lengths)
        return scores

    def close_epoch(self) -> None:
        """Stop the training clock before evaluation (the epoch is counted once its evaluation is recorded)."""
        self.window_totals()
        self._clock()

    def record(self, scores: dict[str, float]) -> bool:
        """Count the epoch (when all its steps are done), add its evaluation to the history and the best
        ``trainer.monitor`` score so far; True if it improved."""
        p = self.progress
        if p.step_in_epoch == self.steps_per_epoch:
            p.epoch += 1
            p.step_in_epoch = 0
        self.epoch_shuffle_state = self.shuffle.get_state()
        self.metrics = scores
        p.history.append({"epoch": p.epoch, "step": p.global_step, **scores})
        monitor = self.cfg.trainer.monitor
        improved = monitor in scores and better(monitor, scores[monitor], p.best_val_accuracy)
        if improved:
            p.best_val_accuracy = scores[monitor]
            p.epochs_without_improvement = 0
        elif monitor in scores:
            p.epochs_without_improvement += 1
        self.clock = time.perf_counter()  # evaluation is not training time
        return improved

    def test_pass(self, stop: Callable[[], int] = lambda: 0) -> dict:
        """Test scores of the checkpoint ``trainer.test_on`` names: the model as trained (last) or ``best.pt``."""
        if self.cfg.trainer.get("test_on", "last") == "last":
            return self.evaluate("test", stop) if self.stepper.target.score not in self.metrics else {}
        path = self.ckpt_dir / checkpoint.BEST
        best = self.dist.broadcast(checkpoint.load(path) if self.dist.is_main else None)
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        checkpoint.load_model_state(self.model, best["model"], path)
        try:
            return {**self.evaluate("test", stop), "test_epoch": best["progress"]["epoch"]}
        finally:
            self.model.load_state_dict(current)

    def finish(self, test: bool = True, stop: Callable[[], int] = lambda: 0) -> dict:
        """The final metrics: saved in the last checkpoint, ``metrics.json`` and TensorBoard's HParams.
        ``test=False`` (a pruned search trial): no final test pass; ``stop`` as for ``evaluate``."""
        p = self.progress
        self.metrics = {
            **self.metrics,
            **(self.test_pass(stop) if test else {}),
            **(self.stepper.target.baseline(self.data.train_y, self.data.test_y) if test else {}),
            "test_on": self.cfg.trainer.get("test_on", "last"),
            **({f"best_{self.cfg.trainer.monitor}": p.best_val_accuracy} if self.data.val_x is not None else {}),
            "monitor": self.cfg.trainer.monitor,
            "epochs": p.epoch,
            "steps": p.global_step,
            "world_size": self.dist.world_size,
            "train_seconds": p.train_seconds,
            "train_samples_per_second": p.samples / p.train_seconds if p.train_seconds else 0.0,
            **({"train_tokens_per_second": p.tokens / p.train_seconds} if p.tokens and p.train_seconds else {}),
            "history": p.history,
            **provenance(),
        }
        self.save(metrics=self.metrics)
        self.write_records(self.metrics)
        if test:  # the kind's headline: its test score with the trivial baseline's beside it
            log.info("%s; run dir %s", self.stepper.target.headline(self.metrics), self.run_dir)
        return self.metrics

    def complete(self) -> dict:
        """A run that had already finished: write what its records still lack (killed before ``metrics.json``)."""
        metrics = self.finished
        path = self.run_dir / "metrics.json"
        try:
            complete = read_json(path) == json.loads(json.dumps(metrics))
        except BirnnError:  # missing, damaged: written anew
            complete = False
        if complete:
            log.info("%s already holds a finished run; nothing to do.", self.run_dir)
        else:
            log.info(
                "%s holds a finished run without its metrics.json; writing it from the final checkpoint.", self.run_dir
            )
            self.write_records(metrics)
        return metrics

    def write_records(self, metrics: dict) -> None:
        """``metrics.json`` and TensorBoard's HParams, from the main rank."""
        if not self.dist.is_main:
            return
        rundir.check(self.run_dir)
        try:
            write_metrics(self.run_dir, metrics)
        except OSError as e:
            raise BirnnError(
                f"Could not write {self.run_dir / 'metrics.json'}: {e.strerror or e}. The final "
                "checkpoint is saved: free space and run the same command again to write it."
            ) from None
        self.tracker.finish(self.config, metrics)

    def close(self) -> None:
        if self.tracker:
            self.tracker.close()
