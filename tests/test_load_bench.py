"""scripts/load_bench.py (issue #38): default threads against one thread and the old count, quiet and busy.
No timed assert: the script's own figures are for docs/speed.md, measured on a quiet machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "load_bench.py"


def bench(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the script removes it from its children: they show the defaults
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_an_unknown_variant_is_one_error_line(tmp_path):
    proc = bench("--variants", "default,fast", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: --variants: unknown fast (choose from default, threads=1, old)"


@pytest.mark.slow
def test_bench_times_each_variant_quiet_and_busy_and_stops_its_load(tmp_path):
    tiny = ["data=digits", "trainer.max_steps=2", "model.hidden_size=8", "trainer.log_images=false"]
    proc = bench("--background", "0,1", "--rounds", "1", "--variants", "default,threads=1", *tiny, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "load_bench.json").read_text())
    assert set(result["levels"]) == {"0", "1"} and "load average" in result["uptime_before"]
    for level in result["levels"].values():
        assert set(level["median_wall_seconds"]) == {"default", "threads=1"}
        assert level["runs"]["threads=1"][0]["threads"] == [1]
        assert len(level["runs"]["default"][0]["threads"]) >= 1  # what the rule chose, from train.log
    for pid in result["levels"]["1"]["background_pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped
    table = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["1", "default"] and line.split()[3].endswith("x") for line in table), proc.stdout
