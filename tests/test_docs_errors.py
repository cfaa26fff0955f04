"""Every ``error:`` example in README.md and docs/ is what birnn prints: each documented command is run here.

An example is a line of a code block starting with ``error: `` (run with the block's last ``$ command``
before it, whose ``exit N`` line, if the block shows one, is checked too), or an inline ``error: ...`` code
span (run with the command in ``COMMANDS``). ``...`` in a documented message stands for any text. The
commands run in a folder holding the files the pages name: tiny checkpoints trained on digits and on
arrays, images, samples, and checkpoints naming code outside birnn.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from birnn.engine import checkpoint
from birnn.train import train
from conftest import FAST, ROOT, make_cfg, write_checkpoint

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Inline examples name no command: the one that prints each.
COMMANDS = {
    "error: model.hiden_size is not a config key. Did you mean model.hidden_size?": (
        "python -m birnn.train model.hiden_size=128"
    ),
    "error: The checkpoint's model._target_ names mymodels.ConvBiGRU, which is not part of birnn: nothing a "
    "checkpoint names is imported unless you allow it. If you trust that code, add --allow mymodels.": (
        "python -m birnn.evaluate myproject/outputs/run/checkpoints/last.pt"
    ),
    "error: data.patch=100 is longer than the longest training series (8 steps): ...": (
        "python -m birnn.train data=digits data.patch=100"
    ),
    "error: search.storage=postgresql+psycopg2://... needs a database driver that is not installed (No module "
    "named 'psycopg2'); pip install 'psycopg2-binary'": (
        "python -m birnn.search hparams_search=optuna data=digits search.dir=study "
        "search.storage=postgresql+psycopg2://birnn@127.0.0.1:5/birnn"
    ),
}


@dataclass
class Example:
    line: str  # the documented error line
    page: str
    command: str | None = None  # the ``$`` command before it in its code block
    exit: int | None = None  # the ``exit N`` the block shows for that command


def documented_errors() -> list[Example]:
    """Every ``error:`` example of README.md and docs/, in page order."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            command, examples = None, []
            for line in (line.strip() for line in block.splitlines()):
                if line.startswith("$ "):
                    command, examples = line[2:], []
                elif line.startswith("error: "):
                    examples.append(Example(line, page.name, command))
                    found.append(examples[-1])
                elif re.fullmatch(r"exit \d+", line):
                    for example in examples:
                        example.exit = int(line.split()[1])
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        found += [Example(span, page.name) for span in re.findall(r"`(error: [^`]+)`", prose) if span != "error: ..."]
    return found


def argv(command: str) -> list[str]:
    """A documented command line as this interpreter runs it (``birnn-evaluate`` = ``python -m birnn.evaluate``)."""
    words = shlex.split(command.split(" #")[0])
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    return [sys.executable, "-m", words[0].replace("-", "."), *words[1:]]


def crafted(source: Path, target: Path, key: str, name: str) -> None:
    """A copy of checkpoint ``source`` whose config names ``name`` as ``key._target_`` (with a valid checksum:
    anyone can write one)."""
    state = checkpoint.load(source)
    state["config"][key] = {**state["config"][key], "_target_": name}
    target.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(state, target)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the documented commands name."""
    cwd = tmp_path_factory.mktemp("docs")
    train(make_cfg(*FAST, "trainer.max_steps=2"), cwd / "fashion")
    digits = cwd / "fashion" / "checkpoints" / "last.pt"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 10, 2)).astype(np.float32)
    np.savez(cwd / "mydata.npz", x_train=x[:40], y_train=np.arange(40) % 2, x_test=x[40:], y_test=np.arange(20) % 2)
    arrays = [o for o in FAST if not o.startswith("data=")]
    train(make_cfg(*arrays, "data=arrays", f"data.path={cwd / 'mydata.npz'}", "trainer.max_steps=2"), cwd / "run")
    np.save(cwd / "sample.npy", x[0])
    np.save(cwd / "wide.npy", np.zeros((10, 3), np.float32))
    (cwd / "photos").mkdir()
    (cwd / "photos" / "notes.png").write_text("not an image")
    Image.new("L", (8, 8)).save(cwd / "photos" / "test0.png")
    crafted(digits, cwd / "received.pt", "data", "hydra.utils.instantiate")
    crafted(digits, cwd / "myproject" / "outputs" / "run" / "checkpoints" / "last.pt", "model", "mymodels.ConvBiGRU")
    return cwd


def test_every_documented_error_has_a_command():
    examples = documented_errors()
    assert all(e.command or e.line in COMMANDS for e in examples)
    assert set(COMMANDS) <= {e.line for e in examples}  # no command for an example the docs dropped


@pytest.mark.parametrize("example", [pytest.param(e, id=f"{e.page}-{i}") for i, e in enumerate(documented_errors())])
def test_documented_error_is_printed(folder, example):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = example.command or COMMANDS[example.line]
    proc = subprocess.run(argv(command), cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    pattern = ".*".join(re.escape(part) for part in example.line.split("..."))
    printed = proc.stderr.splitlines()
    assert any(re.fullmatch(pattern, p) for p in printed), f"documented: {example.line}\nprinted: {proc.stderr}"
    assert example.exit in (None, proc.returncode)
