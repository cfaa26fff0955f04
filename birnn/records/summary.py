"""Sweep summaries: ``summary.csv``, ``summary.md`` and ``summary.png`` from the records of finished runs.

A run dir counts as a job when it holds ``.hydra/overrides.yaml``. Its status comes from ``status.json``
(written by ``birnn.records.callbacks.SweepSummary`` at the end of every job, failed ones included); a run with no
record is ``completed`` when it holds ``metrics.json``, else ``incomplete`` (still running, or killed).
The swept keys are the override keys whose values differ between the jobs. Jobs are ranked on their best
validation accuracy when they have one (model selection never looks at the test split; the tables say so), and
their test scores are then those of that best epoch's model, the one ``best.pt`` holds (``test_epoch``), and
replicates (seeds, CV folds) of one configuration are also given as mean ± std.
``python -m birnn.report`` (``birnn/report.py``) rebuilds them for any sweep dir or run dirs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from birnn.schema.errors import BirnnError
from birnn.schema.metrics import HEADLINE, HEADLINES, MONITORS, best_first, headline
from birnn.system.files import MAX_RECORD_BYTES, atomic_write, read_json, read_text

STATUS_FILE = "status.json"
METRICS = ("test_loss", "train_seconds")  # after the runs' headline test score (test_accuracy, test_rmse)
# ranking metrics, first present wins (a run's ``monitor``, trainer.monitor, puts best_val_f1 first)
VALIDATION = (f"best_{MONITORS[0]}", MONITORS[0])
REPLICATES = {"seed": "seeds", "data.fold": "folds"}  # swept keys averaged over (mean ± std per configuration)
EPOCHS = ("test_epoch", "best_epoch")  # which epoch's model the test columns score, and which the ranking chose
NOT_SELECTED = "†"  # marks the test columns in summary.md when the ranking did not look at them


@dataclass
class Job:
    name: str  # the run dir, relative to the summary's folder
    status: str  # completed | pruned (by a search) | failed | incomplete
    error: str  # one line; empty unless failed
    overrides: dict[str, str]  # key -> value as typed on the command line
    values: dict[str, Any]  # key -> parsed value (numbers for numeric keys)
    metrics: dict[str, Any]


def write_status(run_dir: Path, status: str, error: str = "") -> None:
    """Record how a job ended (``completed`` / ``failed`` and the error) in its run dir.

    A failed attempt on a completed run (a refused resume, say) keeps the completed record: birnn refuses
    before touching a finished run, so its results still stand. An unchanged record is not rewritten.
    """
    path, record = run_dir / STATUS_FILE, {"status": status, "error": error}
    old = _record(path) if path.exists() else None
    if old == record or (old and old["status"] == "completed" and status == "failed"):
        return
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=2).encode() + b"\n"))


def _record(path: Path) -> dict | None:
    """A job's ``status.json``: ``{"status": ..., "error": ...}``, None when it is not one."""
    try:
        record = read_json(path)
    except BirnnError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("status"), str) and isinstance(record.get("error"), str)
    return record if ok else None


def one_line(error: BaseException) -> str:
    """``Type: message`` on a single line (a multi-line message is joined, so the cause is not lost)."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """The run dirs in ``paths``: each path is a run dir or a folder (a sweep dir) holding run dirs."""
    runs: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise BirnnError(f"{path} is not a directory")
        found = sorted((p.parent.parent for p in path.rglob(".hydra/overrides.yaml")), key=natural_key)
        if not found:
            raise BirnnError(f"{path} holds no runs (no .hydra/overrides.yaml below it)")
        runs += [p for p in found if p not in runs]
    return runs


def natural_key(path: Path) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def read_overrides(run_dir: Path) -> list:
    """A job's overrides as Hydra recorded them (``.hydra/overrides.yaml``: a YAML list of strings), parsed; a record
    that is not one (a YAML tag, a damaged file) is one line naming the file. YAML is read safely: nothing is built."""
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        try:
            overrides = yaml.safe_load(read_text(path, MAX_RECORD_BYTES))
        except RecursionError:  # PyYAML composes nested collections recursively
            raise ValueError("nested too deeply") from None
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ValueError("not a list of override strings")
        parsed = OverridesParser.create().parse_overrides(overrides)
        sweep = next((o.input_line for o in parsed if o.is_sweep_override()), None)
        if sweep is not None:
            raise ValueError(f"{sweep} is a sweep, not one job's value")
        return parsed
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError, HydraException) as e:
        first = " ".join(str(e).split("\n")[0].split())
        raise BirnnError(f"{path} is not a Hydra overrides record: {first}") from None


def load_job(run_dir: Path, root: Path) -> Job:
    parsed = read_overrides(run_dir)
    metrics_path, status_path = run_dir / "metrics.json", run_dir / STATUS_FILE
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    if not isinstance(metrics, dict):
        raise BirnnError(f"{metrics_path}: not a JSON object of metrics")
    if status_path.exists():
        record = _record(status_path)
        if record is None:
            raise BirnnError(f"{status_path}: not a job record (status and error)")
    else:
        record = {"status": "completed" if metrics else "incomplete", "error": ""}
    if record["status"] not in ("completed", "pruned"):
        metrics = {}  # a failed relaunch must not show the metrics of an earlier run
    name = Path(os.path.relpath(run_dir, root)).as_posix()
    return Job(
        name=run_dir.name if name == "." else name,
        status=record["status"],
        error=record["error"],
        overrides={o.key_or_group: o.get_value_element_as_str() for o in parsed},
        values={o.key_or_group: o.value() for o in parsed},
        metrics=metrics,
    )


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value is not the same in every job, in command-line order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def default_metric(jobs: list[Job]) -> str:
    """The best validation score (``trainer.monitor``'s) when the runs have a validation split (model selection),
    else their headline test score (test accuracy, test RMSE)."""
    monitored = [f"best_{m}" for m in dict.fromkeys(job.metrics.get("monitor", MONITORS[0]) for job in jobs)]
    return next((m for m in (*monitored, *VALIDATION) if any(m in job.metrics for job in jobs)), headlines(jobs)[0])


def headlines(jobs: list[Job]) -> list[str]:
    """The headline test scores the runs report (``birnn.schema.metrics.HEADLINES``), ``test_accuracy`` if none."""
    return [h for h in HEADLINES if any(h in job.metrics for job in jobs)] or [HEADLINE]


def tested_model(metrics: dict, metric: str) -> dict:
    """``metrics`` with the test scores of the model a ``best_*`` ranking chose (``best.pt``'s), ``best_epoch`` (the
    epoch it chose) and ``test_epoch`` (the epoch whose model the test scores are). A run that tested its last model
    (``trainer.test_on=last``) scored the best epoch's model too when it tested at every epoch end (its
    ``history``); without such a score the last model's stay, and ``test_epoch`` is the last epoch."""
    score = headline(metrics)
    if not metric.startswith("best_") or metric not in metrics or score not in metrics:
        return metrics
    monitored = metric.removeprefix("best_")
    best = next((h for h in metrics.get("history") or [] if h.get(monitored) == metrics[metric]), None)
    chosen = {**metrics, "best_epoch": best["epoch"]} if best else dict(metrics)
    if "test_epoch" in metrics:  # test_on=best: the final test pass scored best.pt
        return chosen
    if best is not None and score in best:
        return {**chosen, **{k: v for k, v in best.items() if k.startswith("test_")}, "test_epoch": best["epoch"]}
    return {**chosen, "test_epoch": metrics.get("epochs")}


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class Summary:
    """The jobs of a sweep (best first by ``metric``) and the tables and plot made from them."""

    def __init__(self, jobs: list[Job], metric: str | None = None):
        self.metric = metric or default_metric(jobs)
        if not any(number(job.metrics.get(self.metric)) is not None for job in jobs) and any(
            job.status == "completed" for job in jobs
        ):
            known = sorted({k for job in jobs for k, v in job.metrics.items() if number(v) is not None})
            raise BirnnError(f"metric {self.metric!r} is in no run's metrics.json; choose one of {', '.join(known)}")
        jobs = [replace(job, metrics=tested_model(job.metrics, self.metric)) for job in jobs]
        self.keys = swept_keys(jobs)
        tested, chosen = ([c] if any(c in j.metrics for j in jobs) else [] for c in EPOCHS)
        validation = [m for m in VALIDATION[::-1] if any(m in j.metrics for j in jobs)]
        self.metric_columns = [*headlines(jobs), *METRICS, *tested, *validation, *chosen]
        if self.metric not in self.metric_columns:
            self.metric_columns.append(self.metric)

        def rank(job: Job) -> tuple:
            value = number(job.metrics.get(self.metric))
            return best_first(self.metric, value) if value is not None else (2, 0.0)

        self.jobs = sorted(jobs, key=rank)  # stable: NaN scores, then unranked jobs, last in their order
        self.completed = [job for job in self.jobs if job.metrics]
        self.ranked = [job for job in self.completed if number(job.metrics.get(self.metric)) is not None]

    @property
    def columns(self) -> list[str]:
        return ["job", "status", "error", *self.keys, *self.metric_columns, "ranked_on"]

    @property
    def selection_note(self) -> str:
        """Which metric ranked the jobs, and whether the test split took part in that choice."""
        if self.metric.startswith("test"):
            return (
                f"Ranked on {self.metric}: the test split chose the best job, so its test scores are no longer "
                "an unbiased estimate (give the runs a validation split: data.val_size or data.folds)."
            )
        same = (
            f" test_epoch is the epoch whose model they score, best_epoch the one {self.metric} chose (best.pt); "
            "they differ where a run tested its last model and kept no test score of its best epoch (a multirun's "
            "default: trainer.test_on=best tests best.pt)."
            if self.metric.startswith("best_")
            else ""
        )
        return f"Ranked on {self.metric}; {NOT_SELECTED} test scores are reported, not used for selection.{same}"

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "job": job.name,
                "status": job.status,
                "error": job.error,
                **{k: job.overrides.get(k, "") for k in self.keys},
                **{m: job.metrics.get(m, "") for m in self.metric_columns},
                "ranked_on": self.metric,
            }
            for job in self.jobs
        ]

    @property
    def replicates(self) -> list[str]:
        """The swept keys whose jobs are replicates of one configuration: seeds and CV folds."""
        return [k for k in REPLICATES if k in self.keys]

    def header(self, column: str) -> str:
        marked = column.startswith("test") and not self.metric.startswith("test")
        return f"{column} {NOT_SELECTED}" if marked else column

    def seed_groups(self) -> list[dict[str, Any]]:
        """Mean and sample std over seeds and folds of each metric, per value of the other swept keys (best first)."""
        others = [k for k in self.keys if k not in REPLICATES]
        count = " x ".join(REPLICATES[k] for k in self.replicates)
        groups: dict[tuple, list[Job]] = {}
        for job in self.completed:
            groups.setdefault(tuple(job.overrides.get(k, "") for k in others), []).append(job)
        rows = []
        for values, members in groups.items():
            row: dict[str, Any] = dict(zip(others, values)) | {count: len(members)}
            for m in (m for m in self.metric_columns if m not in EPOCHS):
                xs = [v for job in members if (v := number(job.metrics.get(m))) is not None]
                finite = all(map(math.isfinite, xs))  # statistics.stdev fails on nan and inf (AttributeError)
                spread = (statistics.stdev(xs) if finite else math.nan) if len(xs) > 1 else 0.0
                row[m] = (statistics.fmean(xs), spread) if xs else None
            rows.append(row)
        return sorted(rows, key=lambda r: best_first(self.metric, r[self.metric][0]) if r[self.metric] else (2, 0.0))

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return out.getvalue()

    def markdown(self) -> str:
        counts = ", ".join(f"{n} {status}" for status, n in Counter(job.status for job in self.jobs).items())
        columns = self.columns[:-1]  # ranked_on: said once, in the note
        rows = [[cell(c, r[c]) for c in columns] for r in self.rows()]
        text = [
            f"{len(self.jobs)} jobs ({counts}), best first by {self.metric}.",
            "",
            self.selection_note,
            "",
            table([self.header(c) for c in columns], rows),
        ]
        groups = self.seed_groups() if self.replicates else []
        if groups:
            columns = list(groups[0])
            over = " and ".join(REPLICATES[k] for k in self.replicates)
            text += [
                "",
                f"Mean ± std over {over}:",
                "",
                table([self.header(c) for c in columns], [[mean_std(c, r[c]) for c in columns] for r in groups]),
            ]
        return "\n".join(text) + "\n"

    def plot(self):  # -> matplotlib.figure.Figure
        """The metric against each swept numeric key, one curve per value of the other keys (mean ± std over seeds)."""
        from matplotlib.figure import Figure

        xkeys = [
            k
            for k in self.keys
            if k not in REPLICATES
            and self.ranked  # nothing to plot when every job failed
            and all(number(job.values.get(k)) is not None for job in self.ranked)
        ]
        fig = Figure(figsize=(5.5 * max(1, len(xkeys)), 4), layout="constrained")
        axes = fig.subplots(1, max(1, len(xkeys)), squeeze=False)[0]
        if not self.ranked:
            axes[0].text(0.5, 0.5, "no completed jobs", ha="center", va="center")
        elif not xkeys:  # nothing numeric swept: one bar per job
            axes[0].bar(
                range(len(self.ranked)),
                [job.metrics[self.metric] for job in self.ranked],
                tick_label=[job.name for job in self.ranked],
            )
            axes[0].set_xlabel("job")
        for ax, key in zip(axes, xkeys):
            others = [k for k in self.keys if k != key and k not in REPLICATES]
            curves: dict[tuple, dict[float, list[float]]] = {}
            for job in self.ranked:
                curve = curves.setdefault(tuple(job.overrides.get(k, "") for k in others), {})
                curve.setdefault(number(job.values[key]), []).append(job.metrics[self.metric])
            for label, points in curves.items():
                xs = sorted(points)
                ax.errorbar(
                    xs,
                    [statistics.fmean(points[x]) for x in xs],
                    marker="o",
                    capsize=3,
                    yerr=[statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs],
                    label=", ".join(f"{k}={v}" for k, v in zip(others, label)) or None,
                )
            xs = [x for points in curves.values() for x in points]
            if min(xs) > 0 and (key.split(".")[-1] == "lr" or max(xs) / min(xs) >= 100):
                ax.set_xscale("log")
            ax.set_xlabel(key)
            if others:
                ax.legend(fontsize="small")
            if self.replicates:
                ax.set_title(
                    f"mean ± std over {' and '.join(REPLICATES[k] for k in self.replicates)}", fontsize="medium"
                )
        for ax in axes:
            ax.set_ylabel(self.metric)
            ax.grid(alpha=0.3)
        fig.suptitle(self.selection_note.replace(f"{NOT_SELECTED} ", ""), fontsize="small", wrap=True)
        return fig

    def write(self, folder: Path, stem: str = "summary") -> str:
        """Write ``<stem>.csv``, ``<stem>.md`` and ``<stem>.png`` into ``folder``; return the markdown."""
        md = self.markdown()
        atomic_write(folder / f"{stem}.csv", lambda f: f.write(self.csv().encode()))
        atomic_write(folder / f"{stem}.md", lambda f: f.write(f"# Sweep summary\n\n{md}".encode()))
        fig = self.plot()
        atomic_write(folder / f"{stem}.png", lambda f: fig.savefig(f, format="png", dpi=100))
        return md


def cell(column: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if column.endswith("seconds") else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def mean_std(column: str, value: Any) -> str:
    if isinstance(value, tuple):
        return f"{cell(column, value[0])} ± {cell(column, value[1])}"
    return "" if value is None else cell(column, value)


def table(columns: list[str], rows: list[list[str]]) -> str:
    lines = [columns, ["---"] * len(columns), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def summarize(run_dirs: list[Path], folder: Path, metric: str | None = None, stem: str = "summary") -> str:
    """Build the summary of ``run_dirs`` into ``folder`` as ``<stem>.*`` (job names relative to it); return the
    markdown."""
    return Summary([load_job(run, folder) for run in run_dirs], metric).write(folder, stem)
