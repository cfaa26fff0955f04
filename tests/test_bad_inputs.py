"""Bad inputs an attacker or an unlucky user gives: one clear line each, never a traceback, hang or wrong answer."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_arrays import arrays, save

from birnn.data.arrays import load_arrays
from birnn.engine import checkpoint
from birnn.engine.restore import restore
from birnn.predict import predict
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import FAST, make_cfg, run_cli, write_checkpoint


@pytest.fixture(scope="module")
def series_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model trained on normalized series (data=arrays, 10 steps x 2 features), and its data file."""
    folder = tmp_path_factory.mktemp("series")
    data = save(folder / "d.npz", arrays())
    train(
        make_cfg(*FAST, "data=arrays", f"data.path={data}", "data.normalize=true", "trainer.max_steps=4"),
        folder / "run",
    )
    return folder / "run", data


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"classes": None, "y_test": np.full(40, 10**9)}, "label 1000000000: without a classes list"),
        ({"x_train": np.zeros((120, 0, 2), dtype=np.float32)}, "none of them 0"),
        ({"x_test": np.zeros((40, 10, 0), dtype=np.float32)}, "none of them 0"),
        ({"x_train": np.full((120, 10, 2), 1e39)}, "beyond float32's range"),
    ],
)
def test_absurd_arrays_are_refused(tmp_path, changes, message):
    with pytest.raises(BirnnError, match=message):
        load_arrays(path=str(save(tmp_path / "d.npz", arrays(**changes))))


def test_pt_files_with_unusual_tensors(tmp_path):
    content = {k: torch.as_tensor(v) for k, v in arrays(classes=None).items() if v is not None}
    unusual = {
        **content,
        "x_train": content["x_train"].to(torch.bfloat16),
        "x_test": content["x_test"].float().requires_grad_(),
        "y_train": content["y_train"].to_sparse(),
    }
    torch.save(unusual, tmp_path / "unusual.pt")
    splits = load_arrays(path=str(tmp_path / "unusual.pt"))  # all readable as plain arrays
    assert splits.train_x.dtype == torch.float32 and splits.train_y.tolist() == content["y_train"].tolist()
    torch.save({**content, "x_train": [[[1.0]], [[1.0], [2.0]]]}, tmp_path / "ragged.pt")
    with pytest.raises(BirnnError, match="x_train in .*ragged.pt cannot be read as one array"):
        load_arrays(path=str(tmp_path / "ragged.pt"))


def test_predict_refuses_what_does_not_fit_the_model(series_run, tmp_path):
    run_dir, _ = series_run
    ckpt = run_dir / "checkpoints" / "last.pt"
    huge = tmp_path / "huge.npy"  # a 200-byte header that claims 10**11 x 2 floats
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 2), }".ljust(117) + "\n"
    huge.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    picture = tmp_path / "seven.png"
    Image.new("L", (10, 10), 255).save(picture)
    far = tmp_path / "far.npy"
    np.save(far, np.full((10, 2), 1e6, dtype=np.float32))
    ok = tmp_path / "ok.npy"
    np.save(ok, arrays()["x_test"][0].astype(np.float32))  # a sample of the data itself
    results = {Path(r["file"]).name: r for r in predict(ckpt, [huge, fifo, picture, far, ok])}
    assert "shape (100000000000, 2)" in results["huge.npy"]["error"]
    assert results["pipe.npy"]["error"] == "not a regular file"
    assert "trained on series data" in results["seven.png"]["error"]
    assert "standard deviations from the training mean" in results["far.npy"]["warning"]
    assert "warning" not in results["ok.npy"] and "prediction" in results["ok.npy"]


def test_ts_files_with_inf_or_no_values(tmp_path):
    from birnn.data.uea import read_ts

    head = "@problemName t\n@timeStamps false\n@univariate true\n@equalLength false\n@classLabel true a b\n@data\n"
    (tmp_path / "inf.ts").write_text(head + "1.0,2.0,1e39:a\n1.0,2.0,3.0:b\n")
    with pytest.raises(BirnnError, match="series 0 holds inf or values beyond float32's range"):
        read_ts(tmp_path / "inf.ts")
    (tmp_path / "empty.ts").write_text(head + "1.0,2.0:a\n?:b\n")
    with pytest.raises(BirnnError, match="series 1 has no values"):
        read_ts(tmp_path / "empty.ts")


def test_evaluate_refuses_overrides_that_change_the_model(series_run, tmp_path):
    run_dir, _ = series_run
    ckpt = run_dir / "checkpoints" / "last.pt"
    for override in ("model.readout=mean", "data.normalize=false", "data.vectors=glove.txt"):
        proc = run_cli(str(ckpt), override, cwd=tmp_path, module="birnn.evaluate")
        assert proc.returncode == 2 and "would change the model or its inputs" in proc.stderr, proc.stderr
    with pytest.raises(BirnnError, match="model.hidden_size would change"):
        restore(ckpt, ["model.hidden_size=3"])
    with pytest.raises(BirnnError, match="data.min_freq, data.lowercase would change"):  # the stored tokenizer's
        restore(ckpt, ["data.min_freq=1", "data.lowercase=false", "data.eval_batch_size=8"])


def test_resume_on_changed_data_is_refused(series_run, tmp_path):
    _, data = series_run
    path = save(tmp_path / "d.npz", arrays())
    cfg = make_cfg(
        *FAST, "data=arrays", f"data.path={path}", "data.normalize=true", "trainer.max_steps=2", "trainer.epochs=3"
    )
    train(cfg, tmp_path / "run")
    save(path, arrays(x_train=arrays()["x_train"] * 2))  # the file behind data.path is replaced
    cfg.trainer.max_steps = 4
    with pytest.raises(BirnnError, match=r"the data differs from what it was trained on \(normalization changed"):
        train(cfg, tmp_path / "run")


def test_unusable_last_checkpoint_falls_back_and_stale_temp_files_go(tmp_path, caplog):
    cfg = make_cfg(*FAST, "trainer.epochs=2")
    train(cfg, tmp_path)
    folder = tmp_path / "checkpoints"
    state = checkpoint.load(folder / "last.pt")
    del state["config"]
    write_checkpoint(state, folder / "last.pt")
    with pytest.raises(BirnnError, match="config is missing"):
        checkpoint.load(folder / "last.pt")
    state = checkpoint.load(folder / "previous.pt")
    state["progress"]["from_the_future"] = 1
    checkpoint.save({k: v for k, v in state.items() if k != "format"}, folder, "previous.pt")
    stale = folder / "..last.pt.next.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    with pytest.raises(BirnnError, match="progress fields this birnn does not know"):
        train(make_cfg(*FAST, "trainer.epochs=3"), tmp_path)
    assert not stale.exists()


def test_a_lone_surrogate_class_name_is_refused_at_load(tmp_path, series_run):
    """JSON's "\\ud800" decodes to a lone surrogate: such a label trained, then evaluate, predict and export died
    printing it. Refused where data loads, and where a (crafted) checkpoint's classes are read."""
    bad = "\\ud800"  # as the file spells it
    rows = [f'{{"text": "w{i % 3} x", "label": "{"a" if i % 2 else bad}"}}' for i in range(20)]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(rows) + "\n")
    proc = run_cli(*FAST, "data=text", f"data.path={data}", "trainer.max_steps=1", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: birnn.data.load_text: class 1 is named '\\ud800', which is not valid Unicode text (it holds a lone "
        "surrogate): correct that label"
    ]
    assert not (tmp_path / "outputs").exists()

    run_dir, _ = series_run
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state["data"]["classes"][1] = "\ud800"
    crafted = write_checkpoint(state, tmp_path / "crafted.pt")
    np.save(tmp_path / "x.npy", np.zeros((10, 2), dtype=np.float32))
    proc = run_cli(str(crafted), str(tmp_path / "x.npy"), cwd=tmp_path, module="birnn.predict")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: {crafted}: class 1 is named '\\ud800', which is not valid Unicode text (it holds a lone "
        "surrogate): train it again on valid labels"
    ]
