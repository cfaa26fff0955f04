"""Run records: the trackers (one small interface; TensorBoard here) and ``metrics.json``, with the provenance
of the code that made them."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

import birnn
from birnn.data.targets import Drawn, for_classes
from birnn.records.figures import (
    confusion_figure,
    misclassified_figure,
    misclassified_series_figure,
    scatter_figure,
    worst_series_figure,
)
from birnn.records.scores import EvalResult
from birnn.schema.config import flatten
from birnn.schema.errors import BirnnError, Lost, first_line
from birnn.system.files import atomic_write

MAX_MISCLASSIFIED = 32  # images in the misclassified (or worst-predicted) grid (drawn after every test pass)
MAX_MISCLASSIFIED_SERIES = 6  # line plots of misclassified (or worst-predicted) series
HPARAM_SECTIONS = ("seed", "model", "data", "optimizer", "scheduler", "trainer")

MAX_REASON = 240  # characters of a failing tracker's error quoted in its warning
log = logging.getLogger("birnn.train")


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """birnn and torch versions, and the git commit of the birnn checkout when there is one."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(birnn.__file__).parent, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"birnn_version": birnn.__version__, "torch_version": str(torch.__version__), "git_commit": commit}


def hparams(config: dict) -> dict[str, bool | int | float | str]:
    """The resolved hyper-parameters, flattened to ``section.key`` scalars (None and lists as strings)."""
    flat = flatten({k: config[k] for k in HPARAM_SECTIONS if k in config})
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def pictures(
    split: str,
    result: EvalResult,
    x: Tensor,
    y: Tensor,
    classes: list[str],
    kind: str = "image",
    lengths: Tensor | None = None,
) -> dict[str, Figure]:
    """The pictures of one pass by tag, as its kind of target chooses them (``result.target``, classes per sequence
    when None; ``birnn.data.targets.Drawn``): the whole split (``test/confusion_matrix``, or
    ``test/predicted_vs_true`` for values) and the inputs worth a look (``test/misclassified``,
    ``test/worst_predicted``): ``MAX_MISCLASSIFIED`` images, or for ``kind="series"`` ``MAX_MISCLASSIFIED_SERIES``
    line plots (each cut to its length, if given).
    """
    target = result.target if result.target is not None else for_classes(classes, False)
    drawn = target.drawn(y, result.predictions, MAX_MISCLASSIFIED_SERIES if kind == "series" else MAX_MISCLASSIFIED)
    if drawn is None:
        return {}
    figures = {f"{split}/{drawn.summary}": _summary(drawn)}
    if len(drawn.shown):
        shown = drawn.shown
        inputs = x[shown.to(x.device)].float().cpu().numpy()
        worst = drawn.inputs != "misclassified"
        if kind == "series":
            steps = [len(s) for s in inputs] if lengths is None else lengths[shown.to(lengths.device)].tolist()
            draw = worst_series_figure if worst else misclassified_series_figure
            series = [s[:n] for s, n in zip(inputs, steps)]
            figures[f"{split}/{drawn.inputs}"] = draw(series, drawn.true, drawn.predicted, total=drawn.total)
        else:
            title = f"true \u2192 predicted: the {len(shown)} worst predicted of {drawn.total}" if worst else None
            figures[f"{split}/{drawn.inputs}"] = misclassified_figure(
                inputs, drawn.true, drawn.predicted, total=drawn.total, title=title
            )
    return figures


def _summary(drawn: Drawn) -> Figure:
    """The picture of the whole split: the confusion matrix, or predicted against true values."""
    if drawn.matrix is not None:
        return confusion_figure(drawn.matrix, drawn.names)
    true, predicted = drawn.values
    return scatter_figure(true, predicted, drawn.names, f"{len(true):,} test targets")


class Tracker(Protocol):
    """What a run reports to a tracker (``tracker.<name>._target_``), built as
    ``target(run_dir, purge_step=..., config=..., images=..., **its keys)`` on the main process only.

    ``purge_step``: on resume, the first step the run logs again (None for a fresh run); ``config``: the
    resolved config; ``images``: draw pictures after each test pass (``trainer.log_images``).
    """

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

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
    ) -> None: ...

    def finish(self, config: dict, metrics: dict) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """TensorBoard event files written straight into the run dir (``tensorboard --logdir outputs``).

    ``purge_step`` (on resume) hides events a killed run logged after its last checkpoint; ``config`` (the
    resolved config) is recorded as text at the step the run starts (or resumes) from.
    """

    def __init__(self, run_dir: Path, purge_step: int | None = None, config: dict | None = None, images: bool = True):
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.images = images
        if config is not None:
            self.writer.add_text("config", f"```yaml\n{OmegaConf.to_yaml(config)}```", purge_step or 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

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
        """Record one evaluation pass over ``(x, y)``; a test pass also as pictures (``pictures``)."""
        self.scalars(step, result.scalars(split))
        if split != "test" or not self.images:
            return
        for tag, figure in pictures(split, result, x, y, classes, kind, lengths).items():
            self.writer.add_figure(tag, figure, step)

    def finish(self, config: dict, metrics: dict) -> None:
        """Record the end of the run: its hyper-parameters with its final metrics (TensorBoard's HParams tab).

        ``run_name="."`` writes them into the run dir itself, not into a timestamped sub-run.
        """
        final = {
            f"hparams/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.writer.add_hparams(hparams(config), final, run_name=".", global_step=metrics.get("steps"))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Trackers:
    """The run's trackers (the ``tracker`` node: ``{name: {_target_: ..., keys}}``), called together.

    A tracker that fails (server down, store unwritable) costs one warning and is dropped for the rest of the
    run: ``metrics.json`` and the checkpoints are the run's record, never a tracker. A bad tracker config
    (BirnnError, e.g. a missing optional package) still stops the run before it trains.

    ``guard`` (the run's ``birnn.engine.rundir.check``) is called before every call to the trackers: once it raises
    ``Lost`` (the run dir was moved aside or replaced), every tracker is dropped without being flushed or closed
    (TensorBoard writes by path: into whatever dir now has it) and the error stops the run, as before a checkpoint.
    """

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        purge_step: int | None = None,
        config: dict | None = None,
        images: bool = True,
        guard: Callable[[], None] = lambda: None,
    ):
        self.active: dict[str, Tracker] = {}
        self.guard = guard
        for name, node in cfg.items():
            try:
                self.active[str(name)] = instantiate(node, _partial_=True)(
                    run_dir, purge_step=purge_step, config=config, images=images
                )
            except InstantiationException as e:
                if isinstance(e.__cause__, BirnnError):
                    raise e.__cause__ from None
                self._warn(str(name), e.__cause__ or e)
            except BirnnError:
                raise
            except Exception as e:
                self._warn(str(name), e)

    def _warn(self, name: str, error: BaseException) -> None:
        reason = first_line(error)
        log.warning(
            "Tracker %s failed (%s: %s); it is off for the rest of this run (metrics.json and the "
            "checkpoints are unaffected).",
            name,
            type(error).__name__,
            reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "...",
        )

    def _each(self, method: str, *args, **kwargs) -> None:
        try:
            self.guard()
        except Lost:
            self.active.clear()  # dropped unflushed: nothing more of theirs is written
            raise
        for name, tracker in list(self.active.items()):
            try:
                getattr(tracker, method)(*args, **kwargs)
            except Exception as e:
                del self.active[name]
                self._warn(name, e)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._each("scalars", step, values)

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
        self._each("evaluation", step, split, result, x, y, classes, kind, lengths)

    def finish(self, config: dict, metrics: dict) -> None:
        self._each("finish", config, metrics)

    def close(self) -> None:
        """Close every tracker; after the run dir was lost, none (they were dropped unflushed)."""
        try:
            self._each("close")
        except Lost:
            pass


def write_metrics(run_dir: Path, metrics: dict) -> Path:
    path = run_dir / "metrics.json"
    atomic_write(path, lambda f: f.write(json.dumps(metrics, indent=2).encode() + b"\n"))
    return path
