"""``python -m birnn.bench --whole-process``: the tutorial script against ``python -m birnn.train``, as whole processes.

Each round runs both as fresh processes, in alternating order, with the same seed (round ``r`` uses
``seed + r``): the tutorial's own code, written out to a temporary file and run with the default allocator
(``MALLOC_*`` and ``LD_PRELOAD`` removed from its environment), and ``python -m birnn.train`` with the given
overrides. Wall, CPU, sys seconds, minor page faults and peak RSS come from the kernel (``wait4``); test
accuracy from the tutorial's last line and birnn's ``metrics.json``. Figures are medians over rounds,
accuracies means over the paired seeds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from birnn.data.pipeline import IDX_FILES, Splits, load_data
from birnn.schema.errors import BirnnError

TUTORIAL = Path(__file__).with_name("tutorial_main.py")  # the tutorial's own script
TUTORIAL_ACCURACY = re.compile(r"Test Accuracy of the model on the 10000 test images: ([0-9.]+) %")
IDX_DATASETS = {"birnn.data.load_mnist": "MNIST", "birnn.data.load_fashion_mnist": "FashionMNIST"}
FIELDS = ("wall_seconds", "cpu_seconds", "sys_seconds", "peak_rss_mb", "minor_faults")


def write_idx(raw: Path, x: Tensor, y: Tensor, prefix: str) -> None:
    """One split as MNIST's IDX files (uint8 images N x steps x features, uint8 labels)."""
    raw.mkdir(parents=True, exist_ok=True)
    images = (x.cpu() * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    n, rows, cols = images.shape
    header = np.array([0x0803, n, rows, cols], dtype=">u4").tobytes()
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
    labels = y.cpu().numpy().astype(np.uint8)
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([0x0801, n], dtype=">u4").tobytes() + labels.tobytes())


def tutorial_data(cfg: DictConfig, splits: Splits, tmp: Path) -> tuple[str, str]:
    """(torchvision dataset class, root) for the tutorial: the IDX files in ``data.root`` for MNIST and
    Fashion-MNIST, else birnn's splits written out as IDX files (image data only; Fashion-MNIST read from
    Debian's ``.gz`` files in place, too)."""
    dataset = IDX_DATASETS.get(cfg.data._target_, "MNIST")
    root = Path(cfg.data.root).resolve()
    if (
        cfg.data._target_ in IDX_DATASETS
        and not cfg.data.val_size
        and all((root / dataset / "raw" / f).is_file() for f in IDX_FILES)
    ):
        return dataset, str(root)
    if splits.kind != "image" or splits.train_lengths is not None or splits.num_classes > 256:
        raise BirnnError(
            f"--whole-process needs fixed-size image data for the tutorial script; "
            f"{cfg.data._target_} gives {splits.kind} data"
        )
    raw = tmp / "data" / dataset / "raw"
    write_idx(raw, splits.train_x, splits.train_y, "train")
    write_idx(raw, splits.test_x, splits.test_y, "t10k")
    return dataset, str(tmp / "data")


def measure(cmd: list[str], cwd: Path, env: dict, log: Path, kill_when: Callable[[], bool] | None = None) -> dict:
    """Run ``cmd`` to completion, or until ``kill_when()`` holds (polled every 5 ms: then SIGKILL, and
    ``killed`` is True); its wall time and the kernel's account of its resources."""
    killed = False
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        pid, status, usage = os.wait4(proc.pid, 0 if kill_when is None else os.WNOHANG)
        while not pid:
            if kill_when():
                proc.send_signal(signal.SIGKILL)
                killed = True
                pid, status, usage = os.wait4(proc.pid, 0)
            else:
                time.sleep(0.005)
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not (killed and code == -signal.SIGKILL):
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        raise BirnnError(f"{' '.join(cmd[:3])} ... failed (exit {code}): {tail[0]}")
    return {
        "wall_seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "sys_seconds": usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "minor_faults": usage.ru_minflt,
        "killed": killed,
    }


def run_whole_process(cfg: DictConfig, overrides: list[str], rounds: int, epochs: int | None) -> dict:
    """``rounds`` alternating pairs of whole-process runs; medians, paired accuracies and ratios."""
    splits = load_data(cfg.data, torch.device("cpu"))
    steps, features = splits.train_x.shape[1:]
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    runs: dict[str, list[dict]] = {"tutorial": [], "birnn": []}
    with tempfile.TemporaryDirectory(prefix="birnn-bench-") as tmp_name:
        tmp = Path(tmp_name)
        dataset, root = tutorial_data(cfg, splits, tmp)
        load = {"before": os.getloadavg()}
        for r in range(rounds):
            seed = cfg.seed + r
            tutorial = [
                sys.executable,
                str(TUTORIAL),
                *map(str, (seed, steps, features, splits.num_classes, epochs or 2)),
                dataset,
                root,
            ]
            run_dir = tmp / f"birnn_{r}"
            ours = [
                sys.executable,
                "-m",
                "birnn.train",
                *overrides,
                f"seed={seed}",
                f"hydra.run.dir={run_dir}",
                *([f"trainer.epochs={epochs}"] if epochs else []),
            ]
            for side in ("tutorial", "birnn") if r % 2 == 0 else ("birnn", "tutorial"):
                if side == "tutorial":
                    m = measure(tutorial, tmp, clean_env, tmp / f"tutorial_{r}.log")
                    m["accuracy"] = float(TUTORIAL_ACCURACY.findall((tmp / f"tutorial_{r}.log").read_text())[-1]) / 100
                else:
                    m = measure(ours, Path.cwd(), dict(os.environ), tmp / f"birnn_{r}.log")
                    m["accuracy"] = json.loads((run_dir / "metrics.json").read_text())["test_accuracy"]
                runs[side].append({"seed": seed, **m})
        load["after"] = os.getloadavg()
    summary = {
        side: {
            **{f: statistics.median(run[f] for run in rs) for f in FIELDS},
            "accuracy": statistics.mean(run["accuracy"] for run in rs),
        }
        for side, rs in runs.items()
    }
    diffs = [o["accuracy"] - t["accuracy"] for o, t in zip(runs["birnn"], runs["tutorial"])]
    t, o = summary["tutorial"], summary["birnn"]
    return {
        "rounds": rounds,
        "seeds": [cfg.seed + r for r in range(rounds)],
        "load_average": load,
        "median": summary,
        "runs": runs,
        "ratios": {
            "wall": t["wall_seconds"] / o["wall_seconds"],
            "cpu": t["cpu_seconds"] / o["cpu_seconds"],
            "sys": t["sys_seconds"] / o["sys_seconds"] if o["sys_seconds"] else None,
            "peak_rss": o["peak_rss_mb"] / t["peak_rss_mb"],
        },
        "accuracy_difference": {
            "per_seed": diffs,
            "mean": statistics.mean(diffs),
            "std": statistics.stdev(diffs) if len(diffs) > 1 else None,
        },
    }


def summary_lines(result: dict) -> list[str]:
    """The table and the last line printed for a whole-process benchmark."""
    med, ratios, diff = result["median"], result["ratios"], result["accuracy_difference"]
    lines = [
        f"{'median of ' + str(result['rounds']):16} {'wall s':>8} {'CPU s':>8} {'sys s':>7} "
        f"{'peak RSS MB':>12} {'minor faults':>13} {'test accuracy':>14}"
    ]
    for side in ("tutorial", "birnn"):
        m = med[side]
        lines.append(
            f"{side:16} {m['wall_seconds']:8.1f} {m['cpu_seconds']:8.1f} {m['sys_seconds']:7.1f} "
            f"{m['peak_rss_mb']:12.0f} {m['minor_faults']:13.0f} {m['accuracy']:14.4f}"
        )
    sys_ratio = "n/a" if ratios["sys"] is None else f"{ratios['sys']:.2f}x"
    lines.append(
        f"{'tutorial/birnn':16} {ratios['wall']:7.2f}x {ratios['cpu']:7.2f}x {sys_ratio:>7} "
        f"{ratios['peak_rss']:11.2f}x {'':>13} {100 * diff['mean']:+11.2f} pt"
    )
    spread = "" if diff["std"] is None else f", std {100 * diff['std']:.2f} pt"
    per_seed = " ".join(f"{100 * d:+.2f}" for d in diff["per_seed"])
    lines.append(
        f"accuracy birnn - tutorial per seed {result['seeds']}: {per_seed} pt{spread}  "
        f"(peak RSS ratio is birnn/tutorial)"
    )
    lines.append(
        f"load average before {result['load_average']['before'][0]:.2f}, after {result['load_average']['after'][0]:.2f}"
    )
    lines.append(
        f"speedup whole_process={ratios['wall']:.2f} "
        f"accuracy={med['birnn']['accuracy']:.4f}/{med['tutorial']['accuracy']:.4f}"
    )
    return lines
