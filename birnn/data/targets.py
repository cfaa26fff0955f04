"""The kind of target a model learns, in one place: everything that differs between a class per sequence and a class
per step (a tagger, with or without a CRF).

A kind (``Target``) says how many outputs the model gives and where (``outputs``, ``per_step``), which targets
count, the summed loss, what is predicted from the outputs and how many predictions are right, the scores it reports
beside loss and accuracy, whether a test pass is drawn and what its pictures show (``drawn``: records draws it),
what ``birnn-evaluate`` reports, what ``birnn-predict`` answers for an input and what ``birnn-export`` traces and
outputs (``graph``: values leave the file in the target's units). The loop (``birnn.engine.loop``), a run's
evaluation and records (``birnn.engine.run``), restoring a model, ``birnn-evaluate``, ``birnn-predict`` and
``birnn-export`` ask it; which score judges a run and which way it is better is ``birnn.schema.metrics``'s. A new
kind is one more class with the ``Target`` methods, chosen where ``for_classes`` chooses these (from the labels,
``Splits.target``, and from a checkpoint's data spec, ``Restored.target``). The scores of classes (scikit-learn's,
seqeval's) are below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from birnn.schema.errors import BirnnError
from birnn.schema.metrics import HEADLINE
from birnn.schema.tags import span_scheme

IGNORE = -100  # the label of padded steps in per-step labels (cross_entropy's ignore_index)


class Target(Protocol):
    """What a kind of target decides. ``outputs``/``predictions``: the model's outputs (fp32) and what is predicted
    from them, per sequence ``(batch, ...)`` or per step ``(batch, steps, ...)``; ``lengths``: valid steps per sample
    (None: all); ``model``: the model that gave the outputs (a DDP wrapper or the model itself)."""

    per_step: bool  # one target per step (the model outputs every step) rather than one per sequence
    pictures: bool  # a test pass is drawn (birnn.records.tracking.pictures: confusion matrix, misclassified inputs)
    accuracy: bool  # predictions are right or wrong: a split's accuracy is reported (classes; not values)
    stratified: bool  # data.folds splits stratified by the target (a class per sequence), else plain KFold
    score: str  # the test score every run of this kind reports (birnn.schema.metrics.HEADLINES)
    done: str  # what predicting does to an input, in words ("classified", "tagged", "given a value")

    @property
    def outputs(self) -> int:
        """The model's outputs per position: ``num_classes`` (the size of its head)."""

    def count(self, y: Tensor) -> int:
        """The targets in ``y`` that are scored (padded steps are not)."""

    def loss_sum(self, model: nn.Module, outputs: Tensor, y: Tensor, lengths: Tensor | None) -> Tensor:
        """The loss summed over the scored targets of a batch."""

    def batch_mean(self, outputs: Tensor, y: Tensor) -> Tensor | None:
        """The mean loss of a whole batch in one fused call, or None (the loop then weighs ``loss_sum``)."""

    def predict(self, model: nn.Module, outputs: Tensor, lengths: Tensor | None) -> Tensor:
        """What the model predicts, shaped like the targets (``IGNORE`` beyond a length)."""

    def correct(self, predictions: Tensor, y: Tensor) -> Tensor:
        """The number of right predictions among the scored targets (a device tensor: no sync)."""

    def scores(self, y: Tensor, predictions: Tensor, monitor: str) -> dict[str, float]:
        """The scores of a split reported beside its loss and accuracy, by name without the split (``f1``)."""

    def report(self, y: Tensor, predictions: Tensor) -> dict:
        """What ``birnn-evaluate`` reports of the test split beside its loss and accuracy."""

    def headline(self, scores: dict) -> str:
        """The test score in words, as logged at the end of a run."""

    def baseline(self, train_y: Tensor, test_y: Tensor) -> dict:
        """The trivial predictor's test score (``test_baseline_accuracy``) and what it is (``test_baseline``),
        reported beside the model's: does the model beat it?"""

    def drawn(self, y: Tensor, predictions: Tensor, most: int) -> Drawn | None:
        """What a test pass's pictures show (when ``pictures``): the whole split and at most ``most`` inputs."""

    def answers(self, model: nn.Module, outputs: Tensor, tokens: list[list[str]] | None = None) -> list[dict]:
        """``birnn-predict``'s fields for each input of a batch (``label``: what its table prints; ``probability``
        or None); ``tokens``: each input's words, for per-step targets of text."""

    compared: str  # how export_difference compares, for birnn-export's line ("" or " (in standardized units)")

    def graph(self, model: nn.Module) -> nn.Module:
        """What ``birnn-export`` traces of ``model`` (the whole input pipeline in front of it): the model, or one that
        outputs the predictions in the target's units."""

    def export_outputs(self, model: nn.Module, unpacked: bool) -> list[str]:
        """The names of an exported model's outputs (``unpacked``: the graph takes ``lengths``)."""

    def export_difference(
        self,
        model: nn.Module,
        exported: Tensor | tuple[Tensor, ...],
        expected: Tensor,
        lengths: Tensor | None,
        out: Path,
    ) -> float:
        """The largest difference between an exported model's outputs and PyTorch's ``expected`` outputs where they
        count; raises a BirnnError for outputs that must match exactly and do not."""

    def exported(self, steps: int) -> str:
        """An exported model's outputs in words, as ``birnn-export`` prints them."""


def for_classes(classes: list[str], per_step: bool) -> Target:
    """The kind of target of data with these ``classes``, one per step or one per sequence."""
    return ClassPerStep(classes) if per_step else ClassPerSequence(classes)


def for_data(classes: list[str], per_step: bool, values: dict | None) -> Target:
    """The kind of target of data (``Splits``) or of a checkpoint's data spec: ``values`` (the spec of values,
    ``Values.spec``) for regression, else classes. Fields of the spec ``Values`` does not take (a newer release's)
    are left out."""
    if values is None:
        return for_classes(classes, per_step)
    return Values(classes, **{k: values[k] for k in SPEC if k in values})


def per_step(y: Tensor) -> bool:
    """Whether labels ``y`` hold one target per step ``(N, steps)`` rather than one per sequence ``(N,)``."""
    return y.ndim == 2


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model behind a DistributedDataParallel wrapper (or itself)."""
    return getattr(model, "module", model)


def _full(lengths: Tensor | None, y: Tensor) -> Tensor:
    """``lengths``, or every step of ``y`` (batch, steps) when None."""
    return lengths if lengths is not None else torch.full((len(y),), y.shape[1], dtype=torch.int64)


@dataclass
class Drawn:
    """What the pictures of a test pass show, as the kind of target chooses it (``Target.drawn``;
    ``birnn.records.tracking.pictures`` draws it): the whole split under ``summary``, a ``confusion_matrix``
    (``matrix``: rows true, columns predicted, of classes ``names``) or ``predicted_vs_true`` (``values``: true and
    predicted ``(n, outputs)``, NaN where not scored, of outputs ``names``); and the inputs worth a look under
    ``inputs`` (``misclassified``, ``worst_predicted``): samples ``shown`` (worst first), each captioned with what is
    ``true`` and what was ``predicted``, ``total`` of them in the split."""

    summary: str
    names: list[str]
    inputs: str
    shown: Tensor
    true: list[str]
    predicted: list[str]
    total: int
    matrix: np.ndarray | None = None
    values: tuple[np.ndarray, np.ndarray] | None = None


class Classes:
    """What the kinds of class targets share: the class names, logits as outputs, accuracy as the score."""

    per_step = False
    pictures = True
    accuracy = True
    stratified = True
    score = HEADLINE
    done = "classified"

    def __init__(self, classes: list[str]):
        self.classes = list(classes)

    @property
    def outputs(self) -> int:
        return len(self.classes)

    def correct(self, predictions: Tensor, y: Tensor) -> Tensor:
        return ((predictions == y) & (y != IGNORE)).sum()

    def headline(self, scores: dict) -> str:
        """The test accuracy, with the trivial baseline's beside it when the scores hold it."""
        trivial = scores.get("test_baseline_accuracy")
        beside = "" if trivial is None else f", trivial baseline {trivial:.4f} ({scores['test_baseline']})"
        return f"Test accuracy {scores[HEADLINE]:.4f} ({100 * scores[HEADLINE]:.2f}%){beside}"

    def baseline(self, train_y: Tensor, test_y: Tensor) -> dict:
        """Always the training split's most frequent class (per step: tag, counted over every token), scored on
        the test split; nothing for an empty split."""
        train, test = train_y[train_y != IGNORE], test_y[test_y != IGNORE]
        if not train.numel() or not test.numel():
            return {}
        top = int(torch.bincount(train).argmax())
        what = "tag overall" if self.per_step else "class"
        return {
            "test_baseline_accuracy": (test == top).float().mean().item(),
            "test_baseline": f"always {self.classes[top]!r}, the training split's most frequent {what}",
        }

    def per_class(self, y: Tensor, predictions: Tensor) -> dict:
        """The classes, precision and recall of each, and the confusion matrix of labels ``y`` (N,)."""
        return {
            "classes": self.classes,
            "per_class": per_class(y, predictions, self.classes),
            "confusion_matrix": confusion_matrix(y, predictions, len(self.classes)).tolist(),
        }

    def drawn(self, y: Tensor, predictions: Tensor, most: int) -> Drawn | None:
        """The confusion matrix and the first ``most`` misclassified inputs (classes per sequence)."""
        matrix = confusion_matrix(y, predictions, len(self.classes)).numpy()
        wrong = (predictions != y).nonzero().squeeze(1).cpu()
        shown = wrong[:most]
        true, predicted = ([self.classes[i] for i in t[shown].tolist()] for t in (y.cpu(), predictions.cpu()))
        return Drawn("confusion_matrix", self.classes, "misclassified", shown, true, predicted, len(wrong), matrix)

    compared = ""

    def graph(self, model: nn.Module) -> nn.Module:
        return model

    def export_outputs(self, model: nn.Module, unpacked: bool) -> list[str]:
        return ["logits"]

    def export_difference(
        self,
        model: nn.Module,
        exported: Tensor | tuple[Tensor, ...],
        expected: Tensor,
        lengths: Tensor | None,
        out: Path,
    ) -> float:
        return (exported - expected).abs().max().item()

    def exported(self, steps: int) -> str:
        return f"output logits (N, {len(self.classes)}); classes {', '.join(self.classes)}"


class ClassPerSequence(Classes):
    """One class per sequence: labels ``(N,)``, logits ``(batch, classes)``, cross-entropy; macro-F1 when it is
    ``trainer.monitor``."""

    def count(self, y: Tensor) -> int:
        return len(y)

    def loss_sum(self, model: nn.Module, outputs: Tensor, y: Tensor, lengths: Tensor | None) -> Tensor:
        return F.cross_entropy(outputs, y, reduction="sum")

    def batch_mean(self, outputs: Tensor, y: Tensor) -> Tensor | None:
        return F.cross_entropy(outputs, y)

    def predict(self, model: nn.Module, outputs: Tensor, lengths: Tensor | None) -> Tensor:
        return outputs.argmax(1)

    def scores(self, y: Tensor, predictions: Tensor, monitor: str) -> dict[str, float]:
        return {"f1": macro_f1(y, predictions)} if monitor == "val_f1" else {}

    def report(self, y: Tensor, predictions: Tensor) -> dict:
        return {"test_samples": len(y), **self.per_class(y, predictions)}

    def answers(self, model: nn.Module, outputs: Tensor, tokens: list[list[str]] | None = None) -> list[dict]:
        """The most probable class (index ``prediction``, name ``label``) and its softmax probability."""
        probability, prediction = outputs.softmax(1).max(1)
        return [
            {"prediction": p, "label": self.classes[p], "probability": q}
            for p, q in zip(prediction.tolist(), probability.tolist())
        ]


class ClassPerStep(Classes):
    """One class (tag) per step: labels ``(N, steps)`` with ``IGNORE`` at padding, logits ``(batch, steps,
    classes)``; cross-entropy over the valid steps, or the negative log-likelihood and the Viterbi path of the
    model's linear-chain CRF (``model.crf``) when it has one. Scored per token: accuracy, macro-F1 over tags, and
    span scores for BIO/BIOES tags. The test pass is not drawn."""

    per_step = True
    pictures = False
    stratified = False
    done = "tagged"

    def count(self, y: Tensor) -> int:
        return int((y != IGNORE).sum())

    def loss_sum(self, model: nn.Module, outputs: Tensor, y: Tensor, lengths: Tensor | None) -> Tensor:
        crf = getattr(_unwrapped(model), "crf", None)
        if crf is not None:
            return crf.nll(outputs, y, _full(lengths, y)).sum()
        return F.cross_entropy(outputs.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")

    def batch_mean(self, outputs: Tensor, y: Tensor) -> Tensor | None:
        return None

    def predict(self, model: nn.Module, outputs: Tensor, lengths: Tensor | None) -> Tensor:
        crf = getattr(_unwrapped(model), "crf", None)
        full = _full(lengths, outputs[..., 0])
        if crf is not None:
            return crf.decode(outputs, full)
        steps = torch.arange(outputs.shape[1], device=outputs.device)
        return outputs.argmax(-1).masked_fill(steps >= full.to(outputs.device).unsqueeze(1), IGNORE)

    def scores(self, y: Tensor, predictions: Tensor, monitor: str) -> dict[str, float]:
        return tag_scores(y, predictions, self.classes)

    def report(self, y: Tensor, predictions: Tensor) -> dict:
        """Span scores over the sequences, then per token (the valid steps of every sample)."""
        tags = {f"test_{k}": v for k, v in tag_scores(y, predictions, self.classes).items()}
        valid, tokens = y != IGNORE, self.count(y)
        return {**tags, "test_samples": tokens, "test_tokens": tokens, **self.per_class(y[valid], predictions[valid])}

    def answers(self, model: nn.Module, outputs: Tensor, tokens: list[list[str]] | None = None) -> list[dict]:
        """The tag of every step (``tags``); ``label``: each word with its tag, ``word/TAG ...`` (the tags alone
        without ``tokens``: a series)."""
        answers = []
        for path, words in zip(self.predict(model, outputs, None).tolist(), tokens or [None] * len(outputs)):
            tags = [self.classes[t] for t in path]
            label = " ".join(tags if words is None else (f"{w}/{t}" for w, t in zip(words, tags)))
            answers.append({"tags": tags, "label": label, "probability": None})
        return answers

    def export_outputs(self, model: nn.Module, unpacked: bool) -> list[str]:
        """The per-step logits, and with a CRF in an unpacked graph its Viterbi ``tags`` too."""
        return ["logits", "tags"] if unpacked and getattr(model, "crf", None) is not None else ["logits"]

    def export_difference(
        self,
        model: nn.Module,
        exported: Tensor | tuple[Tensor, ...],
        expected: Tensor,
        lengths: Tensor | None,
        out: Path,
    ) -> float:
        """The Viterbi tags must be the PyTorch model's exactly; the logits count at the valid steps only."""
        if isinstance(exported, tuple):
            exported, tags = exported
            if not torch.equal(tags, model.crf.decode(expected, lengths)):
                raise BirnnError(f"{out} gives other Viterbi tags than PyTorch's CRF.")
        if lengths is not None:
            valid = torch.arange(exported.shape[1]) < lengths.unsqueeze(1)
            exported, expected = exported[valid], expected[valid]
        return super().export_difference(model, exported, expected, lengths, out)

    def exported(self, steps: int) -> str:
        return f"output logits (N, {steps}, {len(self.classes)}) per step; classes {', '.join(self.classes)}"


LOSSES = ("mse", "mae", "huber")  # task.loss: the elementwise loss on standardized targets
SPEC = ("per_step", "loss", "mean", "std", "log")  # the fields of ``Values.spec``: what a checkpoint holds


class Values:
    """Values, not classes (``task=regression``): one per sequence (targets ``(N,)``, or ``(N, d)`` for ``d``
    outputs named by ``names``), or with ``per_step`` one per step (``(N, steps)``; ``NaN``, which padding beyond a
    length is, is not scored). The model learns standardized targets: ``log1p`` first with ``log``, then minus the
    training split's ``mean`` over its ``std`` (per output; 0 and 1 without ``task.standardize_targets``); every
    prediction and score is in the target's own units (the scaling inverted). The loss (``task.loss``: mse, mae,
    huber) is on the standardized targets; the scores are RMSE, MAE and R² (over the scored steps for per-step
    targets; over ``d`` outputs their uniform average, each output's beside it)."""

    pictures = True  # predicted against true values, and the worst-predicted inputs
    accuracy = False
    stratified = False
    score = "test_rmse"
    done = "given a value"
    compared = " (in standardized units)"

    def __init__(
        self,
        names: list[str],
        per_step: bool = False,
        loss: str = "mse",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        log: bool = False,
    ):
        self.names, self.per_step, self.loss, self.log = list(names), bool(per_step), loss, bool(log)
        self.mean = torch.tensor(mean if mean is not None else [0.0] * len(self.names), dtype=torch.float32)
        self.std = torch.tensor(std if std is not None else [1.0] * len(self.names), dtype=torch.float32)

    @property
    def spec(self) -> dict:
        """What a checkpoint's data spec holds of the targets (``values``): enough to rebuild this kind."""
        return {
            "per_step": self.per_step,
            "loss": self.loss,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "log": self.log,
        }

    @property
    def outputs(self) -> int:
        return len(self.names)

    def _shaped(self, outputs: Tensor) -> Tensor:
        """The model's outputs shaped like the targets: ``(batch,)`` for one value, ``(batch, d)``, per step
        ``(batch, steps)``."""
        return outputs[..., 0] if self.per_step or self.outputs == 1 else outputs

    def standardized(self, y: Tensor) -> Tensor:
        """Targets in the units the model learns."""
        y = torch.log1p(y) if self.log else y
        return (y - self.mean.to(y.device)) / self.std.to(y.device)

    def restored(self, z: Tensor) -> Tensor:
        """The model's standardized outputs in the target's own units."""
        y = z.float() * self.std.to(z.device) + self.mean.to(z.device)
        return torch.expm1(y) if self.log else y

    def count(self, y: Tensor) -> int:
        return int(torch.isfinite(y).sum()) if self.per_step else len(y)

    def loss_sum(self, model: nn.Module, outputs: Tensor, y: Tensor, lengths: Tensor | None) -> Tensor:
        """Per sequence: each sample's loss averaged over its outputs, summed; per step: summed over the scored
        steps."""
        scored = torch.isfinite(y)
        z = torch.where(scored, self.standardized(torch.where(scored, y, 0.0)), 0.0)
        guess = self._shaped(outputs).float()
        if self.loss == "mae":
            error = (guess - z).abs()
        elif self.loss == "huber":
            error = F.huber_loss(guess, z, reduction="none")
        else:
            error = (guess - z).square()
        if self.per_step:
            return torch.where(scored, error, 0.0).sum()
        return error.reshape(len(y), -1).mean(1).sum()

    def batch_mean(self, outputs: Tensor, y: Tensor) -> Tensor | None:
        return None

    def predict(self, model: nn.Module, outputs: Tensor, lengths: Tensor | None) -> Tensor:
        """The values in the target's units (per step: ``NaN`` beyond a length)."""
        values = self.restored(self._shaped(outputs))
        if self.per_step and lengths is not None:
            steps = torch.arange(values.shape[1], device=values.device)
            values = values.masked_fill(steps >= lengths.to(values.device).unsqueeze(1), math.nan)
        return values

    def correct(self, predictions: Tensor, y: Tensor) -> Tensor:
        return torch.zeros((), dtype=torch.int64, device=y.device)

    def scores(self, y: Tensor, predictions: Tensor, monitor: str) -> dict[str, float]:
        return value_scores(y, predictions, self.names, self.per_step)

    def report(self, y: Tensor, predictions: Tensor) -> dict:
        return {
            "test_samples": len(y),
            **({"test_steps": self.count(y)} if self.per_step else {}),
            "outputs": self.names,
            **{f"test_{k}": v for k, v in self.scores(y, predictions, "").items()},
        }

    def headline(self, scores: dict) -> str:
        """RMSE, MAE and R² on the test split, with the mean and median predictors' RMSE beside them."""
        text = f"Test RMSE {scores['test_rmse']:.4g}, MAE {scores['test_mae']:.4g}, R² {scores['test_r2']:.4f}"
        if "test_baseline_rmse" in scores:
            text += (
                f"; mean predictor RMSE {scores['test_baseline_rmse']:.4g}, median predictor RMSE "
                f"{scores['test_median_rmse']:.4g}"
            )
        return text

    def baseline(self, train_y: Tensor, test_y: Tensor) -> dict:
        """The trivial predictors: the training split's mean (``test_baseline_rmse``) and median
        (``test_median_rmse``) of each output, predicted for every test target; nothing for an empty split."""
        train, test = self._table(train_y), self._table(test_y)
        if not len(train) or not len(test):
            return {}
        scores = {}
        for name, guess in (("baseline", train.nanmean(0)), ("median", train.nanquantile(0.5, 0))):
            scores[f"test_{name}_rmse"] = value_scores(test, guess.expand_as(test), self.names, self.per_step)["rmse"]
        scores["test_baseline"] = "the training split's mean (test_baseline_rmse) and median (test_median_rmse)"
        return scores

    def _table(self, y: Tensor) -> Tensor:
        """Targets as rows of outputs (float64, CPU); per step: every step one row."""
        y = y.detach().cpu().double()
        return y.reshape(-1, 1) if self.per_step else y.reshape(len(y), -1)

    def answers(self, model: nn.Module, outputs: Tensor, tokens: list[list[str]] | None = None) -> list[dict]:
        """The predicted value(s) of each input (``value``: a number, a list of ``d``, or one per step) and
        ``label``, as a table prints them."""
        answers = []
        for value in self.predict(model, outputs, None).tolist():
            shown = " ".join(f"{v:.6g}" for v in value) if isinstance(value, list) else f"{value:.6g}"
            answers.append({"value": value, "label": shown, "probability": None})
        return answers

    def drawn(self, y: Tensor, predictions: Tensor, most: int) -> Drawn | None:
        """Predicted against true values where scored (at most ``SCATTER`` points, evenly spaced), and the ``most``
        inputs predicted worst: the largest mean absolute error over their outputs (per step: their scored steps)."""
        y, p = y.detach().cpu().double(), predictions.detach().cpu().double()
        true, predicted = self._table(y), self._table(p)
        scored_rows = torch.isfinite(true).all(1)
        true, predicted = true[scored_rows], predicted[scored_rows]
        rows = torch.linspace(0, len(true) - 1, min(len(true), SCATTER)).round().long()
        error = (p - y).abs().reshape(len(y), -1)
        scored = torch.isfinite(error)
        mean = torch.where(scored, error, 0.0).sum(1) / scored.sum(1).clamp(min=1)
        order = torch.where(scored.any(1), mean, -1.0).argsort(descending=True, stable=True)
        shown = order[: min(most, int(scored.any(1).sum()))]
        if self.per_step:  # a series of values: their mean, and how far the predictions were
            true_text = [f"mean {y[i][scored[i]].mean():.4g}" for i in shown.tolist()]
            predicted_text = [f"{p[i][scored[i]].mean():.4g}, MAE {mean[i]:.3g}" for i in shown.tolist()]
        else:
            true_text, predicted_text = ([_shown(t[i]) for i in shown.tolist()] for t in (y, p))
        values = (true[rows].numpy(), predicted[rows].numpy())
        return Drawn(
            "predicted_vs_true", self.names, "worst_predicted", shown, true_text, predicted_text, len(y), values=values
        )

    def graph(self, model: nn.Module) -> nn.Module:
        """The model with the scaling inverted inside the graph (``InUnits``): values in the target's units."""
        return InUnits(model, self).train(model.training)

    def export_outputs(self, model: nn.Module, unpacked: bool) -> list[str]:
        return ["values"]

    def export_difference(
        self,
        model: nn.Module,
        exported: Tensor | tuple[Tensor, ...],
        expected: Tensor,
        lengths: Tensor | None,
        out: Path,
    ) -> float:
        """The largest difference in the units the model learned (standardized: a target of thousands compares as
        closely as one near 1), at the valid steps of targets per step."""
        if self.per_step and lengths is not None:
            valid = torch.arange(exported.shape[1]) < lengths.unsqueeze(1)
            exported, expected = exported[valid], expected[valid]
        return (self.standardized(exported.float()) - self.standardized(expected.float())).abs().max().item()

    def exported(self, steps: int) -> str:
        shape = f"(N, {steps}) per step" if self.per_step else "(N,)" if self.outputs == 1 else f"(N, {self.outputs})"
        scale = "expm1 of the log1p scaling" if self.log else "the training scaling inverted"
        return f"output values {shape} in the target's units ({scale} inside the model; {', '.join(self.names)})"


SCATTER = 10_000  # points at most in a predicted-vs-true picture (evenly spaced over the test targets)


class InUnits(nn.Module):
    """A model whose outputs come out in the target's units (``Values.restored`` inside the graph, for export):
    ``(batch,)``, ``(batch, d)`` or per step ``(batch, steps)``."""

    def __init__(self, model: nn.Module, kind: Values):
        super().__init__()
        self.model, self.squeeze, self.log = model, kind.per_step or kind.outputs == 1, kind.log
        self.register_buffer("mean", kind.mean.clone())
        self.register_buffer("std", kind.std.clone())

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:  # the names export's dynamic shapes use
        z = (self.model(x) if lengths is None else self.model(x, lengths)).float()
        y = (z[..., 0] if self.squeeze else z) * self.std + self.mean
        return torch.expm1(y) if self.log else y


def _shown(value: Tensor) -> str:
    """One sample's target (a number, or several) as a caption shows it."""
    return f"{value.item():.4g}" if value.numel() == 1 else "(" + ", ".join(f"{v:.3g}" for v in value.tolist()) + ")"


def fit_values(names: list[str], per_step: bool, task: dict, train_y: Tensor) -> Values:
    """The kind of values ``task`` (``task.*``) asks for, its scaling fitted on the training targets: ``log1p`` of
    them with ``task.log_target``, then their mean and std per output (std 1 where they are constant) with
    ``task.standardize_targets``."""
    kind = Values(names, per_step, task.get("loss", "mse"), log=bool(task.get("log_target", False)))
    if task.get("standardize_targets", True):
        table = kind._table(train_y)
        table = torch.log1p(table) if kind.log else table
        mean = table.nanmean(0)
        std = ((table - mean).square().nanmean(0)).sqrt()
        kind.mean = mean.float()
        kind.std = torch.where(std > 0, std, 1.0).float()
    return kind


def value_scores(y: Tensor, predictions: Tensor, names: list[str], per_step: bool) -> dict[str, float]:
    """RMSE, MAE and R² of ``predictions`` (float64) over the scored targets (finite ``y``), uniformly averaged over
    the outputs, and with several outputs each one's (``rmse_<name>``...); NaN for no scored target. R² follows
    scikit-learn's ``r2_score`` (``force_finite``): a constant target scores 1.0 where predicted exactly, else 0.0, so
    one constant output does not make the average NaN."""
    y, p = y.detach().cpu().double(), predictions.detach().cpu().double()
    if per_step:
        scored = torch.isfinite(y)
        y, p = y[scored].reshape(-1, 1), p[scored].reshape(-1, 1)
    else:
        y, p = y.reshape(len(y), -1), p.reshape(len(p), -1)
    error = p - y
    rmse = error.square().mean(0).sqrt()
    mae = error.abs().mean(0)
    spread = (y - y.mean(0)).square().sum(0)
    residual = error.square().sum(0)
    exact = torch.where(residual == 0, 1.0, 0.0).double()
    r2 = torch.where(spread > 0, 1 - residual / spread, exact) if len(y) else torch.full_like(rmse, math.nan)
    scores = {"rmse": rmse.mean().item(), "mae": mae.mean().item(), "r2": r2.mean().item()}
    if y.shape[1] > 1:
        for i, name in enumerate(names):
            scores |= {f"rmse_{name}": rmse[i].item(), f"mae_{name}": mae[i].item(), f"r2_{name}": r2[i].item()}
    return scores


def confusion_matrix(y: Tensor, predictions: Tensor, num_classes: int) -> Tensor:
    """Counts (num_classes, num_classes) on the CPU: row = true class, column = predicted class."""
    from sklearn import metrics

    return torch.from_numpy(metrics.confusion_matrix(y.cpu(), predictions.cpu(), labels=range(num_classes)))


def per_class(y: Tensor, predictions: Tensor, classes: list[str]) -> list[dict]:
    """Precision, recall and support per class; a score with nothing to divide by is None."""
    from sklearn import metrics

    precision, recall, _, support = metrics.precision_recall_fscore_support(
        y.cpu(), predictions.cpu(), labels=range(len(classes)), zero_division=math.nan
    )
    return [
        {
            "class": name,
            "precision": None if math.isnan(p) else float(p),
            "recall": None if math.isnan(r) else float(r),
            "support": int(s),
        }
        for name, p, r, s in zip(classes, precision, recall, support)
    ]


def macro_f1(y: Tensor, predictions: Tensor) -> float:
    """Macro-averaged F1 over the classes present in ``y`` or ``predictions`` (valid labels only: ``y >= 0``)."""
    from sklearn import metrics

    valid = y >= 0
    return float(metrics.f1_score(y[valid].cpu(), predictions[valid].cpu(), average="macro", zero_division=0))


def tag_scores(y: Tensor, predictions: Tensor, classes: list[str]) -> dict[str, float]:
    """Per-token macro-F1 and, for BIO/BIOES tags, span precision, recall and F1 (seqeval, strict matching)."""
    scores = {"f1": macro_f1(y, predictions)}
    scheme = span_scheme(classes)
    if scheme is None:
        return scores
    from seqeval import metrics as spans
    from seqeval.scheme import IOB2, IOBES

    true, pred = [], []
    for row_y, row_p in zip(y.cpu().tolist(), predictions.cpu().tolist()):
        true.append([classes[t] for t in row_y if t >= 0])
        pred.append([classes[p] if p >= 0 else "O" for t, p in zip(row_y, row_p) if t >= 0])
    kwargs = {"mode": "strict", "scheme": IOBES if scheme == "BIOES" else IOB2, "zero_division": 0}
    return scores | {
        "span_precision": float(spans.precision_score(true, pred, **kwargs)),
        "span_recall": float(spans.recall_score(true, pred, **kwargs)),
        "span_f1": float(spans.f1_score(true, pred, **kwargs)),
    }


def value_names(outputs: int) -> list[str]:
    """The names of ``outputs`` values when the data name none: ``value``, or ``value0``, ``value1``, ..."""
    return ["value"] if outputs == 1 else [f"value{i}" for i in range(outputs)]


def as_values(y: Tensor, lengths: Tensor | None, steps: int, per_step: bool, log: bool, where: str) -> Tensor:
    """Targets checked and shaped as ``Values`` reads them (float32): per sequence ``(N,)`` or ``(N, d)`` (``(N,
    1)`` becomes ``(N,)``), every one finite; per step ``(N, steps)``, ``NaN`` not scored (steps beyond a length
    become ``NaN``), an infinite one refused. A number beyond float32's range is refused as such. ``log``
    (``task.log_target``): a negative target is refused. ``where``: the data and split, for the message."""
    if not y.is_floating_point():
        raise BirnnError(
            f"{where} holds classes (integer labels), not values: task=regression needs float targets (train "
            "classes with task=classification)"
        )
    overflow = torch.isfinite(y) & ~torch.isfinite(y.float())  # a number in the file, inf in float32
    if overflow.any():
        n = int(overflow.sum())
        raise BirnnError(
            f"{where} holds {n} target{'s' * (n > 1)} beyond float32's range (|y| > 3.4e38, e.g. "
            f"{y[overflow][0].item():.6g}): birnn computes in float32; rescale the targets"
        )
    y = y.float()
    if per_step:
        if y.ndim != 2 or y.shape[1] != steps:
            raise BirnnError(
                f"{where}: task.per_step=true needs one target per step, shaped (N, {steps}); got {tuple(y.shape)}"
            )
        if torch.isinf(y).any():
            raise BirnnError(f"{where} holds an infinite target (per step, NaN means not scored; inf is an error)")
        if lengths is not None:
            y = y.masked_fill(torch.arange(steps) >= lengths.cpu().unsqueeze(1), math.nan)
    else:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim not in (1, 2):
            raise BirnnError(f"{where}: targets must be shaped (N,) or (N, d) values; got {tuple(y.shape)}")
        bad = int((~torch.isfinite(y)).sum())
        if bad:
            raise BirnnError(
                f"{where} holds {bad} non-finite target{'s' * (bad > 1)} (NaN or inf): every sequence needs a value "
                "(only per-step targets may leave a step unscored with NaN)"
            )
    if log and (y < 0).any():
        raise BirnnError(
            f"{where} holds negative targets ({y[y < 0].min().item():.6g}): task.log_target=true fits log1p of a "
            "non-negative target; set task.log_target=false"
        )
    return y
