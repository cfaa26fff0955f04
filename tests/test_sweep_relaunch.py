"""A sweep relaunched onto its sweep dir keeps the sweep's ``multirun.yaml`` (issue 35): Hydra's sweeper rewrites
it before any job runs, so a relaunch whose jobs are all refused changed the record of the sweep it was refused on."""

from __future__ import annotations

import pytest

from conftest import FAST, run_cli

SWEEP = [*FAST, "trainer.max_steps=3", "seed=0"]


@pytest.mark.parametrize("key", ["hydra.sweep.dir", "++hydra.sweep.dir"])  # ++: Hydra's force-add form, same dir
def test_a_refused_sweep_relaunch_leaves_multirun_yaml_as_it_was(tmp_path, key):
    sweep = tmp_path / "sweep"
    first = run_cli("-m", *SWEEP, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (sweep / "multirun.yaml").read_bytes()
    refused = run_cli("-m", *SWEEP, "model.hidden_size=8", f"{key}={sweep}", cwd=tmp_path)
    assert refused.returncode != 0 and "Cannot resume" in refused.stderr + refused.stdout
    assert (sweep / "multirun.yaml").read_bytes() == before
    assert "hidden_size: 16" in before.decode()
