"""Shared helpers: in-process config composition, tiny IDX datasets, and real CLI runs."""

from __future__ import annotations

import gzip
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import birnn.schema.config  # noqa: F401  (registers the structured-config schemas)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# Small, fast and single-threaded: the suite shares 2 cores.
# metrics.json fields that depend on the wall clock: left out where two runs must agree exactly
WALL_CLOCK = {"train_seconds", "train_samples_per_second", "train_tokens_per_second"}
FAST = ["data=digits", "device=cpu", "device.num_threads=1", "model.hidden_size=16", "trainer.log_images=false"]
# task=regression on the TSER problem bundled in aeon (Covid3Month: 140 train / 61 test series of 84 steps)
VALUES = [
    "task=regression",
    "data=uea",
    "data.name=Covid3Month",
    "data.batch_size=10",
    "device=cpu",
    "device.num_threads=1",
    "model.hidden_size=16",
    "trainer.log_images=false",
]


def make_cfg(*overrides: str) -> DictConfig:
    """Compose the real config tree in-process, as ``python -m birnn.train`` would."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides))


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str, gz: bool = False) -> None:
    """Write one split in the IDX format MNIST ships in (uint8 images N x 28 x 28, uint8 labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = images.shape
    blobs = {
        f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x0803, n, rows, cols) + images.astype(np.uint8).tobytes(),
        f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x0801, n) + labels.astype(np.uint8).tobytes(),
    }
    for name, blob in blobs.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)


def tiny_idx_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose label is the row of a bright horizontal bar (learnable, 28x28)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    """A data.root holding a tiny MNIST in torchvision's layout (<root>/MNIST/raw/)."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    write_idx(raw, *tiny_idx_images(300, 0), "train")
    write_idx(raw, *tiny_idx_images(100, 1), "t10k")
    return tmp_path / "data"


def wait_for(ready: Callable[[], bool], timeout: float = 120) -> None:
    """Poll ``ready()`` every 2 ms until it holds or ``timeout`` seconds pass (a subprocess reaching a point)."""
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.002)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on (for a throwaway server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, cwd: Path, timeout: int = 240, module: str = "birnn.train") -> subprocess.CompletedProcess:
    """Run a birnn command line in a subprocess (the real entry point)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def write_checkpoint(state: dict, path: Path) -> Path:
    """Write ``state`` (a loaded checkpoint, changed by a test) as-is with a valid checksum, rotating nothing."""
    from birnn.engine import checkpoint

    content = {"format": checkpoint.FORMAT, **{k: v for k, v in state.items() if k not in ("format", "checksum")}}
    torch.save({**content, "checksum": checkpoint.digest(content)}, path)
    return path


PEAK = """import atexit, runpy, sys
def peak(path):
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(path, "w") as out:
        out.write(str(kb))
atexit.register(peak, sys.argv.pop(1))
runpy.run_module("birnn.train", run_name="__main__")
"""


def peak_rss(tmp_path: Path, name: str, *overrides: str) -> int:
    """Peak resident memory (VmHWM, bytes) of ``python -m birnn.train *overrides`` run in ``tmp_path/name``."""
    (tmp_path / "peak.py").write_text(PEAK)
    out = tmp_path / f"{name}.peak"
    proc = run_cli(str(out), *overrides, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path, module="peak")
    assert proc.returncode == 0, proc.stderr
    return int(out.read_text()) * 1024
