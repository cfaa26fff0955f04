"""The thread rule (birnn/system/threads.py, docs/speed.md): the user's setting, a launcher's share, else the cores
other processes leave free, followed as the run goes. No timings: the load is simulated through the counters."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import joblib
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from birnn.system import threads
from birnn.system.device import setup_device
from conftest import CONF, FAST, ROOT, make_cfg

CORES = joblib.cpu_count()
OPENMP = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000", "OMP_PROC_BIND": "false"}


@pytest.fixture(autouse=True)
def keep_torch_threads(monkeypatch):
    """Each test starts from no thread settings and leaves torch's count as it found it."""
    before = torch.get_num_threads()
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "_started", None)  # no reading left from an earlier test
    monkeypatch.setattr(threads, "_free", None)
    yield
    threads.setup(before)
    torch.set_num_threads(before)


class FakeMachine:
    """``threads.sample`` for a machine of ``cpus`` cores where other processes use ``others`` cores."""

    def __init__(self, monkeypatch, cpus: int = 2, others: float = 0.0):
        self.wall, self.busy, self.cpus, self.others = 100.0, 0.0, cpus, others
        monkeypatch.setattr(threads, "allowed_cpus", lambda: list(range(cpus)))
        monkeypatch.setattr(threads, "quota_cores", lambda: None)
        monkeypatch.setattr(threads, "TORCH_DEFAULT", cpus)
        monkeypatch.setattr(threads, "sample", lambda _cpus: threads.Sample(self.wall, 0.0, self.busy))
        monkeypatch.setattr(threads, "time", SimpleNamespace(monotonic=lambda: self.wall, sleep=self.run))

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.busy += self.others * seconds


def test_fit_leaves_other_processes_their_cores():
    assert threads.fit(budget=2, cpus=2, others=0.0) == 2
    assert threads.fit(budget=2, cpus=2, others=0.25) == 2  # a shell, a daemon: still free
    assert threads.fit(budget=2, cpus=2, others=0.5) == 1
    assert threads.fit(budget=2, cpus=2, others=2.0) == 1  # two busy processes: one thread, never zero
    assert threads.fit(budget=16, cpus=16, others=4.0) == 12
    assert threads.fit(budget=8, cpus=16, others=0.0) == 8  # never above torch's own default


def test_others_use_subtracts_this_process(tmp_path):
    stat = tmp_path / "stat"
    tick = os.sysconf("SC_CLK_TCK")
    stat.write_text(
        f"cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 {tick} 0 0 {5 * tick} {tick} 0 0 0 0 0\ncpu1 0 0 {3 * tick} 0 0 0 0 0 0 0\n"
        f"cpu2 {50 * tick} 0 0 0 0 0 0 0 0 0\nintr 1 2 3\n"
    )
    before = threads.sample([0, 1], stat)
    assert before.busy == 4.0  # cpu0: 1 s user (idle and iowait are not busy), cpu1: 3 s system; cpu2 not ours
    after = threads.Sample(before.wall + 2.0, before.own + 1.0, before.busy + 3.0)
    assert threads.others_use(before, after) == 1.0  # 3 busy seconds in 2 s, 1 of them ours


def test_quota_cores_reads_cgroup_v2(tmp_path):
    assert threads.quota_cores(tmp_path) is None
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.quota_cores(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.quota_cores(tmp_path) == 2


def test_free_cores_on_a_quiet_machine_are_torchs_default(monkeypatch, caplog):
    machine = FakeMachine(monkeypatch, cpus=2, others=0.0)
    threads.begin()
    machine.run(1.0)
    line = threads.setup(None)
    assert torch.get_num_threads() == 2
    assert line.startswith("CPU threads: 2 of 2 (other processes are using 0.0 of 2 cores")


def test_busy_cores_leave_one_thread_and_the_run_follows_the_load(monkeypatch, caplog):
    machine = FakeMachine(monkeypatch, cpus=2, others=1.9)  # two CPU-bound processes started before the run
    threads.begin()
    machine.run(1.0)
    assert threads.setup(None).startswith("CPU threads: 1 of 2 (other processes are using 1.9 of 2 cores")
    assert torch.get_num_threads() == 1
    machine.others = 0.0  # they finished
    machine.run(threads.CHECK_S / 2)
    threads.refit()
    assert torch.get_num_threads() == 1  # not measured again yet
    machine.run(threads.CHECK_S / 2)
    with caplog.at_level(logging.INFO, logger="birnn.system.threads"):
        threads.refit()
    assert torch.get_num_threads() == 2
    assert "CPU threads: 1 -> 2 (other processes are using 0.0 of 2 cores)" in caplog.text
    machine.others = 1.0  # another search worker or training started beside this one
    machine.run(threads.CHECK_S)
    threads.refit()
    assert torch.get_num_threads() == 1


def test_without_begin_the_first_reading_takes_a_moment(monkeypatch):
    machine = FakeMachine(monkeypatch, cpus=2, others=2.0)
    monkeypatch.setattr(threads, "_started", None)
    threads.setup(None)
    assert torch.get_num_threads() == 1 and machine.wall == 100.0 + threads.MIN_WINDOW_S


def test_device_num_threads_is_kept_whatever_the_load(monkeypatch):
    machine = FakeMachine(monkeypatch, cpus=2, others=2.0)
    threads.begin()
    machine.run(1.0)
    assert threads.setup(2) == "CPU threads: 2 (device.num_threads)"
    machine.run(threads.CHECK_S * 2)
    threads.refit()
    assert torch.get_num_threads() == 2


def test_omp_num_threads_and_openmp_variables_are_the_users(monkeypatch):
    machine = FakeMachine(monkeypatch, cpus=2, others=2.0)
    for var, value in {**OPENMP, "OMP_NUM_THREADS": "2"}.items():
        monkeypatch.setenv(var, value)
    environ = dict(os.environ)
    torch.set_num_threads(2)  # what torch does at start under OMP_NUM_THREADS=2
    threads.begin()
    machine.run(1.0)
    assert threads.setup(None) == "CPU threads: 2 (OMP_NUM_THREADS=2 in the environment)"
    machine.run(threads.CHECK_S * 2)
    threads.refit()
    assert torch.get_num_threads() == 2
    assert dict(os.environ) == environ  # birnn sets no variable of its own


def test_joblib_jobs_split_the_cores_and_keep_the_users_variable(monkeypatch):
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose("config", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        share = max(1, CORES // 2)
        assert threads.setup(None) == f"joblib launcher with n_jobs=2 on {CORES} cores: {share} torch threads per job"
        assert torch.get_num_threads() == share
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the parent's, which joblib hands its workers as it is
        assert threads.setup(None) == (
            f"joblib launcher with n_jobs=2 on {CORES} cores (OMP_NUM_THREADS=3 in the environment): "
            "3 torch threads per job"
        )
        assert torch.get_num_threads() == 3
    finally:
        HydraConfig.instance().cfg = None


def test_setup_device_applies_the_rule(monkeypatch, caplog):
    FakeMachine(monkeypatch, cpus=2, others=2.0)
    with caplog.at_level(logging.INFO, logger="birnn.system.device"):
        setup_device(make_cfg("device=cpu").device)
    assert torch.get_num_threads() == 1
    assert "CPU threads: 1 of 2 (other processes are using" in caplog.text


def test_train_says_how_many_threads_it_took(tmp_path):
    """As a user types it: without device.num_threads or OMP_NUM_THREADS, the log says what birnn chose."""
    env = {k: v for k, v in os.environ.items() if k not in threads.ENV_VARS} | {"PYTHONPATH": str(ROOT)}
    args = [a for a in FAST if not a.startswith("device.num_threads")]
    command = [sys.executable, "-m", "birnn.train", *args, "trainer.max_steps=2", "hydra.run.dir=run"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert "CPU threads: " in log and "other processes are using" in log, log


@pytest.mark.parametrize("value, why", [("99999", "more than"), ("0", "not a thread count"), ("abc", "not a thread")])
def test_an_absurd_or_invalid_omp_num_threads_is_one_warning_and_counts_as_unset(monkeypatch, caplog, value, why):
    """OMP_NUM_THREADS=99999 was taken silently (torch.set_num_threads(99999): that many threads at every parallel
    region); 0 or abc were passed over without a word from birnn."""
    machine = FakeMachine(monkeypatch, cpus=2, others=0.0)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    threads.begin()
    machine.run(1.0)
    with caplog.at_level(logging.WARNING, logger="birnn.system.threads"):
        line = threads.setup(None)
    taken = torch.get_num_threads()
    torch.set_num_threads(1)  # never leave an absurd count behind, whatever happened
    assert taken == 2 and line.startswith("CPU threads: 2 of 2"), line
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"OMP_NUM_THREADS={value!r} is {why}") and "ignored" in warnings[0], warnings


def test_an_openmp_list_counts_its_first_level(monkeypatch):
    FakeMachine(monkeypatch, cpus=2, others=2.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "1,2")
    assert threads.setup(None) == "CPU threads: 1 (OMP_NUM_THREADS=1 in the environment)"
