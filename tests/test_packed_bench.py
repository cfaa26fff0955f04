"""``scripts/packed_bench.py`` (issue #27's measurements) at a tiny size: the larger-than-memory part trains,
is killed with -9, resumes to its last step and prints its table; a pack that would not fit is refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "packed_bench.py"


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_large_part_kills_resumes_to_the_last_step_and_prints_its_table(tmp_path):
    big = tmp_path / "big"
    proc = bench(
        "--large", "--gb", "0.02", "--steps", "12", "--dir", str(big), "--no-drop-cache",
        "device.num_threads=1", "trainer.log_images=false", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "| phase | wall s | peak RSS GiB | <= 2 GiB | notes |" in out
    killed = re.search(r"\| train, kill -9 \|.*\| killed at logged step (\d+) \|", out)
    resumed = re.search(r"\| resume to the end \|.*\| resumed from step (\d+); 12 steps,", out)
    assert killed and resumed, out
    assert 0 < int(resumed.group(1)) <= int(killed.group(1)) < 12
    assert re.search(r"\| birnn-evaluate \|.*\| whole test split: accuracy 0\.\d{4} \|", out), out
    assert "Page cache: not dropped (--no-drop-cache)" in out
    assert not (big / "pack").exists()  # removed without --keep


def test_a_pack_that_would_not_fit_on_the_disk_is_refused_with_one_line(tmp_path):
    proc = bench("--large", "--gb", "1e9", "--dir", str(tmp_path / "big"), cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: a 1e+09 GB pack needs") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "big").exists()
