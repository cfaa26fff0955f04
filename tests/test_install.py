"""birnn installed from its wheel, run from another directory; user config dirs beside birnn's.

The wheel is built once from a copy of the sources and installed with ``pip install --target`` into a bare
folder; its console scripts run with that folder as the only ``PYTHONPATH`` entry, from a temporary
working directory, so neither the checkout nor an editable install can supply ``birnn`` or its configs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import CONF, ROOT

FAST = ["device=cpu", "device.num_threads=1", "model.hidden_size=16", "trainer.log_images=false"]


def doc_block(first_line: str) -> str:
    """The code block of README or a docs page that starts with ``first_line``: the tests run the docs' own text."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [b for page in pages for b in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), re.S)]
    matches = [b for b in blocks if b.startswith(first_line)]
    assert len(matches) == 1, f"README and docs/ have {len(matches)} code blocks starting with {first_line!r}"
    return matches[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only the installed wheel (package, configs, console scripts in bin/)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy: no build/ leftovers or egg-info of the checkout get into the wheel
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("birnn", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = (tmp / "dist").glob("birnn-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert not (tmp / "site" / "conf").exists()  # configs ship inside the package, no top-level `conf`
    return tmp / "site"


def run_installed(site: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess:
    """A console script of ``site`` (or ``python ...`` with the venv's interpreter), started from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, *command[1:]] if command[0] == "python" else [str(site / "bin" / command[0]), *command[1:]]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_wheel_trains_evaluates_and_reports_from_any_directory(site, tmp_path):
    where = run_installed(
        site,
        tmp_path,
        "python",
        "-c",
        "import birnn, birnn.schema.config; print(birnn.__file__); print(birnn.schema.config.CONFIG_DIR)",
    )
    assert where.stdout.split() == [str(site / "birnn" / "__init__.py"), str(site / "birnn" / "conf")]

    done = run_installed(site, tmp_path, "birnn-train", "data=digits", "trainer.epochs=1", *FAST)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")  # under the working directory's outputs/
    hydra = (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert f"path: {site / 'birnn' / 'conf'}\n      schema: file\n      provider: main" in hydra
    metrics = json.loads((run_dir / "metrics.json").read_text())

    scored = run_installed(site, tmp_path, "birnn-evaluate", str(run_dir / "checkpoints" / "last.pt"), "device=cpu")
    assert scored.returncode == 0, scored.stderr
    evaluation = json.loads((run_dir / "checkpoints" / "evaluation.json").read_text())
    assert evaluation["test_accuracy"] == metrics["test_accuracy"]

    for command in ("birnn-predict", "birnn-evaluate", "birnn-export"):  # help names the console script
        assert run_installed(site, tmp_path, command, "--help").stdout.startswith(f"usage: {command} ")

    report = run_installed(site, tmp_path, "python", "-m", "birnn.report", str(run_dir))
    assert report.returncode == 0 and "completed" in report.stdout, report.stderr


def test_docs_own_dataset_runs_through_config_dir(site, tmp_path):
    for block in ("# mypkg/data.py", "# myconf/data/waves.yaml"):
        path = tmp_path / block.removeprefix("# ")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc_block(block))
    command = shlex.split(doc_block("birnn-train --config-dir myconf data=waves").splitlines()[0])
    done = run_installed(site, tmp_path, *command, "trainer.epochs=1", *FAST)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "_target_: mypkg.data.load_waves" in config and "length: 50" in config and "batch_size: 50" in config
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 800 // 50  # the loader's 800 training samples in the YAML's batches of 50
    spec = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["data"]
    assert spec["classes"] == ["low", "high"] and spec["input_shape"] == [50, 3]

    typo = run_installed(site, tmp_path, *command, "data.lenght=20", *FAST)
    assert typo.returncode != 0 and "Traceback" not in typo.stderr
    assert "data.lenght is not a key of mypkg.data.load_waves (it takes root, download, length;" in typo.stderr


@pytest.fixture
def myconf(tmp_path: Path) -> Path:
    """A user config dir: a data option with a loader key of its own, and one named like birnn's digits."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "waves.yaml").write_text(doc_block("# myconf/data/waves.yaml"))
    (tmp_path / "data" / "digits.yaml").write_text("_target_: mypkg.data.shadowed\n")
    return tmp_path


def user_cfg(myconf: Path, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=[f"hydra.searchpath=[file://{myconf}]", *overrides])


def test_user_data_file_keeps_the_common_keys_typed(myconf):
    cfg = user_cfg(myconf, "data=waves", "data.length=20", "data.val_size=100")
    assert cfg.data.length == 20 and cfg.data.val_size == 100 and cfg.data.batch_size == 50
    assert cfg.data.normalize is False and cfg.data.root == "data"  # the schema's defaults fill the rest
    with pytest.raises(ConfigCompositionException) as info:
        user_cfg(myconf, "data=waves", "data.batch_size=abc")
    cause = info.value.__cause__
    assert isinstance(cause, ValidationError) and "full_key: data.batch_size" in str(cause)


def test_user_file_named_like_a_birnn_option_is_shadowed(myconf):
    assert user_cfg(myconf, "data=digits").data._target_ == "birnn.data.load_digits"


def make_installs(target: str, venv: Path) -> list[str]:
    """The extras ``make TARGET`` installs into a fresh ``venv`` (its dry run): "" for birnn without extras."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, check=True)
    return re.findall(r'pip install -e "\.\[?([^]"]*)\]?"', dry.stdout)


def test_make_train_and_bench_install_birnn_without_extras(tmp_path):
    assert make_installs("train", tmp_path / "venv") == [""]
    assert make_installs("bench", tmp_path / "venv") == [""]


def test_make_test_lint_docs_install_their_extras_and_make_venv_all_of_them(tmp_path):
    tomllib = pytest.importorskip("tomllib")
    assert make_installs("test", tmp_path / "venv") == ["test,optuna,export,timeseries,mlflow,tables,text"]
    assert make_installs("lint", tmp_path / "venv") == ["lint"]
    assert make_installs("docs", tmp_path / "venv") == ["docs"]
    installed = {extra for extras in make_installs("venv", tmp_path / "venv") for extra in extras.split(",") if extra}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert installed == set(declared)
    assert "make venv" in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_says_what_each_make_target_installs():
    """README's table of make targets names the extras the Makefile installs for them (issue #38: it lacked two)."""
    makefile = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    for target in ("test", "lint", "docs"):
        (extras,) = re.findall(rf"^EXTRAS_{target} := (\S+)$", makefile, re.M)
        assert f"`.{extras}`" in readme, f"README does not say make {target} installs .{extras}"
