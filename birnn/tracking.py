"""Run records: TensorBoard scalars and ``metrics.json``, with the provenance of the code that made them."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

import birnn
from birnn.checkpoint import atomic_write
from birnn.config import flatten
from birnn.figures import confusion_figure, misclassified_figure, misclassified_series_figure
from birnn.loop import EvalResult
from birnn.scores import confusion_matrix

MAX_MISCLASSIFIED = 32  # images in the misclassified grid (drawn after every test pass)
MAX_MISCLASSIFIED_SERIES = 6  # line plots of misclassified series
HPARAM_SECTIONS = ("seed", "model", "data", "optimizer", "scheduler", "trainer")


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """birnn and torch versions, and the git commit of the birnn checkout when there is one."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(birnn.__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"birnn_version": birnn.__version__, "torch_version": str(torch.__version__), "git_commit": commit}


def hparams(config: dict) -> dict[str, bool | int | float | str]:
    """The resolved hyper-parameters, flattened to ``section.key`` scalars (None and lists as strings)."""
    flat = flatten({k: config[k] for k in HPARAM_SECTIONS if k in config})
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


class Tracker:
    """TensorBoard event files written straight into the run dir (``tensorboard --logdir outputs``).

    ``purge_step`` (on resume) hides events a killed run logged after its last checkpoint; ``config`` (the
    resolved config) is recorded as text at the step the run starts (or resumes) from.
    """

    def __init__(self, run_dir: Path, purge_step: int | None = None, config: dict | None = None,
                 images: bool = True):
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.images = images
        if config is not None:
            self.writer.add_text("config", f"```yaml\n{OmegaConf.to_yaml(config)}```", purge_step or 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def evaluation(self, step: int, split: str, result: EvalResult, x: Tensor, y: Tensor, classes: list[str],
                   kind: str = "image", lengths: Tensor | None = None) -> None:
        """Record one evaluation pass over ``(x, y)``; a test pass also as pictures.

        Pictures: the confusion matrix and the first misclassified inputs: ``MAX_MISCLASSIFIED`` images, or
        for ``kind="series"`` ``MAX_MISCLASSIFIED_SERIES`` line plots (each cut to its length, if given).
        """
        self.scalars(step, {f"{split}/loss": result.loss, f"{split}/accuracy": result.accuracy})
        if split != "test" or not self.images:
            return
        pred = result.predictions
        matrix = confusion_matrix(y, pred, len(classes)).numpy()
        self.writer.add_figure(f"{split}/confusion_matrix", confusion_figure(matrix, classes), step)
        wrong = (pred != y).nonzero().squeeze(1)
        if len(wrong):
            shown = wrong[:MAX_MISCLASSIFIED_SERIES if kind == "series" else MAX_MISCLASSIFIED]
            inputs = x[shown].float().cpu().numpy()
            true, predicted = [classes[i] for i in y[shown].tolist()], [classes[i] for i in pred[shown].tolist()]
            if kind == "series":
                steps = [len(s) for s in inputs] if lengths is None else lengths[shown].tolist()
                figure = misclassified_series_figure([s[:n] for s, n in zip(inputs, steps)], true, predicted,
                                                     total=len(wrong))
            else:
                figure = misclassified_figure(inputs, true, predicted, total=len(wrong))
            self.writer.add_figure(f"{split}/misclassified", figure, step)

    def finish(self, config: dict, metrics: dict) -> None:
        """Record the end of the run: its hyper-parameters with its final metrics (TensorBoard's HParams tab).

        ``run_name="."`` writes them into the run dir itself, not into a timestamped sub-run.
        """
        final = {f"hparams/{k}": v for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.writer.add_hparams(hparams(config), final, run_name=".", global_step=metrics.get("steps"))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_metrics(run_dir: Path, metrics: dict) -> Path:
    path = run_dir / "metrics.json"
    atomic_write(path, lambda f: f.write(json.dumps(metrics, indent=2).encode() + b"\n"))
    return path
