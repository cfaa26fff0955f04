"""A resume on replaced data of the same shape, count and classes is refused (issue #35, item 4): checkpoints record
a fingerprint of the data's content (a pack's from its manifest's SHA-256s, in-memory data hashed as it loads)."""

from __future__ import annotations

import numpy as np
import pytest
from test_arrays import arrays, save

from birnn.data.arrays import load_arrays
from birnn.data.packed import pack_splits
from birnn.engine import checkpoint
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import FAST, ROOT, make_cfg, run_cli, write_checkpoint

REFUSED = r"the data differs from what it was trained on \(content \(fingerprint\) changed"


def _cfg(*overrides: str, steps: int = 2):
    return make_cfg(*FAST, *overrides, f"trainer.max_steps={steps}", "trainer.epochs=3")


def test_resume_on_an_arrays_file_copied_over_the_path_is_refused(tmp_path):
    path = save(tmp_path / "d.npz", arrays())
    train(_cfg("data=arrays", f"data.path={path}"), tmp_path / "run")
    save(tmp_path / "other.npz", arrays(x_train=arrays()["x_train"] * 2))  # same shape, count and classes
    (tmp_path / "other.npz").replace(path)
    with pytest.raises(BirnnError, match=REFUSED):
        train(_cfg("data=arrays", f"data.path={path}", steps=4), tmp_path / "run")


def test_resume_on_a_repacked_pack_is_refused(tmp_path):
    pack = tmp_path / "pack"
    pack_splits(load_arrays(path=str(save(tmp_path / "a.npz", arrays()))), pack)
    train(_cfg("data=packed", f"data.path={pack}"), tmp_path / "run")
    other = save(tmp_path / "b.npz", arrays(x_train=arrays()["x_train"][::-1].copy()))
    pack_splits(load_arrays(path=str(other)), pack, overwrite=True)
    with pytest.raises(BirnnError, match=REFUSED):
        train(_cfg("data=packed", f"data.path={pack}", steps=4), tmp_path / "run")


def test_checkpoints_without_a_fingerprint_still_resume(tmp_path):
    path = save(tmp_path / "d.npz", arrays())
    train(_cfg("data=arrays", f"data.path={path}"), tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = checkpoint.load(last)
    assert len(state["data"]["fingerprint"]) == 64
    del state["data"]["fingerprint"]  # as written before fingerprints
    write_checkpoint(state, last)
    metrics = train(_cfg("data=arrays", f"data.path={path}", steps=4), tmp_path / "run")
    assert metrics["steps"] == 4
    assert len(checkpoint.load(last)["data"]["fingerprint"]) == 64  # recorded again from here on


def test_a_pack_edited_in_place_is_found_only_by_verify_as_the_docs_say(tmp_path):
    """A pack ``.npy`` changed in place at the same size keeps its manifest's SHA-256s, so the fingerprint (and
    training, resume) cannot see it; docs/packed.md and docs/resuming.md say so and point to ``--verify``."""
    for page in ("packed.md", "resuming.md"):
        text = " ".join((ROOT / "docs" / page).read_text().split())
        assert "only `birnn-pack --verify" in text and "edited in place" in text, page
    pack = tmp_path / "pack"
    pack_splits(load_arrays(path=str(save(tmp_path / "a.npz", arrays()))), pack)
    train(_cfg("data=packed", f"data.path={pack}"), tmp_path / "run")
    with (pack / "train_x.npy").open("r+b") as f:
        f.seek(-4, 2)
        f.write(np.float32(123.0).tobytes())  # the last value changes: same size, shape and dtype
    train(_cfg("data=packed", f"data.path={pack}", steps=4), tmp_path / "run")  # resumes: nothing hashed the file
    proc = run_cli(str(pack), "--verify", cwd=tmp_path, module="birnn.pack")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.endswith("train_x.npy: SHA-256 differs from the manifest's (the file changed)"), proc.stderr
