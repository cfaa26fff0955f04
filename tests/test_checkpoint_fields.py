"""Crafted checkpoint fields (issue #35, item 13): a checksum does not stop a crafted file (anyone recomputes it), so
every field is checked on load against ``birnn.engine.contents``: one ``error:`` line from each command, never a
traceback."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from birnn.engine import checkpoint
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import FAST, make_cfg, run_cli, write_checkpoint

RUN = [*FAST, "trainer.max_steps=3", "trainer.epochs=2"]


def _set(section: str, key: str, value: object) -> Callable[[dict], None]:
    def change(state: dict) -> None:
        state[section][key] = value

    return change


def _weight_as_text(state: dict) -> None:
    state["model"][next(iter(state["model"]))] = "x"


def _no_lr(state: dict) -> None:
    state["config"]["optimizer"] = {k: v for k, v in state["config"]["optimizer"].items() if k != "lr"}


def _no_group_lr(state: dict) -> None:
    del state["optimizer"]["param_groups"][0]["lr"]


def _moment_of_another_shape(state: dict) -> None:
    state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)  # Adam took it, then failed at its first step


def _step(value: object) -> Callable[[dict], None]:
    """Every parameter's optimizer step set to ``value``: a string gave a message quoting a generator object, a
    negative count a traceback at the first step (a complex bias correction)."""

    def change(state: dict) -> None:
        for per_param in state["optimizer"]["state"].values():
            per_param["step"] = value

    return change


def _empty_data(state: dict) -> None:
    state["data"] = {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("fields") / "run"
    train(make_cfg(*RUN), run_dir)
    return run_dir


CASES = [
    ("evaluate", _empty_data, "data.input_shape is missing"),
    ("predict", _set("data", "classes", 5), "data.classes must be a non-empty list"),
    ("evaluate", _set("data", "patch", "x"), "data.patch must be an integer >= 1, not str 'x'"),
    ("predict", _weight_as_text, r"model\['lstm.weight_ih_l0'\] must be a tensor, not str 'x'"),
    ("evaluate", _set("config", "model", [1, 2]), r"config.model must be a dict, not list \[1, 2\]"),
    ("export", _no_lr, "config.optimizer.lr is missing"),
    ("export", _set("data", "input_shape", [0, 1]), r"data.input_shape\[0\] must be an integer >= 1, not int 0"),
    ("evaluate", _set("data", "normalization", {"mean": [0.0], "std": [1.0]}), "normalization must be"),
    ("resume", _set("progress", "epoch", "x"), "progress.epoch must be an integer >= 0, not str 'x'"),
    ("resume", _set("rng", "shuffle", "x"), "rng.shuffle must be a 5056 torch.uint8 tensor, not str 'x'"),
    ("resume", _no_group_lr, r"optimizer.param_groups\[0\].lr is missing"),
    ("resume", _set("progress", "step_in_epoch", 10**9), "progress.step_in_epoch 1000000000 is beyond"),  # a hang
    ("resume", _set("rng", "shuffle", torch.zeros(5056, dtype=torch.uint8)), "rng: Invalid mt19937 state"),
    ("resume", _step("x"), r"optimizer.state: each parameter's step must be a whole number >= 0 \(a number or"),
    ("resume", _step(torch.tensor(-5.0)), "optimizer.state: each parameter's step must be a whole number >= 0"),
]


@pytest.mark.parametrize("command, change, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_crafted_fields_are_one_error_line(trained, tmp_path, command, change, message):
    state = checkpoint.load(trained / "checkpoints" / "last.pt")
    change(state)
    if command == "resume":
        run_dir = tmp_path / "run"
        shutil.copytree(trained, run_dir)
        (run_dir / "checkpoints" / "previous.pt").unlink()
        write_checkpoint(state, run_dir / "checkpoints" / "last.pt")
        proc = run_cli(*RUN, "trainer.max_steps=5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    else:
        ckpt = write_checkpoint(state, tmp_path / "crafted.pt")
        np.save(tmp_path / "x.npy", np.zeros((8, 8), dtype=np.float32))
        args = {"evaluate": ["--out", "e.json"], "predict": ["x.npy"], "export": ["--out", "m.onnx"]}[command]
        proc = run_cli(str(ckpt), *args, cwd=tmp_path, module=f"birnn.{command}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in lines if line.startswith("error: ")]
    assert len(error) == 1 and "not a usable birnn checkpoint" in error[0], proc.stderr
    assert re.search(message, error[0]), error[0]


def test_old_checkpoints_still_pass_the_schema():
    fixtures = Path(__file__).parent / "fixtures"
    for path in sorted(fixtures.glob("*.pt")):
        state = checkpoint.load(path, unverified=True)
        assert state["progress"]["global_step"] == 45


def test_deeply_nested_checkpoint_is_one_error_line(trained, tmp_path):
    """Lists nested 3,000 deep (anywhere, here in ``provenance``) were a RecursionError in the checksum."""
    state = checkpoint.load(trained / "checkpoints" / "last.pt")
    nested: list = []
    for _ in range(3000):
        nested = [nested]
    state["provenance"]["x"] = nested
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # the attacker's own digest and torch.save
    try:
        ckpt = write_checkpoint(state, tmp_path / "crafted.pt")
    finally:
        sys.setrecursionlimit(limit)
    proc = run_cli(str(ckpt), "--out", "e.json", cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr
    assert "nested over" in proc.stderr


def test_an_optimizer_moment_of_another_shape_is_one_error_line_on_resume(trained, tmp_path):
    """Adam's ``load_state_dict`` takes a moment of any shape; the first step then failed with a traceback."""
    state = checkpoint.load(trained / "checkpoints" / "last.pt")
    _moment_of_another_shape(state)
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    (run_dir / "checkpoints" / "previous.pt").unlink()
    write_checkpoint(state, run_dir / "checkpoints" / "last.pt")
    proc = run_cli(*RUN, "trainer.max_steps=5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "optimizer state that does not fit" in error[0], proc.stderr
    assert "exp_avg is a torch.float32 tensor of shape (3,)" in error[0], error[0]


@pytest.mark.parametrize("command", ["export", "predict"])
def test_a_huge_input_shape_is_one_error_line(trained, tmp_path, command):
    """data.input_shape=[10**9, 8] was a traceback in export (seven example inputs of 224 GB); other readers
    allocated images of that shape."""
    state = checkpoint.load(trained / "checkpoints" / "last.pt")
    state["data"]["input_shape"] = [10**9, 8]
    ckpt = write_checkpoint(state, tmp_path / "crafted.pt")
    np.save(tmp_path / "x.npy", np.zeros((8, 8), dtype=np.float32))
    args = {"predict": ["x.npy"], "export": ["--out", "m.onnx"]}[command]
    proc = run_cli(str(ckpt), *args, cwd=tmp_path, module=f"birnn.{command}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "input_shape must be at most 16,777,216 values" in error[0], proc.stderr


def test_a_huge_model_is_refused_before_it_is_allocated(trained, tmp_path):
    """A vocabulary of 10**10 in the data spec asked for a 2.5 TB embedding: the model is now built on the meta
    device and compared with the checkpoint's tensors first, so the refusal names the difference, not an
    allocation failure (a smaller crafted size was allocated and initialized in full before)."""
    state = checkpoint.load(trained / "checkpoints" / "last.pt")
    state["data"]["vocab_size"] = 10**10
    ckpt = write_checkpoint(state, tmp_path / "crafted.pt")
    proc = run_cli(str(ckpt), "--out", "e.json", cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "holds a different architecture" in error[0], proc.stderr
    assert "embedding.weight: missing in checkpoint" in proc.stderr
    assert "allocate" not in proc.stderr


def test_a_tensor_expanded_by_its_strides_is_one_error_line(trained, tmp_path):
    """A zero-stride tensor stores one value and shows 64 x 10**9: the checksum (and a model of that size) expanded
    it, a 256 GB allocation and a traceback. Refused before the checksum is computed."""
    state = checkpoint.load(trained / "checkpoints" / "last.pt")
    state["model"]["lstm.weight_ih_l0"] = torch.zeros(1).expand(64, 10**9)
    ckpt = tmp_path / "crafted.pt"
    torch.save({"format": checkpoint.FORMAT, **state, "checksum": "0" * 64}, ckpt)  # its digest would expand it too
    proc = run_cli(str(ckpt), "--out", "e.json", cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "a tensor shows more values than it stores" in error[0], proc.stderr


def test_a_model_larger_than_its_checkpoint_is_refused_unallocated(tmp_path):
    """Tensors a model does not save (non-persistent buffers) are bounded by the file's size: built on the meta
    device, nothing is allocated before the refusal."""
    from birnn.engine.restore import check_plan

    class Bloated(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))
            self.register_buffer("scratch", torch.zeros(10**12), persistent=False)

    ckpt = tmp_path / "small.pt"
    ckpt.write_bytes(b"x" * 1000)
    with pytest.raises(BirnnError, match="builds a model of 3,814,697 MiB"):
        check_plan(Bloated, {"w": torch.zeros(2)}, ckpt)


@pytest.fixture(scope="module")
def values_state(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A task=regression checkpoint's content (targets' scaling in data.values)."""
    folder = tmp_path_factory.mktemp("values")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6, 2)).astype("float32")
    np.savez(folder / "v.npz", x_train=x, y_train=rng.normal(50, 5, 30), x_test=x[:5], y_test=rng.normal(50, 5, 5))
    train(make_cfg(*RUN, "task=regression", "data=arrays", f"data.path={folder / 'v.npz'}"), folder / "run")
    return checkpoint.load(folder / "run" / "checkpoints" / "last.pt")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("mean", [1e300], r"data.values.mean\[0\] must be a finite number within float32's range"),
        ("std", [1e300], r"data.values.std\[0\] must be a finite number > 0 within float32's range"),
        ("std", [1e-60], r"data.values.std\[0\] must be a finite number > 0 within float32's range"),
        ("per_step", True, "values.per_step must be the data spec's per_step"),
    ],
    ids=["mean-beyond-float32", "std-beyond-float32", "std-zero-in-float32", "per-step-disagrees"],
)
def test_a_crafted_targets_scaling_is_one_error_line(values_state, tmp_path, field, value, message):
    """The scaling is applied in float32: a mean or std beyond its range became inf (or a std 0) and birnn-predict
    printed inf or -inf; a values spec per step under a per-sequence data spec answered one value per step."""
    import copy

    state = copy.deepcopy(values_state)
    state["data"]["values"][field] = value
    path = write_checkpoint(state, tmp_path / "bad.pt")
    np.save(tmp_path / "x.npy", np.zeros((6, 2), dtype="float32"))
    done = run_cli(str(path), str(tmp_path / "x.npy"), cwd=tmp_path, module="birnn.predict")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), done.stderr


@pytest.mark.parametrize("change", ["no-values", "classification-config"])
def test_a_regression_checkpoint_must_say_so_in_config_and_data_alike(values_state, tmp_path, change):
    """A task=regression checkpoint without its targets' scaling (data.values) was read as a one-class classifier:
    birnn-predict answered 'value' with probability 1.0 and export wrote logits."""
    import copy

    state = copy.deepcopy(values_state)
    if change == "no-values":
        del state["data"]["values"]
    else:
        state["config"]["task"]["name"] = "classification"
    path = write_checkpoint(state, tmp_path / "bad.pt")
    np.save(tmp_path / "x.npy", np.zeros((6, 2), dtype="float32"))
    done = run_cli(str(path), str(tmp_path / "x.npy"), cwd=tmp_path, module="birnn.predict")
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert "data.values (the targets' scaling) must be there exactly when config.task.name is regression" in lines[0]
