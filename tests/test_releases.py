"""Checkpoints written by earlier releases (tests/fixtures/README.md) evaluate, predict, export and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from birnn.engine import checkpoint
from conftest import FAST, WALL_CLOCK, run_cli

FIXTURES = Path(__file__).parent / "fixtures"
RELEASES = {"digits-252ba19.pt": ["--allow-unverified"], "digits-17dab9d.pt": []}  # the older one has no checksum
RUN = [*FAST, "trainer.epochs=4"]  # the fixtures' run, less trainer.max_steps


@pytest.mark.parametrize("name", RELEASES)
def test_an_earlier_release_checkpoint_evaluates_predicts_and_exports(name, tmp_path):
    ckpt, flags = FIXTURES / name, RELEASES[name]
    out = tmp_path / "evaluation.json"
    proc = run_cli(str(ckpt), *flags, "--out", str(out), cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["test_accuracy"] == pytest.approx(0.3510, abs=1e-4)
    sample = tmp_path / "x.npy"
    np.save(sample, np.zeros((8, 8), dtype="float32"))
    proc = run_cli(str(ckpt), str(sample), *flags, "--json", cwd=tmp_path, module="birnn.predict")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["prediction"] in range(10)
    onnx = tmp_path / "model.onnx"
    proc = run_cli(str(ckpt), *flags, "--out", str(onnx), cwd=tmp_path, module="birnn.export")
    assert proc.returncode == 0 and onnx.stat().st_size > 0, proc.stderr


def test_the_release_before_checksums_needs_the_users_word(tmp_path):
    proc = run_cli(str(FIXTURES / "digits-252ba19.pt"), cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode == 2 and "has no checksum" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("name", RELEASES)
def test_a_run_of_an_earlier_release_resumes_exactly(name, tmp_path):
    """Keys added since (data.val_fraction, data.patch, ...) take their defaults, which were the behaviour then.

    The reference is the same state (weights, optimizer, random state, progress) in this release's checkpoint
    format, resumed alike: only the format differs. (A fresh run to the same step is no reference: its float
    rounding follows this CPU's kernels, the fixture's followed the machine that wrote it.)"""
    old = torch.load(FIXTURES / name, weights_only=True)
    ref_dir = tmp_path / "reference"
    steps = old["progress"]["global_step"]
    proc = run_cli(*RUN, f"trainer.max_steps={steps}", f"hydra.run.dir={ref_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = {k: v for k, v in checkpoint.load(ref_dir / "checkpoints" / "last.pt").items() if k != "checksum"}
    state |= {k: old[k] for k in ("model", "optimizer", "rng")}
    state["progress"] |= old["progress"]
    checkpoint.save(state, ref_dir / "checkpoints")

    run_dir = tmp_path / "old"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / name, run_dir / "checkpoints" / "last.pt")
    trust = ["trainer.allow_unverified=true"] if RELEASES[name] else []
    for folder, extra in ((run_dir, trust), (ref_dir, [])):
        proc = run_cli(*RUN, "trainer.max_steps=50", *extra, f"hydra.run.dir={folder}", cwd=tmp_path)
        assert proc.returncode == 0 and "Resuming from" in proc.stdout + proc.stderr, proc.stderr
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, ref_dir))
    assert {k: v for k, v in a.items() if k not in WALL_CLOCK} == {k: v for k, v in b.items() if k not in WALL_CLOCK}
    assert a["steps"] == 50 and a["history"][:3] == old["progress"]["history"]
    ours, theirs = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)["model"] for d in (run_dir, ref_dir))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_users_config_naming_old_homes_trains_with_one_warning_each(tmp_path):
    proc = run_cli(
        *FAST,
        "trainer.max_steps=2",
        "model._target_=birnn.model.RNNClassifier",
        "scheduler=cosine",
        "scheduler._target_=birnn.schedule.warmup_cosine",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert out.count("model._target_=birnn.model.RNNClassifier has moved to birnn.models.RNNClassifier") == 1
    assert out.count("has moved to birnn.engine.schedule.warmup_cosine") == 1
    stored = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["config"]
    assert stored["model"]["_target_"] == "birnn.models.RNNClassifier"


def test_old_homes_resolve_under_the_trust_rule_to_the_new_ones():
    from birnn.data import load_arrays, load_uea
    from birnn.models import RNNClassifier
    from birnn.schema import trust

    assert trust.resolve("birnn.arrays.load_arrays", "data._target_") is load_arrays
    assert trust.resolve("birnn.sequences.load_uea", "data._target_") is load_uea
    assert trust.resolve("birnn.model.RNNClassifier", "model._target_") is RNNClassifier
