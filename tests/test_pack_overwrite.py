"""``birnn-pack OUT --overwrite`` replaces only what birnn-pack wrote (issue 35): never a folder that is not a pack,
never a file the pack's manifest does not list, and through a symbolic link the pack it points to."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from birnn.data.packed import MANIFEST, PACKING, PackWriter, verify
from birnn.pack import main

BIN = Path(sys.executable).parent
TABLES = ["--train", "raw/train.csv", "--test", "raw/test.csv"]


def pack(*args: str, cwd: Path, cli: bool = False) -> subprocess.CompletedProcess:
    """``birnn-pack ARGS`` in ``cwd``: the console script as a user types it, or (faster) its ``main`` here."""
    if cli:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run(
            [str(BIN / "birnn-pack"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )
    here, err = os.getcwd(), io.StringIO()
    os.chdir(cwd)
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    return proc.stderr


def project(folder: Path) -> Path:
    """A user's folder with the CSV files to pack under raw/."""
    (folder / "raw").mkdir(parents=True)
    rows = [f"{i % 2},{i},{i + 0.5},{-i}\n" for i in range(12)]
    (folder / "raw" / "train.csv").write_text("label,s0,s1,s2\n" + "".join(rows))
    (folder / "raw" / "test.csv").write_text("label,s0,s1,s2\n" + "".join(rows[:4]))
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_folder_that_is_not_a_pack_is_never_removed(tmp_path, overwrite):
    folder = project(tmp_path / "work")
    (folder / MANIFEST).write_text('{"name": "my project", "version": 1}\n')  # the user's own manifest
    (folder / "NOTES.md").write_text("notes\n")
    before = snapshot(folder)
    line = one_line(pack(".", *TABLES, *overwrite, cwd=folder, cli=True))
    assert "not birnn-pack's" in line and "already holds a pack" not in line
    assert snapshot(folder) == before


def test_a_users_arrays_are_not_taken_for_an_incomplete_pack(tmp_path):
    folder = project(tmp_path / "work")
    np.save(folder / "train_x.npy", np.ones((3, 2), np.float32))  # data=arrays input, not a pack
    before = snapshot(folder)
    line = one_line(pack(".", *TABLES, "--overwrite", cwd=folder))
    assert "holds files and no pack" in line
    assert snapshot(folder) == before


def test_overwrite_replaces_the_files_the_manifest_lists_and_nothing_else(tmp_path):
    folder = project(tmp_path / "work")
    assert pack("out", *TABLES, cwd=folder).returncode == 0
    assert not (folder / "out" / PACKING).exists()
    (folder / "out" / "NOTES.md").write_text("where this pack came from\n")
    assert "already holds a pack;" in one_line(pack("out", *TABLES, cwd=folder))
    proc = pack("out", *TABLES, "--overwrite", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "out" / "NOTES.md").read_text() == "where this pack came from\n"
    assert verify(folder / "out") == 4


def test_an_interrupted_pack_is_incomplete_and_overwrite_replaces_it(tmp_path):
    folder = project(tmp_path / "work")
    with pytest.raises(KeyboardInterrupt), PackWriter(folder / "out", ["a", "b"]) as writer:
        writer.split("train").append(np.zeros((4, 3, 1), np.float32), np.array([0, 1, 0, 1]))
        raise KeyboardInterrupt
    assert not (folder / "out" / MANIFEST).exists() and (folder / "out" / PACKING).exists()
    assert "already holds an incomplete pack" in one_line(pack("out", *TABLES, cwd=folder))
    proc = pack("out", *TABLES, "--overwrite", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert verify(folder / "out") == 4 and not (folder / "out" / PACKING).exists()


def test_a_damaged_birnn_manifest_is_not_overwritten_blindly(tmp_path):
    folder = project(tmp_path / "work")
    assert pack("out", *TABLES, cwd=folder).returncode == 0
    (folder / "out" / MANIFEST).write_text(json.dumps({"format": "birnn-pack", "version": 1}))
    before = snapshot(folder)
    assert "is damaged" in one_line(pack("out", *TABLES, "--overwrite", cwd=folder))
    assert snapshot(folder) == before


def test_overwrite_through_a_symbolic_link_replaces_the_pack_it_points_to(tmp_path):
    folder = project(tmp_path / "work")
    assert pack("real", *TABLES, cwd=folder).returncode == 0
    (folder / "link").symlink_to("real", target_is_directory=True)
    proc = pack("link", *TABLES, "--overwrite", cwd=folder, cli=True)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "link").is_symlink() and verify(folder / "real") == 4
    proc = pack("link", *TABLES, "--overwrite", cwd=folder)  # and again
    assert proc.returncode == 0, proc.stderr
    assert verify(folder / "link") == 4


def test_a_dangling_symbolic_link_is_one_line(tmp_path):
    folder = project(tmp_path / "work")
    (folder / "link").symlink_to("gone", target_is_directory=True)
    assert "link is a symbolic link to gone, which does not exist" in one_line(pack("link", *TABLES, cwd=folder))


def test_a_file_of_the_users_is_never_written_over_by_a_new_split(tmp_path):
    folder = project(tmp_path / "work")
    assert pack("out", *TABLES, cwd=folder).returncode == 0  # no val split
    np.save(folder / "out" / "val_x.npy", np.ones(3))  # the user's, beside the pack
    line = one_line(pack("out", *TABLES, "--val", "raw/test.csv", "--overwrite", cwd=folder))
    assert "val_x.npy is not birnn-pack's" in line
    assert np.load(folder / "out" / "val_x.npy").tolist() == [1, 1, 1]
