"""A checkpoint is data, never code; one run dir, one writer; nothing lost at the very end (issue 19)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from birnn.engine import checkpoint
from birnn.engine import run as run_module
from birnn.engine.loop import Stepper
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import FAST, ROOT, make_cfg, run_cli, wait_for, write_checkpoint

RUN = [*FAST, "trainer.epochs=2", "trainer.checkpoint_every_n_steps=7"]


class Marker:
    """A pickle that creates a file when unpickled: proof that code from a checkpoint ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    train(make_cfg(*RUN), run_dir)
    return run_dir


def crafted(trained: Path, folder: Path, keep_spec: bool) -> tuple[Path, Path]:
    """A checkpoint whose ``data._target_`` would unpickle a file that writes a marker, if it ever ran."""
    marker, payload = folder / "MARKER", folder / "payload.pkl"
    payload.write_bytes(pickle.dumps(Marker(marker)))
    state = checkpoint.load(trained / "checkpoints" / "last.pt")
    state["config"]["data"] = {
        **state["config"]["data"],
        "_target_": "hydra.utils.instantiate",
        "config": {
            "_target_": "builtins.dict",
            "payload": {"_target_": "torch.load", "f": str(payload), "weights_only": False},
        },
    }
    if not keep_spec:
        del state["data"]
    return write_checkpoint(state, folder / "evil.pt"), marker


@pytest.mark.parametrize(
    "command, keep_spec", [("birnn.evaluate", True), ("birnn.predict", False), ("birnn.export", False)]
)
def test_a_crafted_checkpoint_runs_no_code(trained, tmp_path, command, keep_spec):
    evil, marker = crafted(trained, tmp_path, keep_spec)
    np_input = tmp_path / "x.npy"
    __import__("numpy").save(np_input, __import__("numpy").zeros((8, 8), dtype="float32"))
    args = {
        "birnn.evaluate": [str(evil)],
        "birnn.predict": [str(evil), str(np_input)],
        "birnn.export": [str(evil), "--format", "pt2"],
    }[command]
    proc = run_cli(*args, cwd=tmp_path, module=command)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists()
    assert "hydra.utils.instantiate, which is not part of birnn" in proc.stderr
    assert "--allow hydra.utils" in proc.stderr and "Traceback" not in proc.stderr
    # the user can name a loader on the command line, and then it is theirs: still no marker from the payload
    named = (
        run_cli(str(evil), "data._target_=birnn.data.load_digits", cwd=tmp_path, module="birnn.evaluate")
        if command == "birnn.evaluate"
        else None
    )
    if named is not None:
        assert not marker.exists()


def test_a_crafted_regression_checkpoint_runs_no_code(tmp_path):
    """The trust rule holds for values too (issue #36): a regression checkpoint naming code is refused, nothing runs."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6, 2)).astype("float32"), rng.normal(size=40)
    np.savez(tmp_path / "values.npz", x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    run = ["task=regression", "data=arrays", f"data.path={tmp_path / 'values.npz'}", *FAST[1:], "trainer.max_steps=2"]
    train(make_cfg(*run), tmp_path / "values")
    evil, marker = crafted(tmp_path / "values", tmp_path, keep_spec=True)
    proc = run_cli(str(evil), cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode == 2 and not marker.exists(), proc.stderr
    assert "hydra.utils.instantiate, which is not part of birnn" in proc.stderr and "Traceback" not in proc.stderr


def test_allowed_modules_and_builtins():
    from birnn.schema import trust

    assert trust.allowed("birnn.data.load_digits")
    assert not trust.allowed("birnn.data.pipeline.get_method")
    assert trust.allowed("mymodels.conv.Net", ["mymodels"]) and not trust.allowed("mymodelsx.Net", ["mymodels"])
    with pytest.raises(BirnnError, match="not a dotted name"):
        trust.resolve("os.system; rm", "data._target_")


def test_killed_before_metrics_json_the_rerun_finishes_the_records(tmp_path, monkeypatch):
    """Killed (here: the disk full) between the final checkpoint and metrics.json: the rerun writes it."""

    def full_disk(run_dir, metrics):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_module, "write_metrics", full_disk)
    with pytest.raises(BirnnError, match="Could not write .*metrics.json: No space left on device"):
        train(make_cfg(*RUN), tmp_path / "run")
    run_dir = tmp_path / "run"
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["finished"]
    assert not (run_dir / "metrics.json").exists()
    proc = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "without its metrics.json; writing it" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 30 and json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    summary = run_cli(str(tmp_path), cwd=tmp_path, module="birnn.report")
    assert summary.returncode == 0, summary.stderr
    again = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "already holds a finished run; nothing to do" in again.stdout


def _start(run_dir: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "birnn.train", *RUN, *extra, f"hydra.run.dir={run_dir}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_run_on_a_busy_run_dir_is_refused_and_a_dead_one_leaves_no_lock(tmp_path):
    run_dir = tmp_path / "run"
    first = _start(run_dir, tmp_path, "trainer.epochs=1000")
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists())
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if "checkpoints" not in p.parts)
    second = run_cli(*RUN, "trainer.epochs=1000", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=60)
    assert second.returncode == 2
    assert "is in use by another birnn process" in second.stderr and "Traceback" not in second.stderr
    after = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if "checkpoints" not in p.parts)
    assert [p for p in after if p not in before and not p.startswith("events.")] == []  # no .hydra/resume-N
    first.send_signal(signal.SIGKILL)
    first.wait()
    resumed = run_cli(*RUN, "trainer.epochs=1000", "trainer.max_steps=40", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr  # the dead run's lock went with it
    assert "Resuming from" in resumed.stdout


def test_two_runs_started_together_on_one_dir_one_is_refused(tmp_path):
    run_dir = tmp_path / "fresh"
    procs = [_start(run_dir, tmp_path) for _ in range(2)]
    results = sorted((p.wait(timeout=240), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    assert "is in use by another birnn process" in results[1][1]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 30


def test_a_second_sweep_on_a_busy_sweep_dir_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "birnn.train",
            "-m",
            *FAST,
            "trainer.epochs=1000",
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: (sweep / "0" / "checkpoints").exists())
    second = run_cli("-m", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=60)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert second.returncode == 2 and "is in use by another birnn process (one writer per sweep dir)" in second.stderr


def test_refused_runs_leave_nothing(tmp_path):
    for bad in ("optimizer.lr=0", "device=cuda" if not torch.cuda.is_available() else "optimizer.lr=-1", "data=mnist"):
        proc = run_cli(*RUN, bad, "data.download=false" if bad == "data=mnist" else "seed=0", cwd=tmp_path)
        assert proc.returncode != 0
    assert not (tmp_path / "outputs").exists()
    run_dir = tmp_path / "run"
    assert run_cli(*RUN, "trainer.max_steps=3", f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    log_before = (run_dir / "train.log").read_bytes()
    refused = run_cli(*RUN, "trainer.max_steps=3", "model.hidden_size=8", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert refused.returncode != 0 and "Cannot resume" in refused.stderr + refused.stdout
    assert not (run_dir / ".hydra" / "resume-1").exists()
    assert (run_dir / "train.log").read_bytes() == log_before
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


def _zero_inside_the_largest_tensor(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + 64 : start + 64 + 4096] = bytes(4096)
    path.write_bytes(bytes(raw))


def test_a_flipped_block_inside_the_tensors_falls_back_to_previous(tmp_path, caplog):
    cfg = make_cfg(*RUN, "trainer.epochs=1")
    train(cfg, tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    torch.load(last, weights_only=True)  # readable before
    _zero_inside_the_largest_tensor(last)
    torch.load(last, weights_only=True)  # torch itself still loads it: only the checksum sees the damage
    with pytest.raises(BirnnError, match="does not match its checksum"):
        checkpoint.load(last)
    state, path = checkpoint.load_latest(tmp_path / "checkpoints")
    assert path.name == "previous.pt" and "does not match its checksum" in caplog.text


def test_non_finite_learning_rates_and_absurd_values_are_refused():
    from birnn.schema.config import validate

    for bad, message in (
        ("optimizer.lr=inf", "optimizer.lr must be a finite number > 0"),
        ("optimizer.lr=nan", "optimizer.lr must be a finite number > 0"),
        ("device.num_threads=100000", "device.num_threads must be"),
        ("seed=100000000000000000000000", "seed must be"),
    ):
        try:
            cfg = make_cfg(*FAST, bad)
        except Exception as e:  # an int beyond 64 bits may already fail composition: then say so clearly
            assert bad.startswith("seed"), e
            continue
        with pytest.raises(BirnnError, match=message):
            validate(cfg)
    from birnn.models.rnn import check_options

    with pytest.raises(BirnnError, match="model.hidden_size must be in 1..65536, got 1000000000"):
        check_options(1_000_000_000, 2, 0.0, "last", "lstm")


def test_weights_that_turn_non_finite_are_never_saved(tmp_path, monkeypatch):
    original, calls = Stepper.step, []

    def step_then_poison(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(None)
        if len(calls) == 6:  # after step 6's loss was computed: only the weights show it at step 7's save
            with torch.no_grad():
                self.model.fc.bias.fill_(float("inf"))
        return out

    monkeypatch.setattr(Stepper, "step", step_then_poison)
    with pytest.raises(BirnnError, match="NaN/inf"):
        train(make_cfg(*RUN), tmp_path)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_predict_and_evaluate_refuse_non_finite_weights(trained, tmp_path):
    state = checkpoint.load(trained / "checkpoints" / "last.pt")
    state["model"]["fc.weight"][0, 0] = float("nan")
    path = checkpoint.save({k: v for k, v in state.items() if k != "format"}, tmp_path, "nan.pt")
    x = tmp_path / "x.npy"
    __import__("numpy").save(x, __import__("numpy").zeros((8, 8), dtype="float32"))
    for module, args in (("birnn.predict", [str(path), str(x)]), ("birnn.evaluate", [str(path)])):
        proc = run_cli(*args, cwd=tmp_path, module=module)
        assert proc.returncode == 2 and "non-finite weights (fc.weight: 1 of" in proc.stderr, proc.stderr


def _module(root: Path, name: str, source: str) -> None:
    path = root / (name.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.parents:  # packages on the way
        if parent == root:
            break
        (parent / "__init__.py").touch()
    path.write_text(source)


def test_allow_module_trusts_what_it_defines_not_what_it_imports(tmp_path, monkeypatch):
    from birnn.schema import trust

    _module(tmp_path, "mymodels", "import torch\nimport os\nclass ConvBiGRU:\n    pass\ndef helper():\n    pass\n")
    _module(tmp_path, "mypkg.data", "from hydra.utils import instantiate\ndef load(root, download):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert trust.resolve("mymodels.ConvBiGRU", "model._target_", ["mymodels"]).__name__ == "ConvBiGRU"
    assert trust.resolve("mypkg.data.load", "data._target_", ["mypkg"]).__name__ == "load"
    for target, allow, home in (
        ("mymodels.torch.hub.load", "mymodels", "torch.hub"),
        ("mymodels.os.system", "mymodels", "posix"),
        ("mypkg.data.instantiate", "mypkg", "hydra"),
        ("birnn.models.rnn.instantiate", "birnn", "hydra"),
        ("birnn.engine.checkpoint.torch.load", "birnn", "torch"),
    ):
        with pytest.raises(BirnnError, match=f"not a class or function defined in the module you allowed.*{home}"):
            trust.resolve(target, "model._target_", [allow])
    # a name the user gives exactly stays exact: it trusts that one name, nothing beside it
    assert trust.resolve("mymodels.helper", "model._target_", ["mymodels.helper"]).__name__ == "helper"
    with pytest.raises(BirnnError, match="not part of birnn"):
        trust.resolve("mymodels.ConvBiGRU", "model._target_", ["mymodels.helper"])


def test_allow_does_not_reach_torch_hub_through_an_allowed_module(trained, tmp_path):
    """The attack: --allow mymodels, data._target_=mymodels.torch.hub.load on a local repo whose hubconf runs."""
    repo, marker = tmp_path / "repo", tmp_path / "MARKER"
    repo.mkdir()
    (repo / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\ndependencies = []\n")
    (tmp_path / "mymodels.py").write_text("import torch\n")
    state = checkpoint.load(trained / "checkpoints" / "last.pt")
    state["config"]["data"] = {
        **state["config"]["data"],
        "_target_": "mymodels.torch.hub.load",
        "repo_or_dir": str(repo),
        "model": "x",
        "source": "local",
    }
    evil = write_checkpoint(state, tmp_path / "evil.pt")
    proc = run_cli(str(evil), "--allow", "mymodels", cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode == 2 and not marker.exists()
    assert proc.stderr.count("\n") == 1 and "it comes from torch.hub" in proc.stderr, proc.stderr


def test_a_stored_interpolation_is_refused_and_nothing_is_created(trained, tmp_path, monkeypatch):
    state = checkpoint.load(trained / "checkpoints" / "last.pt")
    state["config"]["data"]["root"] = "cache/${oc.env:SECRET_TOKEN}"
    evil = write_checkpoint(state, tmp_path / "evil.pt")
    proc = run_cli(str(evil), cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "config.data.root holds an interpolation" in proc.stderr and not (tmp_path / "cache").exists()


def test_a_received_file_never_makes_evaluate_download(trained, tmp_path):
    state = checkpoint.load(trained / "checkpoints" / "last.pt")
    state["config"]["data"] = {**state["config"]["data"], "_target_": "birnn.data.load_mnist"}
    state["config"]["data"].update(root=str(tmp_path / "elsewhere"), download=True)
    evil = write_checkpoint(state, tmp_path / "evil.pt")
    proc = run_cli(str(evil), cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode == 2 and "data.download=false" in proc.stderr, proc.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_a_checkpoint_without_its_checksum_is_refused_unless_the_user_accepts_it(trained, tmp_path):
    """One damaged byte in the key name used to turn verification off (evaluate and resume accepted it)."""
    state = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    state["checksux"] = state.pop("checksum")
    state["model"]["fc.bias"] += 1.0
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(state, run_dir / "checkpoints" / "last.pt")
    evil = run_dir / "checkpoints" / "last.pt"
    proc = run_cli(str(evil), cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode == 2 and "has no checksum" in proc.stderr and "--allow-unverified" in proc.stderr
    assert run_cli(str(evil), "--allow-unverified", cwd=tmp_path, module="birnn.evaluate").returncode == 0
    resumed = run_cli(*RUN, "trainer.epochs=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode != 0 and "has no checksum" in resumed.stderr, resumed.stderr


def test_deleting_the_lock_file_lets_no_second_writer_in(tmp_path):
    run_dir = tmp_path / "run"
    first = _start(run_dir, tmp_path, "trainer.epochs=1000")
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists())
        for leftover in (run_dir / ".lock",):  # what an older birnn locked: removing it must change nothing
            leftover.unlink(missing_ok=True)
        second = run_cli(*RUN, "trainer.epochs=1000", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=60)
        assert second.returncode == 2 and "is in use by another birnn process" in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_where_a_directory_cannot_be_locked_the_lock_file_is_checked_before_every_write(tmp_path, monkeypatch):
    from birnn.engine import rundir

    real = rundir.fcntl.flock

    def no_directory_locks(fd, op):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EBADF, "Bad file descriptor")  # what flock on a directory gives on NFS
        return real(fd, op)

    monkeypatch.setattr(rundir.fcntl, "flock", no_directory_locks)
    run_dir = tmp_path / "run"
    held = rundir.lock(run_dir)
    try:
        assert (run_dir / ".lock").is_file()
        rundir.check(run_dir)
        (run_dir / ".lock").unlink()
        (run_dir / ".lock").mkdir()  # swapped for a directory: noticed before the next write
        with pytest.raises(BirnnError, match="was deleted or replaced while this run held it"):
            rundir.check(run_dir)
    finally:
        held.release()
    with pytest.raises(BirnnError, match=r"\.lock cannot be used as the run dir.s lock \(Is a directory\)"):
        rundir.lock(run_dir)
    (run_dir / ".lock").rmdir()
    (run_dir / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BirnnError, match=r"\.lock cannot be used as the run dir's lock"):
        rundir.lock(run_dir)


def test_a_run_dir_replaced_under_a_run_stops_it_before_it_writes(tmp_path):
    from birnn.engine import rundir

    run_dir = tmp_path / "run"
    held = rundir.lock(run_dir)
    try:
        run_dir.rename(tmp_path / "moved")
        run_dir.mkdir()
        with pytest.raises(BirnnError, match="was deleted or replaced"):
            rundir.check(run_dir)
    finally:
        held.release()
