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


def test_a_sweep_dir_set_in_a_config_file_is_kept_like_one_on_the_command_line(tmp_path):
    """hydra.sweep.dir in the user's own experiment (``--config-dir``), not on the command line: the relaunch
    refused there rewrote ``multirun.yaml`` (the guards read only the command line)."""
    experiment = tmp_path / "myconf" / "experiment" / "mine.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text("# @package _global_\nhydra:\n  sweep:\n    dir: sweeps/mine\n")
    mine = ["--config-dir", "myconf", "experiment=mine"]
    first = run_cli("-m", *mine, *SWEEP, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    record = tmp_path / "sweeps" / "mine" / "multirun.yaml"
    before = record.read_bytes()
    refused = run_cli("-m", *mine, *SWEEP, "model.hidden_size=8", cwd=tmp_path)
    assert refused.returncode != 0 and "Cannot resume" in refused.stderr + refused.stdout
    assert record.read_bytes() == before
    assert "hidden_size: 16" in before.decode()
