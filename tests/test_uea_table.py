"""``scripts/uea_table.py``: the published accuracies it ships, the 1-NN DTW and ROCKET it reruns with aeon, and
the Markdown table. The reruns must reproduce the published default-split figures on bundled problems."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("aeon", reason="the archive table needs the timeseries extra")

from birnn.data import Splits
from birnn.data.uea import load_uea

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "uea_table.py"
spec = importlib.util.spec_from_file_location("uea_table", SCRIPT)
uea_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(uea_table)
# aeon's numba DTW kernel warns about a cast inside its own code, once per process.
pytestmark = pytest.mark.filterwarnings("ignore:unsafe cast from uint64 to int64")


@pytest.fixture(scope="module")
def published():
    return uea_table.read_published(uea_table.PUBLISHED)


# Unequal lengths (in neither bake off: the redux has only an equalized PickupGestureWiimoteZ_eq, other series)
# and a discretized regression problem (only among the redux's 30 new problems, which only its "best" files hold).
UNPUBLISHED = {"JapaneseVowels", "PickupGestureWiimoteZ", "Covid3Month_disc"}
UNIVARIATE = {"ACSF1", "ArrowHead", "GunPoint", "ItalyPowerDemand", "OSULeaf"}  # in the univariate bake off redux
HC2 = "HIVE-COTE 2, published"


def test_published_figures_cover_the_equal_length_default_problems_with_a_source_each(published):
    scores, sources = published
    assert {"ACSF1", "OSULeaf", "PickupGestureWiimoteZ"} <= set(uea_table.DEFAULT_PROBLEMS)
    assert "UnitTest" not in uea_table.DEFAULT_PROBLEMS
    for problem in set(uea_table.DEFAULT_PROBLEMS) - UNPUBLISHED:
        for method in ("1-NN DTW, published", "ROCKET, published"):
            assert 0.0 < scores[problem, method] <= 1.0
    for problem in UNIVARIATE:
        for method in ("InceptionTime, published", "ResNet, published"):
            assert 0.0 < scores[problem, method] <= 1.0
    for problem in {*UNIVARIATE, "Covid3Month_disc"}:
        assert 0.0 < scores[problem, HC2] <= 1.0
    assert not any(problem in UNPUBLISHED for problem, method in scores if method != HC2)
    assert {p for p, m in scores if m == HC2} == {*UNIVARIATE, "Covid3Month_disc"}  # no multivariate HC2 in the wheel
    methods = list(dict.fromkeys(m for m, _ in sources))  # the table's column order
    assert methods == [
        "1-NN DTW, published",
        "ROCKET, published",
        "InceptionTime, published",
        "ResNet, published",
        HC2,
        "LSTM-FCN, published (selected on test)",
    ]
    selected_on_test = {m for m, _ in sources if "selected on test" in m}
    assert selected_on_test == {"LSTM-FCN, published (selected on test)"}  # the authors' released figures
    for problem, accuracy in {"ArrowHead": 0.897, "OSULeaf": 0.983, "GunPoint": 1.0}.items():
        assert scores[problem, "LSTM-FCN, published (selected on test)"] == accuracy
    for (method, source), problems in sources.items():
        assert all((p, method) in scores for p in problems)
        if method in selected_on_test:
            continue
        assert "bake off" in source.lower() and "tsml-eval" in source and "results/" in source, (method, source)


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["BasicMotions", "ItalyPowerDemand"])  # multivariate (DTW_D), univariate
def test_rerun_reproduces_the_published_default_split_figures(published, problem):
    scores, _ = published
    here = uea_table.baselines(load_uea(name=problem))
    # 1-NN DTW is deterministic: the same accuracy as the paper's run on the same split.
    assert here["1-NN DTW, here"] == pytest.approx(scores[problem, "1-NN DTW, published"], abs=1e-9)
    # ROCKET draws its own random kernels: close to the paper's run, not equal by construction.
    assert here["ROCKET, here"] == pytest.approx(scores[problem, "ROCKET, published"], abs=0.03)


def ramps(lengths: list[int], rising: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ramps between 2 and 3 (up or down) of the given lengths, zero-padded at the end: ``(N, steps, 1)``."""
    steps = max(lengths)
    x = torch.zeros(len(lengths), steps, 1)
    for i, (n, up) in enumerate(zip(lengths, rising)):
        ramp = torch.linspace(2, 3, n)
        x[i, :n, 0] = ramp if up else ramp.flip(0)
    return x, torch.tensor(lengths)


def test_rerun_compares_variable_length_series_at_their_own_lengths():
    # Lengths are confounded with the class: short rising and long falling ramps to train on, long rising and
    # short falling ones to test. Compared at their own lengths (DTW warps) every test series finds its
    # class; compared with the zero padding, some find the training series of their own length instead.
    train_x, train_lengths = ramps([5, 6, 30, 31], [True, True, False, False])
    test_x, test_lengths = ramps([30, 31, 5, 6], [True, True, False, False])
    labels = torch.tensor([0, 0, 1, 1])
    splits = Splits(
        train_x=train_x,
        train_y=labels,
        test_x=test_x,
        test_y=labels,
        classes=["up", "down"],
        train_lengths=train_lengths,
        test_lengths=test_lengths,
        kind="series",
    )
    here = uea_table.baselines(splits, kernels=100)
    assert here["1-NN DTW, here"] == 1.0  # 0.75 when the padded series are compared
    assert set(here) == {"1-NN DTW, here", "ROCKET, here"}  # ROCKET, which refuses unequal lengths, got padded ones


def test_table_puts_published_and_rerun_columns_beside_birnn_and_lists_sources():
    rows = [
        {
            "problem": "A",
            "channels": 2,
            "lengths": "3-9",
            "train": 4,
            "test": 5,
            "classes": 2,
            "accuracies": [0.5, 0.7],
            "seconds": [1.0, 3.0],
            "epochs": 7,
            "wall": 12.4,
            "baselines": {"1-NN DTW, here": 0.25, "ROCKET, here": 1.0},
        },
        {
            "problem": "B",
            "channels": 1,
            "lengths": "9",
            "train": 4,
            "test": 5,
            "classes": 3,
            "accuracies": [0.9],
            "seconds": [2.0],
            "epochs": 7,
            "wall": 3.0,
        },
    ]
    published = {("B", "ROCKET, published"): 0.875}
    sources = {("ROCKET, published", "Paper X"): ["B"]}
    lines = uea_table.table(rows, published, sources).splitlines()
    assert lines[0].endswith("| seconds | problem wall s | ROCKET, published | 1-NN DTW, here | ROCKET, here |")
    assert lines[2] == "| A | 2 | 3-9 | 4 / 5 | 2 | 0.600 ± 0.141 (2 seeds) | 7 | 2.0 | 12 |  | 0.250 | 1.000 |"
    assert lines[3] == "| B | 1 | 9 | 4 / 5 | 3 | 0.900 | 7 | 2.0 | 3 | 0.875 |  |  |"
    assert lines[-1] == "- ROCKET, published (B): Paper X"


def test_table_has_a_preset_column_when_rows_name_their_preset():
    row = {"channels": 1, "lengths": "9", "train": 4, "test": 5, "classes": 3, "seconds": [2.0], "epochs": 7}
    rows = [
        {**row, "problem": "B", "preset": "uea", "accuracies": [0.9], "wall": 3.0},
        {**row, "problem": "B", "preset": "uea_lstm_fcn", "accuracies": [1.0], "wall": 9.0},
    ]
    lines = uea_table.table(rows, {}, {}).splitlines()
    assert lines[0].startswith("| problem | preset | channels |")
    assert lines[2] == "| B | uea | 1 | 9 | 4 / 5 | 3 | 0.900 | 7 | 2.0 | 3 |"
    assert lines[3] == "| B | uea_lstm_fcn | 1 | 9 | 4 / 5 | 3 | 1.000 | 7 | 2.0 | 9 |"


def test_gap_columns_are_birnn_minus_the_method_in_points():
    rows = [
        {
            "problem": "B",
            "channels": 1,
            "lengths": "9",
            "train": 4,
            "test": 5,
            "classes": 3,
            "accuracies": [0.9, 0.8],
            "seconds": [2.0, 2.0],
            "epochs": 7,
            "wall": 5.0,
        }
    ]
    published = {("B", "ROCKET, published"): 0.875}
    lines = uea_table.table(
        rows,
        published,
        {("ROCKET, published", "Paper X"): ["B"]},
        versus=("ROCKET, published", "InceptionTime, published"),
    ).splitlines()
    assert lines[0].endswith("| ROCKET, published | birnn - ROCKET | birnn - InceptionTime |")
    assert lines[2].endswith("| 0.875 | -2.5 |  |")


def test_overrides_reach_every_run_wherever_they_stand(monkeypatch, tmp_path):
    """``--seeds 0 model.stem=conv``: the override is not read as a seed (nor, after --problems, as a problem)."""
    configs = []
    metrics = {"test_accuracy": 0.5, "train_seconds": 0.1, "epochs": 1}
    monkeypatch.setattr(uea_table, "train", lambda cfg, run_dir: configs.append(cfg) or metrics)
    out = tmp_path / "t.md"
    argv = ["--presets", "uea", "--problems", "ArrowHead", "model.stem=conv", "--seeds", "0", "data.patch=1"]
    uea_table.main([*argv, "device=cpu", "--out", str(out)])
    (cfg,) = configs
    assert (cfg.model.stem, cfg.data.patch, cfg.device.type, cfg.data.name) == ("conv", 1, "cpu", "ArrowHead")
    assert out.read_text().splitlines()[2].startswith("| ArrowHead | uea |")
