"""How many CPU threads torch uses: the user's number, a parallel launcher's share, else the free cores.

Why: torch's intra-op threads are OpenMP threads (GNU libgomp in the PyPI wheels) that meet at a barrier
after every parallel region, thousands of times per training step. When another process holds one of the
cores, the kernel deschedules one of them for a time slice and the others wait for it (spinning, at
first: libgomp's default ``GOMP_SPINCOUNT`` busy-waits before it sleeps), so every region costs a
scheduling delay instead of microseconds. On 2 busy cores a 2-thread step ran 10-20x slower than a 1-thread
one; a single thread has no barrier to wait at. Hence the rule (docs/speed.md), first that applies:

1. ``device.num_threads``: that many threads, for the whole run.
2. ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment (set by you, by torchrun, by a joblib
   worker): torch follows it and birnn changes nothing. A value that is no thread count (``0``, ``abc``) or
   beyond ``MAX_THREADS`` (``99999``) gets one warning and counts as unset.
3. ``hydra/launcher=joblib``: the cores shared evenly by its parallel jobs.
4. Otherwise the cores other processes leave free: at most torch's own default, at least 1, measured from
   ``/proc/stat`` since the command started (``begin``) and again every ``CHECK_S`` seconds of training
   (``refit``), so a run gives cores back when others start and takes them again when they stop.

birnn sets no OpenMP variable: ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` and the like are yours to set.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig

from birnn.schema.config import MAX_THREADS

log = logging.getLogger(__name__)

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # what torch reads for its thread count at start
CHECK_S = 5.0  # seconds of training between two measurements of the free cores
SLACK = 0.3  # cores' worth of other processes' use that still counts as a free core (shells, daemons)
MIN_WINDOW_S = 0.2  # shortest first measurement (when ``begin`` was not called, or just before)
TORCH_DEFAULT = torch.get_num_threads()  # torch's own choice, before birnn sets any


@dataclass(frozen=True)
class Sample:
    """CPU counters at one moment: wall clock, this process's CPU seconds, the allowed cores' busy seconds."""

    wall: float
    own: float
    busy: float


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def quota_cores(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cores a cgroup v2 CPU quota allows (``cpu.max``, rounded up), or None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


def sample(cpus: list[int], stat: Path = Path("/proc/stat")) -> Sample | None:
    """Counters now, or None where ``/proc/stat`` cannot be read (not Linux)."""
    wall, own = time.monotonic(), time.process_time()
    wanted = {f"cpu{c}" for c in cpus}
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name in wanted:
            # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy
            values = [int(v) for v in fields[:8]]
            ticks += sum(values) - values[3] - values[4]
    return Sample(wall, own, ticks / os.sysconf("SC_CLK_TCK"))


def others_use(before: Sample, after: Sample) -> float:
    """Cores' worth of CPU time that other processes used on the allowed cores between two samples."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall


def fit(budget: int, cpus: int, others: float) -> int:
    """Threads for the cores others leave free: ``cpus - others``, ``SLACK`` forgiven, within 1..``budget``."""
    return max(1, min(budget, math.floor(cpus - others + SLACK)))


def user_threads(environ: Mapping[str, str] = os.environ) -> tuple[str, int] | None:
    """The first of ``ENV_VARS`` set in ``environ`` to a thread count in 1..``MAX_THREADS``, and that count (of an
    OpenMP list such as ``4,2``, its first level)."""
    for var in ENV_VARS:
        value = environ.get(var, "").split(",")[0].strip()
        if value.isdigit() and 0 < int(value) <= MAX_THREADS:
            return var, int(value)
    return None


def ignored(environ: Mapping[str, str] = os.environ) -> list[str]:
    """One warning for each of ``ENV_VARS`` set to what ``user_threads`` does not take: not a whole number >= 1
    (``0``, ``abc``: OpenMP ignores it too) or more than ``MAX_THREADS`` (``99999`` threads would each wait at
    every barrier); birnn then chooses as if it were unset."""
    warnings = []
    for var in ENV_VARS:
        raw = environ.get(var, "").strip()
        value = raw.split(",")[0].strip()
        if raw and not (value.isdigit() and 0 < int(value) <= MAX_THREADS):
            why = (
                f"more than {MAX_THREADS} threads (4 x this machine's cores)"
                if value.isdigit() and int(value) > 0
                else "not a thread count (a whole number >= 1)"
            )
            warnings.append(
                f"{var}={raw!r} is {why}: ignored; birnn chooses the threads as without it "
                "(device.num_threads=N sets them)"
            )
    return warnings


def threads_per_job() -> tuple[str, int] | None:
    """Under the joblib launcher: how it runs and the CPU cores shared evenly by its parallel jobs (n_jobs=-1:
    one per core), as joblib itself gives each worker (``OMP_NUM_THREADS``); None under any other launcher."""
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    if not str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
        return None
    import joblib

    cores, n_jobs = joblib.cpu_count(), launcher.n_jobs
    jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib's rule: -1 = all cores, -2 = all but one
    return f"joblib launcher with n_jobs={n_jobs} on {cores} cores", max(1, cores // jobs)


class FreeCores:
    """Rule 4: keeps torch's thread count at the cores other processes leave free, re-measured every ``CHECK_S``."""

    def __init__(self, since: Sample | None):
        self.cpus = allowed_cpus()
        self.budget = max(1, min(TORCH_DEFAULT, len(self.cpus), quota_cores() or len(self.cpus)))
        if since is None:
            since = sample(self.cpus)
        if since is not None:  # a reading over less than MIN_WINDOW_S would be mostly rounding
            time.sleep(max(0.0, MIN_WINDOW_S - (time.monotonic() - since.wall)))
        self.last = since
        self.threads = self.measure() or self.budget
        torch.set_num_threads(self.threads)

    def measure(self) -> int | None:
        """Threads that fit now (None without counters); starts the next measurement window."""
        now = sample(self.cpus)
        if now is None or self.last is None:
            return None
        self.others = others_use(self.last, now)
        self.last = now
        return fit(self.budget, len(self.cpus), self.others)

    def describe(self) -> str:
        if self.last is None:
            return f"CPU threads: {self.threads} (torch's default; no /proc/stat to see other processes' use)"
        return (
            f"CPU threads: {self.threads} of {self.budget} (other processes are using {self.others:.1f} of "
            f"{len(self.cpus)} cores; checked every {CHECK_S:g} s; device.num_threads=N fixes the count)"
        )

    def refit(self) -> None:
        if self.last is None or time.monotonic() - self.last.wall < CHECK_S:
            return
        threads = self.measure()
        if threads is not None and threads != self.threads:
            log.info(
                "CPU threads: %d -> %d (other processes are using %.1f of %d cores)",
                self.threads,
                threads,
                self.others,
                len(self.cpus),
            )
            self.threads = threads
            torch.set_num_threads(threads)


_started: Sample | None = None  # set by ``begin``: the start of the first measurement window
_free: FreeCores | None = None  # rule 4's state, when it applies


def begin() -> None:
    """Every command calls this first: the free cores are measured from here to ``setup`` (Python, Hydra and the
    config take long enough for a clean reading, so no run waits for one)."""
    global _started
    _started = sample(allowed_cpus())


def setup(num_threads: int | None) -> str:
    """Apply the rule (module docstring) for ``device.num_threads``; return the line that says what it chose."""
    global _free
    since, _free = (_free.last if _free else None) or _started, None
    if num_threads:
        torch.set_num_threads(num_threads)
        return f"CPU threads: {num_threads} (device.num_threads)"
    for warning in ignored():
        log.warning(warning)
    env, share = user_threads(), threads_per_job()
    if share is not None:  # joblib hands its share to each worker as OMP_NUM_THREADS unless you set that yourself
        how, threads = share
        if env is not None and env[1] != threads:
            how, threads = f"{how} ({env[0]}={env[1]} in the environment)", env[1]
        torch.set_num_threads(threads)
        return f"{how}: {threads} torch threads per job"
    if env is not None:  # what torch took at start; set again in case an earlier run in this process changed it
        torch.set_num_threads(env[1])
        return f"CPU threads: {env[1]} ({env[0]}={env[1]} in the environment)"
    _free = FreeCores(since)
    return _free.describe()


def refit() -> None:
    """Under rule 4, follow the free cores (cheap: measures at most every ``CHECK_S`` seconds); else nothing."""
    if _free is not None:
        _free.refit()
