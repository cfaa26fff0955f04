"""birnn's default CPU threads against one thread and the old fixed count, on a quiet and on a busy machine.

    python scripts/load_bench.py [--background 0,2] [--load busy|torch] [--rounds 3] [--out load_bench.json]
                                 [overrides ...]

Times ``python -m birnn.train <overrides>`` (default ``data=digits``) as whole processes, for each variant:

- ``default``: no thread setting (birnn's rule: the cores other processes leave free, docs/speed.md);
- ``threads=1``: ``device.num_threads=1``;
- ``old``: ``device.num_threads=<torch's default count>``, what birnn did before the rule (torch's default);

first with no other load, then with N CPU-bound background processes it starts itself (``--background``: one
level per comma; ``--load busy``: Python busy loops, ``--load torch``: torch matmul loops with torch's default
threads, like other training jobs) and stops after that level. The variants alternate in order from round to
round. ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` are removed from every child's environment (they would fix
the count). Prints ``uptime`` before and after, the median wall seconds per variant and level, the threads each
run took (its ``train.log``), the ratios to ``threads=1`` and to ``old``, and writes everything to ``--out``.
The issue's targets (#38): with 2 background processes on 2 cores, default / threads=1 <= 1.3; quiet,
default / old <= 1 (noise aside).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("default", "threads=1", "old")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
LOADS = {
    "busy": "while True: pass",
    "torch": "import torch\na = torch.randn(256, 256)\nwhile True: a @ a",
}


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def torch_default_threads() -> int:
    """The thread count torch picks by itself in a fresh process (what birnn used before the rule)."""
    code = "import torch; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def uptime() -> str:
    if shutil.which("uptime"):
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def start_background(n: int, load: str) -> list[subprocess.Popen]:
    procs = [
        subprocess.Popen([sys.executable, "-c", LOADS[load]], env=child_env(), stdout=subprocess.DEVNULL)
        for _ in range(n)
    ]
    time.sleep(2.0 if n else 0.0)  # running (torch imported) before the first timed run starts
    return procs


def stop_background(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def train_once(overrides: list[str], run_dir: Path) -> dict:
    """One whole ``python -m birnn.train`` process: wall seconds, its threads line(s), its test accuracy."""
    command = [sys.executable, "-m", "birnn.train", *overrides, f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    with subprocess.Popen(command, env=child_env(), **quiet) as proc:
        try:
            stderr = proc.communicate()[1]
        finally:
            proc.kill()  # stopped (Ctrl-C, SIGTERM) before it ended: no training left running
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{stderr[-2000:]}")
    log = (run_dir / "train.log").read_text()
    chosen = re.findall(r"CPU threads: (\d+)(?: -> (\d+))?", log)
    counts = [int(b or a) for a, b in chosen]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"wall_seconds": wall, "threads": counts, "test_accuracy": metrics["test_accuracy"]}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="birnn.train overrides (default: data=digits)")
    parser.add_argument("--background", default="0,2", help="background processes per level (default 0,2)")
    parser.add_argument("--load", choices=sorted(LOADS), default="busy", help="what each background process runs")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant per level (default 3)")
    parser.add_argument("--variants", default="default,threads=1,old", help="which variants (default all three)")
    parser.add_argument("--out", type=Path, default=Path("load_bench.json"))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the background processes are stopped on the way out
    overrides = args.overrides or ["data=digits"]
    levels = [int(n) for n in args.background.split(",")]
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"error: --variants: unknown {', '.join(sorted(unknown))} (choose from {', '.join(VARIANTS)})")
    old = torch_default_threads()
    settings = {"default": [], "threads=1": ["device.num_threads=1"], "old": [f"device.num_threads={old}"]}
    result = {
        "command": " ".join(["python scripts/load_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "overrides": overrides,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_default_threads": old,
        "load": args.load,
        "uptime_before": uptime(),
        "levels": {},
    }
    print(result["uptime_before"], flush=True)
    with tempfile.TemporaryDirectory(prefix="load_bench-") as tmp:
        for n in levels:
            procs = start_background(n, args.load)
            try:
                runs: dict[str, list[dict]] = {v: [] for v in variants}
                for r in range(args.rounds):
                    for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
                        run_dir = Path(tmp) / f"{n}-{v.replace('=', '')}-{r}"  # no '=' in a Hydra override
                        runs[v].append(train_once([*overrides, *settings[v]], run_dir))
                        print(f"background {n}, {v}, round {r}: {runs[v][-1]['wall_seconds']:.1f} s", flush=True)
            finally:
                stop_background(procs)
            result["levels"][str(n)] = {
                "background_pids": [p.pid for p in procs],
                "runs": runs,
                "median_wall_seconds": {v: statistics.median(x["wall_seconds"] for x in runs[v]) for v in variants},
            }
    result["uptime_after"] = uptime()
    print(f"\n{'background':>10} {'variant':>10} {'wall s':>8} {'/ threads=1':>12} {'/ old':>7}  threads (per run)")
    for n, level in result["levels"].items():
        median = level["median_wall_seconds"]
        for v in variants:
            threads = " ".join("/".join(map(str, x["threads"])) for x in level["runs"][v])
            print(
                f"{n:>10} {v:>10} {median[v]:8.1f} {ratio(median[v], median.get('threads=1')):>12} "
                f"{ratio(median[v], median.get('old')):>7}  {threads}"
            )
    print(result["uptime_after"])
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
