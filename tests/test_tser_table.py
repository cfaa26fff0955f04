"""``scripts/tser_table.py``: the published TSER RMSEs it ships, the trivial and linear predictors it computes, and
the table from a ``--quick`` run of the script as a user types it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aeon", reason="the TSER table needs the timeseries extra")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "tser_table.py"
spec = importlib.util.spec_from_file_location("tser_table", SCRIPT)
tser_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tser_table)
# Tecator's folder: the script's default (../shared/data/tser beside the repository), or BIRNN_TSER_ROOT
TECATOR = Path(os.environ.get("BIRNN_TSER_ROOT", tser_table.DATA_ROOT))

# fold 0 of the TSER archive expansion's results files (issue #36's table)
ISSUE = {
    "Covid3Month": (0.0389, 0.0402, 0.0430, 0.0436, 0.0556, 0.1395, 0.0522),
    "CardanoSentiment": (0.2984, 0.2895, 0.3134, 0.3023, 0.3846, 0.3415, 0.3802),
}


def test_the_published_figures_are_the_papers_fold_0_with_a_source_each():
    scores, sources = tser_table.read_published(tser_table.PUBLISHED)
    for problem, expected in ISSUE.items():
        got = tuple(round(scores[problem, m], 4) for m in tser_table.METHODS)
        assert got == expected, problem
    assert {p for p, _ in scores} == set(ISSUE)  # Tecator is in none of those files
    for method, source in sources.items():
        assert "Guijo-Rubio" in source and "DMKD 38" in source and "tser_archive_expansion/results/" in source, method
    assert scores["Covid3Month", "Random forest (5.A.2/5.B)"] != scores["Covid3Month", "Random forest (5.C)"]


@pytest.mark.parametrize(
    "problem, mean, median",
    [("Covid3Month", 0.0447, 0.0468), ("CardanoSentiment", 0.3003, 0.2959), ("Tecator", 12.89, 13.59)],
)
def test_the_trivial_predictors_are_the_issues(problem, mean, median):
    root = tser_table.problem_root(problem, TECATOR)
    if root is not None and not (root / problem).is_dir():
        pytest.skip(f"{problem} is not in {root}")
    refs = tser_table.references(*(tser_table.read_split(problem, root, s) for s in ("TRAIN", "TEST")))
    assert round(refs["mean predictor"], 4 if mean < 1 else 2) == mean
    assert round(refs["median predictor"], 4 if mean < 1 else 2) == median
    if problem == "Tecator":
        assert round(refs["RidgeCV"], 2) == 2.16  # ridge on the raw spectrum, measured for the issue


def test_the_table_lists_every_column_and_its_source():
    rows = [{"problem": "Covid3Month", "preset": "tser", "channels": 1, "steps": 84, "train": 140, "test": 61}]
    rows[0] |= {"rmse": [0.04, 0.05], "seconds": [1.0, 3.0]}
    refs = {"Covid3Month": {"mean predictor": 0.0447, "median predictor": 0.0468, "RidgeCV": 7.03}}
    published, sources = tser_table.read_published(tser_table.PUBLISHED)
    text = tser_table.table(rows, refs, published, sources, tser_table.METHODS)
    line = next(row for row in text.splitlines() if row.startswith("| Covid3Month"))
    assert line.split(" | ")[4:9] == ["0.045 ± 0.007071 (2 seeds)", "2.0", "0.0447 / 0.0468", "7.03", "0.03889"]
    assert "- FCN, published: Guijo-Rubio" in text and "- RidgeCV: scikit-learn RidgeCV, 30 alphas" in text


def test_quick_run_of_the_script(tmp_path):
    out = tmp_path / "t.md"
    args = ["--quick", "--problems", "CardanoSentiment", "--presets", "tser", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "device=cpu", "device.num_threads=1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(row for row in out.read_text().splitlines() if row.startswith("| CardanoSentiment"))
    cells = line.split(" | ")
    assert cells[1:4] == ["tser", "2 x 24", "74 / 33"] and cells[4].endswith("(1 seed)")
    assert float(cells[4].split()[0]) > 0 and cells[6] == "0.3003 / 0.2959" and cells[8] == "0.2984"


def test_select_reads_candidates_given_on_the_command_line():
    select_spec = importlib.util.spec_from_file_location("tser_select", SCRIPT.with_name("tser_select.py"))
    tser_select = importlib.util.module_from_spec(select_spec)
    select_spec.loader.exec_module(tser_select)
    argv = ["--candidates", "-", "task.loss=huber", "--seed", "1", "device=cpu", "device.num_threads=1"]
    assert tser_select.split_candidates(argv) == (
        ["-", "task.loss=huber"],
        ["--seed", "1", "device=cpu", "device.num_threads=1"],
    )
    assert tser_select.split_candidates(["device=cpu"]) == ([], ["device=cpu"])
