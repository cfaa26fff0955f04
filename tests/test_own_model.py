"""A user's own model (``model._target_``): a 1-D conv front-end + BiGRU written into a project folder with its
YAML under ``--config-dir``; it trains, resumes bit-exactly after kill -9, runs under torchrun and is restored
(evaluate, predict, export) only with ``--allow``. And birnn's own old checkpoints (no model._target_) still load.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from birnn import export
from birnn.data import load_digits
from birnn.engine.restore import Restored, restore
from birnn.evaluate import evaluate_checkpoint
from birnn.models.rnn import build_model
from birnn.schema.config import RNN_CLASSIFIER
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import FAST, ROOT, VALUES, WALL_CLOCK, make_cfg, wait_for

MODULE = '''
import torch
from torch import nn


class ConvBiGRU(nn.Module):
    """A 1-D convolution over the steps, then a BiGRU, classified from the mean over time."""

    def __init__(self, input_size, num_classes, channels=12, kernel_size=3, hidden_size=16):
        super().__init__()
        self.conv = nn.Conv1d(input_size, channels, kernel_size, padding=kernel_size // 2)
        self.gru = nn.GRU(channels, hidden_size, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, x, lengths=None):
        h = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        out, _ = self.gru(h)
        return self.fc(out.mean(dim=1))
'''
YAML = """defaults:
  - /schema/model/model@_here_
  - _self_

_target_: convgru.ConvBiGRU
channels: 12
kernel_size: 3
hidden_size: 16
"""
RUN = [
    "--config-dir",
    "conf",
    "model=convgru",
    "data=digits",
    "device=cpu",
    "device.num_threads=1",
    "trainer.log_images=false",
    "optimizer.lr=0.01",
    "trainer.checkpoint_every_n_steps=7",
    "trainer.log_every_n_steps=5",
]


def env(*paths: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [ROOT, *paths])), "OMP_NUM_THREADS": "1"}


def birnn(module: str, *args: str, cwd: Path, paths: tuple = (), timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env(*paths), capture_output=True, text=True, timeout=timeout
    )


def metrics_of(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "metrics.json").read_text()).items() if k not in WALL_CLOCK}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The user's project folder: their module and its YAML under conf/model/."""
    root = tmp_path_factory.mktemp("project")
    (root / "convgru.py").write_text(MODULE)
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "model" / "convgru.yaml").write_text(YAML)
    return root


@pytest.fixture(scope="module")
def reference(project) -> Path:
    """An uninterrupted 4-epoch run of the user's model, started in their project folder."""
    run_dir = project / "reference"
    proc = birnn("birnn.train", *RUN, "trainer.epochs=4", f"hydra.run.dir={run_dir}", cwd=project)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_own_model_trains_with_its_own_keys(reference):
    state = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["model"] == {
        "_target_": "convgru.ConvBiGRU",
        "channels": 12,
        "kernel_size": 3,
        "hidden_size": 16,
    }
    assert {k.split(".")[0] for k in state["model"]} == {"conv", "gru", "fc"}
    assert metrics_of(reference)["test_accuracy"] > 0.5  # 10 classes: chance is 0.1


def test_own_model_learns_values_through_num_classes(project, tmp_path):
    """task=regression (issue #36): the user's model gets its number of outputs as it gets num_classes."""
    pytest.importorskip("aeon")
    run = [*RUN[:3], *VALUES, "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = birnn("birnn.train", *run, cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "test_rmse" in metrics_of(tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["model"]["fc.weight"].shape[0] == 1 and state["config"]["model"]["_target_"] == "convgru.ConvBiGRU"


@pytest.mark.slow
def test_own_model_resumes_bit_exactly_after_kill_9(project, reference, tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "birnn.train", *RUN, "trainer.epochs=1000", f"hydra.run.dir={run_dir}"],
        cwd=project,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["progress"]
    assert 0 < killed_at["global_step"] < 60 and not (run_dir / "metrics.json").exists()

    proc = birnn("birnn.train", *RUN, "trainer.epochs=4", f"hydra.run.dir={run_dir}", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "Resuming from" in proc.stdout + proc.stderr + (run_dir / "train.log").read_text()
    assert metrics_of(run_dir) == metrics_of(reference)
    expected = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]
    for name, weight in torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"].items():
        assert torch.equal(weight, expected[name]), name


@pytest.mark.slow
def test_own_model_under_torchrun_with_two_processes(project, reference, tmp_path):
    run_dir = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "birnn.train",
            *RUN,
            "trainer.epochs=4",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=project,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    ddp, single = metrics_of(run_dir), metrics_of(reference)
    assert ddp["world_size"] == 2 and ddp["steps"] == single["steps"] == 60
    assert ddp["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=0.01)
    one = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]
    for name, weight in torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"].items():
        torch.testing.assert_close(weight, one[name], atol=1e-4, rtol=0, msg=name)


def test_own_model_evaluates_and_predicts_from_another_directory_only_when_allowed(project, reference, tmp_path):
    ckpt = str(reference / "checkpoints" / "last.pt")
    refused = birnn("birnn.evaluate", ckpt, cwd=tmp_path, paths=(project,))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "model._target_ names convgru.ConvBiGRU" in refused.stderr and "--allow convgru" in refused.stderr

    missing = birnn("birnn.evaluate", ckpt, "--allow", "convgru", cwd=tmp_path)  # the module is not on the path
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "model._target_=convgru.ConvBiGRU cannot be imported" in missing.stderr

    evaluated = birnn(
        "birnn.evaluate", ckpt, "--allow", "convgru", "--out", str(tmp_path / "e.json"), cwd=tmp_path, paths=(project,)
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "e.json").read_text())["test_accuracy"] == metrics_of(reference)["test_accuracy"]

    digits = load_digits()
    np.save(tmp_path / "sample.npy", digits.test_x[0].numpy())
    predicted = birnn(
        "birnn.predict",
        ckpt,
        str(tmp_path / "sample.npy"),
        "--json",
        "--allow",
        "convgru",
        cwd=tmp_path,
        paths=(project,),
    )
    assert predicted.returncode == 0, predicted.stderr
    [result] = json.loads(predicted.stdout)
    assert result["label"] in [str(i) for i in range(10)] and 0.1 <= result["probability"] <= 1


def test_own_model_exports_where_it_traces(project, reference, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(project))
    restored = restore(reference / "checkpoints" / "last.pt", allow=["convgru"])
    out, difference = export.export(restored, "pt2", tmp_path / "m.pt2")
    assert out.is_file() and difference <= 1e-4


class DataDependent(torch.nn.Module):
    """A model whose forward branches on its input's values: torch.export cannot trace that."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x, lengths=None):
        return self.fc(x[:, -1]) if x.sum() > 0 else -self.fc(x[:, -1])


def test_a_model_that_does_not_trace_is_refused_in_one_line(tmp_path):
    restored = Restored(tmp_path / "last.pt", {}, None, DataDependent().eval(), (8, 8), [str(i) for i in range(10)])
    with pytest.raises(BirnnError) as info:
        export.export(restored, "pt2", tmp_path / "m.pt2")
    assert str(info.value).startswith("pt2 export of") and "\n" not in str(info.value)


def recording_factory(input_size, num_classes, **keys):
    """A model factory that keeps the keys it was called with (see the test below)."""
    model = torch.nn.Linear(input_size, num_classes)
    model.keys = keys
    return model


def test_restoring_passes_stored_keys_as_plain_values():
    """A nested ``_target_`` in a checkpoint's model keys is data: never instantiated at restore time."""
    cfg = OmegaConf.create(
        {"_target_": "test_own_model.recording_factory", "inner": {"_target_": "builtins.print", "text": "never"}}
    )
    model = build_model(cfg, 8, 10, allow=["test_own_model"])
    assert model.keys == {"inner": {"_target_": "builtins.print", "text": "never"}}
    with pytest.raises(BirnnError, match="--allow test_own_model"):
        build_model(cfg, 8, 10, allow=[])
    assert isinstance(
        build_model(OmegaConf.create({"_target_": "torch.nn.Identity"}), 8, 10), torch.nn.Identity
    )  # training: the user's own config


def test_a_factory_that_returns_no_module_is_one_line():
    with pytest.raises(BirnnError, match="returned a dict, not a torch.nn.Module"):
        build_model(OmegaConf.create({"_target_": "builtins.dict"}), 8, 10)


UNVERIFIED = ["trainer.allow_unverified=true"]  # checkpoints from before checksums need the user's word


def test_birnns_old_checkpoints_still_evaluate_and_resume(tmp_path):
    """A checkpoint written before models and schedulers were components: no model._target_, scheduler.name."""
    run_dir = tmp_path / "old"
    metrics = train(make_cfg(*FAST, "trainer.max_steps=4", "scheduler=onecycle"), run_dir)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state.pop("checksum")  # nor had they a checksum
    config = state["config"]
    del config["model"]["_target_"], config["tracker"]
    config["scheduler"] = {"name": "onecycle", "warmup_steps": 0, "min_lr_ratio": 0.0, "pct_start": 0.3}
    torch.save({**state, "finished": False}, run_dir / "checkpoints" / "last.pt")
    assert restore(run_dir / "checkpoints" / "last.pt", unverified=True).cfg.model._target_ == RNN_CLASSIFIER
    evaluated = evaluate_checkpoint(run_dir / "checkpoints" / "last.pt", ["device=cpu"], unverified=True)
    assert evaluated["test_accuracy"] == metrics["test_accuracy"]
    # the old one-cycle schedule is today's: the (unfinished) run resumes and finishes in place
    resumed = train(make_cfg(*FAST, *UNVERIFIED, "trainer.max_steps=4", "scheduler=onecycle"), run_dir)
    assert resumed["steps"] == 4 and resumed["test_accuracy"] == metrics["test_accuracy"]

    config["scheduler"] = {"name": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.0, "pct_start": 0.3}
    torch.save({**state, "finished": False}, run_dir / "checkpoints" / "last.pt")
    with pytest.raises(BirnnError, match="old scheduler.name=cosine") as info:
        train(
            make_cfg(*FAST, *UNVERIFIED, "trainer.max_steps=4", "scheduler=cosine", "scheduler.warmup_steps=2"), run_dir
        )
    assert "\n" not in str(info.value)
