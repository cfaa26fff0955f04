"""What a study leaves in its dir: ``study.md`` (best trial, every trial's state), plots, and the trials' sweep
summary."""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from birnn.records import summary
from birnn.records.callbacks import locked
from birnn.schema.errors import first_line
from birnn.schema.metrics import HEADLINE, HEADLINES, MONITORS
from birnn.studies.objective import SKIPPED
from birnn.system.files import atomic_write

log = logging.getLogger("birnn.search")


def write_outputs(study: optuna.Study, study_dir: Path, final: bool) -> None:
    """study.md (best trial, every trial's state) after each trial; at the end also summary.{csv,md,png} over
    the trial run dirs (as for a sweep) and Optuna's plots."""
    trials = study.get_trials(deepcopy=False)
    with locked(study_dir):
        atomic_write(study_dir / "study.md", lambda f: f.write(study_markdown(study, trials).encode()))
        if not final:
            return
        runs = sorted(
            {Path(t.user_attrs["run_dir"]) for t in trials if "run_dir" in t.user_attrs}, key=summary.natural_key
        )
        runs = [r for r in runs if (r / ".hydra" / "overrides.yaml").is_file()]
        if runs:
            summary.summarize(runs, study_dir)
        write_plots(study, study_dir)


def study_markdown(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    skipped = [t for t in trials if SKIPPED in t.user_attrs]
    trials = [t for t in trials if SKIPPED not in t.user_attrs]
    n = Counter(t.state.name for t in trials)
    lines = [
        f"# Study {study.study_name}",
        "",
        f"{len(trials)} trials: " + ", ".join(f"{k} {v}" for k, v in sorted(n.items())) + ".",
        "",
    ]
    if skipped:
        lines += [
            f"Not counted: trial{'s' if len(skipped) > 1 else ''} {', '.join(str(t.number) for t in skipped)}, "
            "started by workers that counted the trials at the same moment and stopped before running "
            f"({skipped[0].user_attrs[SKIPPED]}).",
            "",
        ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # what the trials were judged by (trainer.monitor) and their headline test score (accuracy, RMSE)
    monitor = next((t.user_attrs["monitor"] for t in trials if "monitor" in t.user_attrs), MONITORS[0])
    score = next((h for h in HEADLINES if any(h in t.user_attrs for t in trials)), HEADLINE)
    if complete:
        best = study.best_trial
        lines += [
            f"Best trial {best.number} ({best.user_attrs.get('run_dir')}): best {monitor} "
            f"{best.value:.4f}, {score} {best.user_attrs.get(score, float('nan')):.4f} "
            "(its tested checkpoint; test not used for selection).",
            "",
            "Best parameters: " + ", ".join(f"{k}={v}" for k, v in best.params.items()),
            "",
        ]
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    columns = ["trial", "state", *keys, f"best_{monitor}", f"{score} †", "epochs", "run dir", "retry of"]
    rows = [
        [
            str(t.number),
            t.state.name,
            *(str(t.params.get(k, "")) for k in keys),
            f"{t.value:.4f}" if t.value is not None and not math.isnan(t.value) else "",
            f"{t.user_attrs[score]:.4f}" if score in t.user_attrs else "",
            str(t.user_attrs.get("epochs", "")),
            Path(t.user_attrs.get("run_dir", "")).name,
            retried(t),
        ]
        for t in trials
    ]
    return "\n".join([*lines, summary.table(columns, rows), "", "† not used for selection.", ""])


def retried(trial: FrozenTrial) -> str:
    """The number of the trial that ``trial`` continues, or an empty string."""
    number = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return "" if number is None else str(number)


def write_plots(study: optuna.Study, study_dir: Path) -> None:
    """Optuna's optimization history and parameter importances (matplotlib) as PNGs; skipped when too few trials."""
    from optuna.visualization import matplotlib as plots

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        log.info("No history.png / importance.png yet: they need two completed trials.")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, plot in (("history", plots.plot_optimization_history), ("importance", plots.plot_param_importances)):
            try:
                axes = plot(study)
                axes.figure.savefig(study_dir / f"{name}.png", dpi=100, bbox_inches="tight")
                axes.figure.clf()
            except Exception as e:  # e.g. importances need two completed trials
                log.info("No %s.png: %s", name, first_line(e))
