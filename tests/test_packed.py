"""Packs (birnn-pack, data=packed): training from memory maps equals the in-memory path, and every damaged or
incomplete pack is refused with one error line."""

import json
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_distributed import finished, metrics_of, run_dirs, torchrun
from test_resume import interrupt_at, state_of

from birnn.data import normalize
from birnn.data.packed import MANIFEST, PackWriter, load_packed, verify
from birnn.data.pipeline import load_data
from birnn.pack import pack_config
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import FAST, ROOT, make_cfg, run_cli

RUN = [*FAST, "trainer.epochs=1", "trainer.max_steps=12", "trainer.checkpoint_every_n_steps=5"]


@pytest.fixture(scope="module")
def digits_pack(tmp_path_factory):
    out = tmp_path_factory.mktemp("packs") / "digits"
    pack_config(out, ["data=digits"], overwrite=False)
    return out


def packed(pack, *overrides):
    return [*RUN, "data=packed", f"data.path={pack}", *overrides]


def weights(run_dir):
    return state_of(run_dir)["model"]


def test_manifest_records_shapes_checksums_and_training_statistics(digits_pack):
    manifest = json.loads((digits_pack / MANIFEST).read_text())
    memory = load_data(make_cfg("data=digits").data, torch.device("cpu"))
    x = manifest["splits"]["train"]["x"]
    assert x["shape"] == list(memory.train_x.shape) and x["dtype"] == "<f4"
    assert x["bytes"] == (digits_pack / "train_x.npy").stat().st_size
    assert np.array_equal(np.load(digits_pack / "train_x.npy", mmap_mode="r"), memory.train_x.numpy())
    expected = normalize.fit(memory.train_x)
    np.testing.assert_allclose(manifest["normalization"]["mean"], expected["mean"], rtol=1e-9)
    np.testing.assert_allclose(manifest["normalization"]["std"], expected["std"], rtol=1e-9)
    assert verify(digits_pack) == 4


@pytest.mark.parametrize("extra", [[], ["data.val_size=200", "data.normalize=true", "data.patch=3"]])
def test_training_on_a_pack_is_bit_identical_to_in_memory(digits_pack, tmp_path, extra):
    memory = train(make_cfg(*RUN, *extra), tmp_path / "memory")
    mapped = train(make_cfg(*packed(digits_pack, *extra)), tmp_path / "packed")
    assert mapped["test_accuracy"] == memory["test_accuracy"]
    assert mapped["history"] == memory["history"]
    ref = weights(tmp_path / "memory")
    for name, w in weights(tmp_path / "packed").items():
        assert torch.equal(w, ref[name]), name


def test_gathered_batches_stay_off_the_training_splits(digits_pack):
    data = load_data(make_cfg(*packed(digits_pack)).data, torch.device("cpu"))
    assert not isinstance(data.train_x, torch.Tensor)  # a memory map, read batch by batch
    memory = load_data(make_cfg("data=digits").data, torch.device("cpu"))
    idx = torch.tensor([5, 3, 1000, 3])
    assert torch.equal(data.train_x[idx], memory.train_x[idx])
    assert torch.equal(data.test_x[10:20], memory.test_x[10:20])


def test_resume_mid_epoch_on_a_pack_is_bit_identical(digits_pack, tmp_path, monkeypatch):
    reference = train(make_cfg(*packed(digits_pack)), tmp_path / "reference")
    run_dir = tmp_path / "killed"

    def die(_):
        raise KeyboardInterrupt  # dies like kill -9: nothing saved after the step-5 and step-10 checkpoints

    with monkeypatch.context() as m:
        interrupt_at(m, 11, die)
        with pytest.raises(KeyboardInterrupt):
            train(make_cfg(*packed(digits_pack)), run_dir)
    assert state_of(run_dir)["progress"]["step_in_epoch"] == 10
    resumed = train(make_cfg(*packed(digits_pack)), run_dir)
    assert resumed["history"] == reference["history"] and resumed["test_accuracy"] == reference["test_accuracy"]
    ref = weights(tmp_path / "reference")
    for name, w in weights(run_dir).items():
        assert torch.equal(w, ref[name]), name


def test_evaluate_reads_a_packed_run(digits_pack, tmp_path):
    train(make_cfg(*packed(digits_pack)), tmp_path)
    proc = run_cli(str(tmp_path / "checkpoints" / "last.pt"), cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode == 0, proc.stderr
    scores = json.loads((tmp_path / "checkpoints" / "evaluation.json").read_text())
    assert scores["test_accuracy"] == json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"]


def test_a_pack_whose_shapes_differ_from_the_checkpoint_is_refused_at_resume(digits_pack, tmp_path, monkeypatch):
    pack = copy_pack(digits_pack, tmp_path / "p")
    with monkeypatch.context() as m:
        interrupt_at(m, 7, lambda _: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train(make_cfg(*packed(pack)), tmp_path / "run")
    with PackWriter(pack, [str(i) for i in range(10)], kind="image", overwrite=True) as other:
        other.split("train").append(np.zeros((100, 8, 4), np.float32), np.arange(100) % 10)
        other.split("test").append(np.zeros((20, 8, 4), np.float32), np.arange(20) % 10)
    with pytest.raises(BirnnError, match="input_shape changed"):
        train(make_cfg(*packed(pack)), tmp_path / "run")


def test_the_writer_packs_variable_length_chunks(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 9, 2)).astype(np.float32)
    lengths = rng.integers(1, 10, 50)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    y = rng.integers(0, 3, 50)
    with PackWriter(tmp_path / "p", ["a", "b", "c"], variable=True) as pack:
        for i in range(0, 40, 16):  # chunks of 16, 16, 8
            pack.split("train").append(x[i : min(i + 16, 40)], y[i : min(i + 16, 40)], lengths[i : min(i + 16, 40)])
        pack.split("test").append(torch.from_numpy(x[40:]), torch.from_numpy(y[40:]), torch.from_numpy(lengths[40:]))
    splits = load_packed(path=str(tmp_path / "p"))
    assert torch.equal(splits.train_lengths, torch.from_numpy(lengths[:40]))
    assert torch.equal(splits.test_x[torch.arange(10)], torch.from_numpy(x[40:]))
    stats = json.loads((tmp_path / "p" / MANIFEST).read_text())["normalization"]
    expected = normalize.fit(torch.from_numpy(x[:40]), torch.from_numpy(lengths[:40]))
    np.testing.assert_allclose(stats["mean"], expected["mean"], rtol=1e-9)


def one_error_line(proc):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def copy_pack(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_pack_without_manifest_is_refused(digits_pack, tmp_path):
    pack = copy_pack(digits_pack, tmp_path / "p")
    (pack / MANIFEST).unlink()
    line = one_error_line(run_cli(*packed(pack), "hydra.run.dir=run", cwd=tmp_path))
    assert "no manifest.json" in line and "did not finish" in line


def test_a_truncated_file_is_refused_on_open(digits_pack, tmp_path):
    pack = copy_pack(digits_pack, tmp_path / "p")
    with (pack / "train_x.npy").open("r+b") as f:
        f.truncate(1000)
    line = one_error_line(run_cli(*packed(pack), "hydra.run.dir=run", cwd=tmp_path))
    assert "train_x.npy has 1000 bytes" in line


def test_verify_finds_a_changed_byte(digits_pack, tmp_path):
    pack = copy_pack(digits_pack, tmp_path / "p")
    proc = run_cli(str(pack), "--verify", cwd=tmp_path, module="birnn.pack")
    assert proc.returncode == 0 and "4 files match" in proc.stdout
    with (pack / "test_x.npy").open("r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    assert "test_x.npy: SHA-256 differs" in one_error_line(
        run_cli(str(pack), "--verify", cwd=tmp_path, module="birnn.pack")
    )


def test_packing_over_a_pack_needs_overwrite(digits_pack, tmp_path):
    pack = copy_pack(digits_pack, tmp_path / "p")
    line = one_error_line(run_cli(str(pack), "data=digits", cwd=tmp_path, module="birnn.pack"))
    assert "already holds a pack" in line and "--overwrite" in line
    proc = run_cli(str(pack), "data=digits", "--overwrite", cwd=tmp_path, module="birnn.pack")
    assert proc.returncode == 0, proc.stderr
    assert verify(pack) == 4


def test_a_full_disk_leaves_no_manifest_and_says_so(tmp_path):
    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run(
        [sys.executable, "-m", "birnn.pack", str(tmp_path / "p"), "data=digits"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        preexec_fn=small_disk,
        timeout=120,
    )
    line = one_error_line(proc)
    assert "disk full" in line and "No manifest was written" in line
    assert not (tmp_path / "p" / MANIFEST).exists()
    line = one_error_line(run_cli(*packed(tmp_path / "p"), "hydra.run.dir=run", cwd=tmp_path))
    assert "did not finish" in line


@pytest.mark.slow
def test_two_processes_on_a_pack_equal_one(digits_pack, tmp_path):
    run = [*packed(digits_pack, "data.val_size=1", "trainer.max_steps=30")]
    rc, _, err = finished(torchrun(*run, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    assert rc == 0, err
    (ddp_dir,) = run_dirs(tmp_path)
    single = train(make_cfg(*run), tmp_path / "single")
    ddp = metrics_of(ddp_dir)
    assert ddp["world_size"] == 2 and ddp["test_accuracy"] == single["test_accuracy"]
    one = weights(tmp_path / "single")
    for name, w in weights(ddp_dir).items():
        torch.testing.assert_close(w, one[name], atol=1e-5, rtol=0, msg=name)
