"""Restoring commands import nothing from the working directory unless the user allows a module found there (issue 35).

A received checkpoint often sits in a folder that holds other received files: a ``tabulate.py``, ``gmpy2.py`` or
``z3.py`` (modules torch imports optionally at export time) or a ``tokenizers.py`` (what predict imports for a BPE
checkpoint) must not run, whether the command is a console script or ``python -m birnn.X``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from birnn.data import load_digits
from birnn.train import train
from conftest import FAST, make_cfg

PLANTED = ("tabulate", "gmpy2", "z3", "tokenizers")
BIN = Path(sys.executable).parent


def plant(folder: Path) -> Path:
    """Modules that, if imported from ``folder``, write their name into MARKER and then fail as if absent."""
    marker = folder / "MARKER"
    for name in PLANTED:
        (folder / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\nraise ImportError('planted {name}')\n"
        )
    return marker


def command(name: str, *args: str, cwd: Path, console_script: bool) -> subprocess.CompletedProcess:
    """``birnn-NAME ARGS`` (the console script) or ``python -m birnn.NAME ARGS``, run in ``cwd``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # birnn is installed (editable); nothing else is put on the path
    argv = [str(BIN / f"birnn-{name}")] if console_script else [sys.executable, "-m", f"birnn.{name}"]
    return subprocess.run([*argv, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("digits")
    train(make_cfg(*FAST, "trainer.max_steps=3"), run_dir)
    return run_dir / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def bpe_ckpt(tmp_path_factory) -> Path:
    pytest.importorskip("tokenizers")
    folder = tmp_path_factory.mktemp("bpe")
    rows = ["label,text"] + [
        f"{'pos' if i % 2 else 'neg'},{'great fine' if i % 2 else 'awful sad'} movie {i}" for i in range(40)
    ]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = make_cfg(
        "data=text",
        f"data.path={folder / 'train.csv'}",
        "data.tokenizer=bpe",
        "data.vocab_size=60",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=8",
        "model.embedding_dim=8",
        "trainer.max_steps=2",
    )
    train(cfg, folder / "run")
    return folder / "run" / "checkpoints" / "last.pt"


@pytest.mark.parametrize("console_script", [True, False], ids=["console-script", "python-m"])
def test_export_imports_no_module_beside_the_checkpoint(digits_ckpt, tmp_path, console_script):
    ckpt = tmp_path / "received.pt"
    ckpt.write_bytes(digits_ckpt.read_bytes())
    marker = plant(tmp_path)
    proc = command("export", "received.pt", "--format", "pt2", cwd=tmp_path, console_script=console_script)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model.pt2").is_file()
    assert not marker.exists(), marker.read_text()


def test_predict_and_evaluate_under_python_m_import_no_module_from_the_working_directory(bpe_ckpt, tmp_path):
    """Python puts the working directory first on sys.path under ``python -m``: an installed ``tokenizers`` is
    shadowed by the planted one unless the command takes it off."""
    marker = plant(tmp_path)
    proc = command("predict", str(bpe_ckpt), "--text", "great movie", "--json", cwd=tmp_path, console_script=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["label"] in ("pos", "neg")
    out = tmp_path / "e.json"
    proc = command("evaluate", str(bpe_ckpt), "--out", str(out), cwd=tmp_path, console_script=False)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), marker.read_text()


SIBLING = """
from torch import nn


def head(width, num_classes):
    return nn.Linear(width, num_classes)
"""
MODEL = """
import torch
from torch import nn

from mylayers import head  # a sibling module in the same folder


class TinyGRU(nn.Module):
    def __init__(self, input_size, num_classes, hidden_size=8):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.fc = head(hidden_size, num_classes)

    def forward(self, x, lengths=None):
        out, _ = self.gru(x)
        return self.fc(out[:, -1])
"""


@pytest.fixture(scope="module")
def own_project(tmp_path_factory) -> Path:
    """A user's project folder: their model (importing a sibling), trained there with ``birnn-train``."""
    project = tmp_path_factory.mktemp("own")
    (project / "mymodel.py").write_text(MODEL)
    (project / "mylayers.py").write_text(SIBLING)
    (project / "conf" / "model").mkdir(parents=True)
    (project / "conf" / "model" / "tiny.yaml").write_text(
        "defaults:\n  - /schema/model/model@_here_\n  - _self_\n\n_target_: mymodel.TinyGRU\nhidden_size: 8\n"
    )
    proc = command(
        "train",
        "--config-dir",
        "conf",
        *FAST,
        "model=tiny",
        "trainer.max_steps=3",
        f"hydra.run.dir={project / 'run'}",
        cwd=project,
        console_script=True,
    )
    assert proc.returncode == 0, proc.stderr
    return project


def test_an_allowed_module_in_the_working_directory_evaluates_predicts_and_exports(own_project):
    ckpt = "run/checkpoints/last.pt"
    marker = plant(own_project)
    run = {"cwd": own_project, "console_script": True}
    refused = command("evaluate", ckpt, **run)
    assert refused.returncode == 2 and "--allow mymodel" in refused.stderr, refused.stderr
    evaluated = command("evaluate", ckpt, "--allow", "mymodel", "--out", "e.json", **run)
    assert evaluated.returncode == 0, evaluated.stderr
    assert 0 <= json.loads((own_project / "e.json").read_text())["test_accuracy"] <= 1
    np.save(own_project / "x.npy", load_digits().test_x[0].numpy())
    predicted = command("predict", ckpt, "x.npy", "--json", "--allow", "mymodel", **run)
    assert predicted.returncode == 0, predicted.stderr
    exported = command("export", ckpt, "--format", "pt2", "--out", "m.pt2", "--allow", "mymodel", **run)
    assert exported.returncode == 0, exported.stderr
    assert (own_project / "m.pt2").is_file()
    under_m = command("evaluate", ckpt, "--allow", "mymodel", "--out", "m.json", cwd=own_project, console_script=False)
    assert under_m.returncode == 0, under_m.stderr  # python -m: the working directory is off the path, then allowed
    assert not marker.exists(), marker.read_text()
    for name in PLANTED:
        (own_project / f"{name}.py").unlink()


def test_an_allowed_module_and_its_siblings_are_found_in_the_working_directory_only_while_used(tmp_path, monkeypatch):
    """The working directory is on the path while the allowed name is imported or called, and off it otherwise."""
    from birnn.schema import trust

    (tmp_path / "lazy.py").write_text("def make(**kw):\n    import mylazy\n\n    return mylazy.VALUE\n")
    (tmp_path / "mylazy.py").write_text("VALUE = 7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    before = list(sys.path)
    make = trust.resolve("lazy.make", "data._target_", ["lazy"])
    assert sys.path == before and importlib.util.find_spec("mylazy") is None
    assert make() == 7  # its sibling, imported while it runs
    assert sys.path == before
    for name in ("lazy", "mylazy"):
        monkeypatch.delitem(sys.modules, name)


def test_report_under_python_m_imports_no_module_from_the_working_directory(tmp_path):
    """A received sweep folder may hold a ``packaging.py``: matplotlib imports ``packaging``, and under ``python -m``
    Python puts the working directory first on sys.path."""
    marker = tmp_path / "MARKER"
    (tmp_path / "packaging.py").write_text(f"open({str(marker)!r}, 'a').write('packaging')\n")
    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (job / "metrics.json").write_text('{"test_accuracy": 0.5}')
    proc = command("report", "sweep", cwd=tmp_path, console_script=False)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
