"""Issue #27's measurements of packs (docs/packed.md, "Measured"): data larger than memory, packed against
in-memory training on Fashion-MNIST, and packing speed. Every packing, training and evaluation runs as a child
process of the real command (``python -m birnn.pack``, ``birnn.train``, ``birnn.evaluate``); wall time and peak
RSS of each child come from the kernel (``os.wait4``). Prints Markdown to paste into docs/packed.md.

    python scripts/packed_bench.py --large --gb 30 --dir /tmp/big   # a pack ~1.25x RAM: 300 steps, kill -9 at 150,
                                                                    # resume, birnn-evaluate the whole test split
    python scripts/packed_bench.py --fashion --rounds 3 --steps 300 # packed vs in memory, alternating, same seed
    python scripts/packed_bench.py --packing --npz-gb 1             # birnn-pack from IDX, .npz and Parquet (MB/s)
    python scripts/packed_bench.py --gb 30 --dir /tmp/big           # all three
    python scripts/packed_bench.py --gb 0.05 --steps 12 --rounds 1 --npz-gb 0.02 --no-drop-cache device.num_threads=1
                                                    # a smoke run of all three (about 1.5 min)

``--large`` writes a synthetic pack of ``(N, 100, 10)`` float32 series with ``birnn.data.packed.PackWriter``
(label: the feature with the largest mean over the steps; the test split ``--test-gb``, at most a fifth), after
checking that it fits on the disk with 5 GB to spare. Running as root it drops the page cache before training
(``--no-drop-cache``: not).
Extra ``key=value`` arguments go to every training run (e.g. ``device.num_threads=2``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from birnn.benchmarks.whole_process import measure
from birnn.data.packed import MANIFEST, PackWriter
from birnn.schema.errors import BirnnError

GB = 1e9
GIB = 2**30
SPARE = 5 * GB  # free disk left after the pack
SHAPE = (100, 10)  # steps, features of the synthetic series
CHUNK = 16384  # samples per generated chunk (64 MB of float32)
LOG_STEP = re.compile(r"Epoch \[(\d+)/\d+\], Step \[(\d+)/(\d+)\]")
RESUMED = re.compile(r"Resuming from \S+: epoch \d+, step (\d+)\.")


def child(work: Path, name: str, *args: str, kill_when=None) -> dict:
    """``python -m *args`` run in ``work``, its output in ``work/name.log``: wall s, peak RSS GiB, killed."""
    m = measure([sys.executable, "-m", *args], work, dict(os.environ), work / f"{name}.log", kill_when)
    return {"wall": m["wall_seconds"], "rss": m["peak_rss_mb"] * 2**20 / GIB, "killed": m["killed"]}


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def x_bytes(pack: Path) -> int:
    """The pack's input bytes (every split's ``x`` file, as the manifest records them)."""
    splits = json.loads((pack / MANIFEST).read_text())["splits"].values()
    return sum(s["x"]["bytes"] for s in splits)


def logged_step(log: Path) -> int:
    """The last global step ``train.log`` names (0 before the first log line)."""
    found = LOG_STEP.findall(log.read_text()) if log.exists() else []
    return (int(found[-1][0]) - 1) * int(found[-1][2]) + int(found[-1][1]) if found else 0


def synthetic(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` series of standard normal noise, a random feature shifted up by 0.25; label: the feature whose
    mean over the steps is largest (the shifted one, mostly)."""
    x = rng.standard_normal((n, *SHAPE), dtype=np.float32)
    x[np.arange(n), :, rng.integers(0, SHAPE[1], n)] += 0.25
    return x, x.mean(axis=1).argmax(axis=1)


def write_synthetic(out: Path, train: int, test: int) -> float:
    """Write the synthetic pack in chunks; seconds spent in the writer (appends and close, SHA-256 included)."""
    rng, spent = np.random.default_rng(0), 0.0
    with PackWriter(out, [f"f{i}" for i in range(SHAPE[1])], overwrite=True) as pack:
        for split, n in (("train", train), ("test", test)):
            for start in range(0, n, CHUNK):
                x, y = synthetic(rng, min(CHUNK, n - start))
                t0 = time.perf_counter()
                pack.split(split).append(x, y)
                spent += time.perf_counter() - t0
        t0 = time.perf_counter()
    return spent + time.perf_counter() - t0  # the with-block's end closed the files and wrote the manifest


def drop_page_cache(wanted: bool) -> str:
    """Drop the page cache (root only) if ``wanted``: what was done, for the report."""
    if not wanted:
        return "not dropped (--no-drop-cache)"
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "dropped before training"
    except OSError as e:
        return f"not dropped ({e.strerror})"


def large(args, overrides: list[str]) -> list[str]:
    """A pack of ``args.gb`` GB: write, train with kill -9 halfway, resume, evaluate."""
    pack = args.dir / "pack"
    per_sample = 4 * SHAPE[0] * SHAPE[1]
    total = int(args.gb * GB) // per_sample
    test = min(int(args.test_gb * GB) // per_sample, total // 5)
    free = shutil.disk_usage(args.dir if args.dir.exists() else args.dir.parent).free
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if total * per_sample + SPARE > free:
        sys.exit(
            f"error: a {args.gb:g} GB pack needs {(total * per_sample + SPARE) / GB:.1f} GB free (5 spare) in "
            f"{args.dir}; {free / GB:.1f} GB are"
        )
    args.dir.mkdir(parents=True, exist_ok=True)
    written = write_synthetic(pack, total - test, test)
    size = x_bytes(pack)
    cache = drop_page_cache(args.drop_cache)
    run_dir = args.dir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    every = args.checkpoint_every or max(1, args.steps // 6)
    run = [
        "birnn.train",
        "data=packed",
        f"data.path={pack}",
        "device=cpu",
        f"trainer.max_steps={args.steps}",
        "trainer.epochs=1000",
        f"trainer.checkpoint_every_n_steps={every}",
        f"trainer.log_every_n_steps={max(1, args.steps // 30)}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    kill_at = args.steps // 2
    killed = child(args.dir, "large_train", *run, kill_when=lambda: logged_step(run_dir / "train.log") >= kill_at)
    killed_step = logged_step(run_dir / "train.log")
    resumed = child(args.dir, "large_resume", *run)
    found = RESUMED.findall((args.dir / "large_resume.log").read_text())
    m = metrics(run_dir)
    evaluated = child(args.dir, "large_evaluate", "birnn.evaluate", str(run_dir / "checkpoints" / "last.pt"))
    scores = json.loads((run_dir / "checkpoints" / "evaluation.json").read_text())
    per_step = m["train_seconds"] / m["steps"]
    lines = [
        f"### A pack larger than memory ({size / GB:.3g} GB, {size / ram:.2f}x this machine's {ram / GIB:.1f} GiB RAM)",
        "",
        f"`(N, {SHAPE[0]}, {SHAPE[1]})` float32: {total - test} training and {test} test series "
        f"({test * per_sample / GB:.3g} GB), written with `PackWriter` at {size / GB * 1000 / written:.0f} MB/s "
        f"({written:.0f} s, SHA-256 included; peak RSS of the writing process "
        f"{peak_self() / GIB:.2f} GiB). Page cache: {cache}. Training: {args.steps} steps, checkpoint every "
        f"{every}, `{' '.join(overrides) or 'defaults'}`.",
        "",
        "| phase | wall s | peak RSS GiB | <= 2 GiB | notes |",
        "| --- | --- | --- | --- | --- |",
        row(
            "train, kill -9",
            killed,
            f"{'killed' if killed['killed'] else 'finished before the kill'} at logged step {killed_step}",
        ),
        row(
            "resume to the end",
            resumed,
            f"resumed from step {found[-1] if found else '?'}; {m['steps']} steps, "
            f"{per_step:.3f} s/step, test accuracy {m['test_accuracy']:.4f}",
        ),
        row("birnn-evaluate", evaluated, f"whole test split: accuracy {scores['test_accuracy']:.4f}"),
        "",
        f"Time per training step (train_seconds / steps of the finished run, checkpoints included): "
        f"{per_step:.3f} s; {m['train_samples_per_second']:.0f} samples/s.",
    ]
    if not args.keep:
        shutil.rmtree(pack)
    return lines


def peak_self() -> int:
    """This process's peak RSS in bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024


def row(phase: str, m: dict, notes: str) -> str:
    return f"| {phase} | {m['wall']:.1f} | {m['rss']:.2f} | {'yes' if m['rss'] <= 2 else 'NO'} | {notes} |"


def fashion(args, overrides: list[str], work: Path) -> list[str]:
    """Fashion-MNIST packed once, then ``args.rounds`` alternating pairs of the same run in memory and packed."""
    pack = work / "fmnist"
    child(work, "fashion_pack", "birnn.pack", str(pack), *args.data)
    base = ["birnn.train", "device=cpu", f"trainer.max_steps={args.steps}", *overrides]
    sides = {"in memory": list(args.data), "packed": ["data=packed", f"data.path={pack}"]}
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            run_dir = work / f"fashion_{r}_{side.replace(' ', '_')}"
            m = child(work, run_dir.name, *base, *sides[side], f"hydra.run.dir={run_dir}")
            runs[side].append({**m, **metrics(run_dir), "weights": run_dir / "checkpoints" / "last.pt"})
    ratios = [p["train_samples_per_second"] / i["train_samples_per_second"] for i, p in zip(*runs.values())]
    same = all(same_run(i, p) for i, p in zip(*runs.values()))
    lines = [
        f"### Packed against in memory ({' '.join(args.data)}, {args.steps} steps, {args.rounds} alternating rounds)",
        "",
        "| round | side | training samples/s | wall s | peak RSS GiB | test accuracy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in range(args.rounds):
        for side, rs in runs.items():
            m = rs[r]
            lines.append(
                f"| {r} | {side} | {m['train_samples_per_second']:.0f} | {m['wall']:.1f} | {m['rss']:.2f} "
                f"| {m['test_accuracy']:.4f} |"
            )
    lines += [
        "",
        f"Median training samples/s packed / in memory: {statistics.median(ratios):.3f} "
        f"({'>=' if statistics.median(ratios) >= 0.9 else '<'} 0.9; per round {' '.join(f'{x:.3f}' for x in ratios)}).",
        f"Test accuracy, test loss and weights bit-identical packed and in memory: {'yes' if same else 'NO'}.",
    ]
    return lines


def same_run(a: dict, b: dict) -> bool:
    """Same test accuracy and loss (exactly) and the same final weights."""
    import torch

    wa, wb = (torch.load(m["weights"], weights_only=True)["model"] for m in (a, b))
    return (
        a["test_accuracy"] == b["test_accuracy"]
        and a["test_loss"] == b["test_loss"]
        and wa.keys() == wb.keys()
        and all(torch.equal(wa[k], wb[k]) for k in wa)
    )


def write_npz(path: Path, gb: float) -> None:
    """About ``gb`` GB of synthetic series, four fifths training, as an uncompressed ``.npz``."""
    n = max(10, int(gb * GB) // (4 * SHAPE[0] * SHAPE[1]))
    x, y = synthetic(np.random.default_rng(1), n)
    cut = n * 4 // 5
    np.savez(path, x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])


def write_parquet(npz: Path, out: Path) -> dict[str, Path]:
    """The ``.npz`` splits as Parquet files, one list column per channel (``c0`` ... ``c9``) and ``label``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = np.load(npz, mmap_mode="r")
    files = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        files[split] = out / f"{split}.parquet"
        with pq.ParquetWriter(files[split], schema(pa)) as writer:
            for i in range(0, len(x), CHUNK):
                xs, n = np.asarray(x[i : i + CHUNK]), len(y[i : i + CHUNK])
                offsets = pa.array(np.arange(n + 1, dtype=np.int32) * SHAPE[0])
                columns = [
                    pa.ListArray.from_arrays(offsets, np.ascontiguousarray(xs[:, :, c]).ravel())
                    for c in range(SHAPE[1])
                ]
                writer.write_batch(pa.record_batch([*columns, pa.array(y[i : i + CHUNK])], schema=schema(pa)))
    return files


def schema(pa):
    return pa.schema([*(pa.field(f"c{c}", pa.list_(pa.float32())) for c in range(SHAPE[1])), ("label", pa.int64())])


def packing(args, work: Path) -> list[str]:
    """``birnn-pack`` from IDX (``args.data``), ``.npz`` and Parquet: MB/s of float32 inputs written."""
    npz = work / "series.npz"
    write_npz(npz, args.npz_gb)
    tables = write_parquet(npz, work)
    sources = {
        f"IDX ({' '.join(args.data)})": list(args.data),
        f".npz ({npz.stat().st_size / GB:.2f} GB file)": ["data=arrays", f"data.path={npz}"],
        f"Parquet ({sum(f.stat().st_size for f in tables.values()) / GB:.2f} GB, a list column per channel)": [
            "--train",
            str(tables["train"]),
            "--test",
            str(tables["test"]),
        ],
    }
    lines = [
        "### Packing speed",
        "",
        "| from | float32 input MB | wall s | MB/s | peak RSS GiB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, (source, how) in enumerate(sources.items()):
        out = work / f"packed_{i}"
        m = child(work, f"packing_{i}", "birnn.pack", str(out), *how)
        size = x_bytes(out) / 1e6
        lines.append(f"| {source} | {size:.0f} | {m['wall']:.1f} | {size / m['wall']:.0f} | {m['rss']:.2f} |")
        shutil.rmtree(out)
    lines += ["", "Wall time of the whole `birnn-pack` process (start-up, reading, checks, writing, SHA-256)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true", help="a pack larger than memory: train, kill -9, resume")
    parser.add_argument("--fashion", action="store_true", help="Fashion-MNIST packed vs in memory, alternating")
    parser.add_argument("--packing", action="store_true", help="birnn-pack from IDX, .npz and Parquet")
    parser.add_argument("--gb", type=float, default=30.0, help="--large: the pack's size in GB (default 30)")
    parser.add_argument("--test-gb", type=float, default=1.5, help="--large: its test split, at most a fifth")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/big"), help="--large: where the pack and run go")
    parser.add_argument(
        "--no-drop-cache", dest="drop_cache", action="store_false", help="--large: keep the page cache (root drops it)"
    )
    parser.add_argument("--keep", action="store_true", help="--large: keep the pack")
    parser.add_argument("--steps", type=int, default=300, help="training steps of --large and --fashion runs")
    parser.add_argument("--checkpoint-every", type=int, help="--large: checkpoint interval (default steps/6)")
    parser.add_argument("--rounds", type=int, default=3, help="--fashion: alternating pairs of runs")
    parser.add_argument("--data", nargs="+", default=["data=fashion_mnist"], help="--fashion/--packing: the IDX data")
    parser.add_argument("--npz-gb", type=float, default=1.0, help="--packing: size of the .npz (and Parquet) data")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="for every training run")
    args = parser.parse_args()
    try:
        report(args)
    except BirnnError as e:
        sys.exit(f"error: {e}")


def report(args) -> None:
    """Run the parts ``args`` selects (all without a flag), printing each one's Markdown as it ends."""
    everything = not (args.large or args.fashion or args.packing)
    print(f"## Measured ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})\n")
    if args.large or everything:
        print("\n".join(large(args, args.overrides)) + "\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="packed-bench-") as tmp:
        if args.fashion or everything:
            print("\n".join(fashion(args, args.overrides, Path(tmp))) + "\n", flush=True)
        if args.packing or everything:
            print("\n".join(packing(args, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
