"""A run whose dir is moved aside (and taken by another run) writes nothing more at that path (issue #35, item 5):
no TensorBoard event, ``metrics.json``, ``status.json`` or checkpoint of it lands in the new run's dir."""

from __future__ import annotations

from conftest import FAST, run_cli

MOVER = '''import os
from pathlib import Path


class Mover:
    """At step 2, moves the run dir aside and makes a new one at its path, as a user starting another run does."""

    def __init__(self, run_dir, purge_step=None, config=None, images=True):
        self.run_dir = Path(run_dir)

    def scalars(self, step, values):
        if step == 2:
            os.rename(self.run_dir, self.run_dir.with_name("moved"))
            self.run_dir.mkdir()
            (self.run_dir / "new-run.txt").write_text("another run's dir")

    def evaluation(self, *args, **kwargs):
        pass

    def finish(self, config, metrics):
        pass

    def close(self):
        pass
'''


def test_a_run_moved_aside_writes_nothing_into_the_run_that_took_its_path(tmp_path):
    (tmp_path / "mover.py").write_text(MOVER)
    proc = run_cli(
        *FAST,
        "trainer.max_steps=8",
        "trainer.log_every_n_steps=1",
        "+tracker.mover._target_=mover.Mover",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1 and "was deleted or replaced" in errors[0], proc.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["new-run.txt"]
    moved = {p.name for p in (tmp_path / "moved").iterdir()}
    assert "train.log" in moved and any(n.startswith("events.out.tfevents") for n in moved), moved
