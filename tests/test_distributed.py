"""One run on several processes: torchrun (gloo, 2 CPU processes) and submitit_local, on tiny data.

Every launch costs ~5-10 s of process start-up, so each run serves several assertions: the uninterrupted
2-process run is the reference for the single-process math, the one-run-dir rule and the kill -9 restart.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from birnn.data.pipeline import load_data, shuffled_batches
from birnn.schema.errors import BirnnError
from birnn.system.distributed import Dist
from birnn.train import train
from conftest import FAST, ROOT, VALUES, WALL_CLOCK, free_port, make_cfg, run_cli, wait_for

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# 1,438 digits less one held out = 1,437 training samples in global batches of 100: the last batch (37) splits
# 19/18 between two processes, so the unequal-share loss scaling runs end to end.
RUN = [
    *FAST,
    "data.val_size=1",
    "trainer.epochs=4",
    "trainer.checkpoint_every_n_steps=7",
    "trainer.log_every_n_steps=5",
]


def torchrun(*args: str, cwd: Path, nproc: int = 2, restarts: int = 0, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            TORCHRUN,
            "--standalone",
            f"--nproc_per_node={nproc}",
            f"--max-restarts={restarts}",
            "-m",
            "birnn.train",
            *args,
        ],
        cwd=cwd,
        env=env,
        text=True,
        **popen,
    )


def finished(proc: subprocess.Popen, timeout: int = 180) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out or "", err or ""


def run_dirs(cwd: Path) -> list[Path]:
    """Every run dir under ``cwd/outputs`` (a folder holding a ``.hydra`` record or checkpoints)."""
    found = {p.parent for p in (cwd / "outputs").rglob("*") if p.name in (".hydra", "checkpoints")}
    return sorted(found)


def metrics_of(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in WALL_CLOCK}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """The reference: an uninterrupted 2-process run started without hydra.run.dir."""
    cwd = tmp_path_factory.mktemp("ddp")
    rc, out, err = finished(torchrun(*RUN, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    assert rc == 0, err
    (run_dir,) = run_dirs(cwd)
    return run_dir


def test_two_processes_do_the_single_process_math(two_process_run, tmp_path):
    cfg = make_cfg(*RUN)
    last_batch = len(load_data(cfg.data, torch.device("cpu")).train_y) % cfg.data.batch_size
    assert last_batch % 2 == 1  # an uneven split of the last batch over the two processes
    single = train(cfg, tmp_path)
    ddp = torch.load(two_process_run / "checkpoints" / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ddp["world_size"] == 2 and len(ddp["rng"]["ranks"]) == 2
    for name, weight in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], weight, atol=1e-5, rtol=0, msg=name)
    metrics = metrics_of(two_process_run)
    assert metrics["world_size"] == 2 and metrics["steps"] == single["steps"] == 60
    assert metrics["test_accuracy"] == single["test_accuracy"]  # sharded evaluation: exactly
    assert metrics["test_loss"] == pytest.approx(single["test_loss"], abs=1e-5)


def test_two_processes_do_the_single_process_math_for_values(tmp_path):
    """task=regression (issue #36): 119 training series in global batches of 10, the last (9) split 5/4."""
    pytest.importorskip("aeon")
    run = [*VALUES, "data.val_size=21", "trainer.epochs=2", "tracker=none"]
    ddp_dir = tmp_path / "ddp"
    rc, _, err = finished(torchrun(*run, f"hydra.run.dir={ddp_dir}", cwd=tmp_path, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE))  # fmt: skip
    assert rc == 0, err
    single = train(make_cfg(*run), tmp_path / "one")
    ddp = torch.load(ddp_dir / "checkpoints" / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)
    assert ddp["world_size"] == 2 and ddp["data"]["values"] == one["data"]["values"]
    for name, weight in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], weight, atol=1e-5, rtol=0, msg=name)
    metrics = metrics_of(ddp_dir)
    assert metrics["steps"] == single["steps"] == 24
    for key in ("test_rmse", "test_mae", "best_val_rmse", "test_baseline_rmse", "test_median_rmse"):
        assert metrics[key] == pytest.approx(single[key], rel=1e-4), key


def test_a_distributed_run_has_one_run_dir_written_by_rank_0(two_process_run):
    cwd = two_process_run.parents[2]
    assert run_dirs(cwd) == [two_process_run]
    assert sorted(p.name for p in (two_process_run / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    log = (two_process_run / "train.log").read_text()
    assert log.count("Epoch 4: test_loss") == 1 and "x 2 processes" in log
    events = list(two_process_run.glob("events.out.tfevents.*"))
    assert events and len({p.name.split(".")[4] for p in events}) == 1  # one writer process (the pid)
    assert {p.name for p in (two_process_run / "checkpoints").iterdir()} == {"last.pt", "previous.pt", "best.pt"}


@pytest.mark.slow
def test_kill_9_of_a_worker_restarts_the_group_in_the_same_run_dir(two_process_run, tmp_path):
    proc = torchrun(*RUN, cwd=tmp_path, restarts=1, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: list((tmp_path / "outputs").rglob("last.pt")))
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(workers[-1]), signal.SIGKILL)
    rc, _, err = finished(proc)
    assert rc == 0, err
    (run_dir,) = run_dirs(tmp_path)
    assert "Resuming from" in (run_dir / "train.log").read_text()
    assert metrics_of(run_dir) == metrics_of(two_process_run)


@pytest.mark.slow
def test_sigterm_stops_every_rank_at_one_step_and_the_run_resumes_on_one_process(tmp_path):
    run_dir = tmp_path / "run"
    proc = torchrun(
        *RUN,
        "trainer.epochs=1000",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists())
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    rc, _, err = finished(proc, timeout=60)
    assert rc != 0
    log = (run_dir / "train.log").read_text()
    assert "Stopped by SIGTERM" in log, err
    stopped = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["progress"]["global_step"]
    assert f"Stopped by SIGTERM at step {stopped};" in log

    proc = run_cli(*RUN, f"trainer.max_steps={stopped + 5}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Resuming a 2-process run with 1 processes" in (run_dir / "train.log").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 1 and metrics["steps"] == stopped + 5
    assert not (tmp_path / "outputs").exists() and (run_dir / ".hydra" / "resume-1").is_dir()


def two_nodes(*args: str, cwds: list[Path], rdzv_id: str) -> list[subprocess.Popen]:
    """Two torchrun "machines" on this one: ``--nnodes=2 --nproc_per_node=1`` each, started in its own working dir
    (``cwds``, in that order), meeting at a c10d rendezvous on 127.0.0.1. c10d ranks the agents by host, then pid:
    the first started is rank 0. Each node's stderr goes to ``<its cwd>/stderr.txt``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    port = free_port()
    nodes = []
    for cwd in cwds:
        cwd.mkdir(parents=True, exist_ok=True)
        command = [
            TORCHRUN,
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id={rdzv_id}",
            "-m",
            "birnn.train",
            *args,
        ]
        with open(cwd / "stderr.txt", "w") as err:
            nodes.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err))
    return nodes


def ended(nodes: list[subprocess.Popen]) -> list[int]:
    return [node.wait(timeout=300) for node in nodes]


def stderr_of(*cwds: Path) -> str:
    return "\n".join((cwd / "stderr.txt").read_text()[-2000:] for cwd in cwds)


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory) -> Path:
    """An uninterrupted run on two torchrun nodes, each in its own working dir, started without hydra.run.dir."""
    a, b = (tmp_path_factory.mktemp("nodes") / name for name in "ab")
    assert ended(two_nodes(*RUN, cwds=[a, b], rdzv_id=uuid.uuid4().hex)) == [0, 0], stderr_of(a, b)
    (run_dir,) = run_dirs(a)
    assert run_dirs(b) == []  # rank 1 writes no run dir of its own
    return run_dir


@pytest.mark.slow
def test_two_nodes_do_the_single_process_math(two_node_run, tmp_path):
    single = train(make_cfg(*RUN), tmp_path)
    nodes = torch.load(two_node_run / "checkpoints" / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert nodes["world_size"] == 2
    for name, weight in one["model"].items():
        torch.testing.assert_close(nodes["model"][name], weight, atol=1e-5, rtol=0, msg=name)
    metrics = metrics_of(two_node_run)
    assert metrics["steps"] == single["steps"] == 60 and metrics["test_accuracy"] == single["test_accuracy"]


@pytest.mark.slow
def test_two_nodes_killed_then_both_restarted_resume_exactly_with_rank_0_on_the_other_node(two_node_run, tmp_path):
    """kill -9 of node a's worker (rank 0) ends both torchruns; both are started again, node b first, so rank 0
    now runs on b: it finds the run dir that a recorded (a's outputs/.torchrun/<run id>) and resumes it exactly.
    One machine is the shared file system docs/distributed.md asks for: every node sees the run dir at its path."""
    a, b, rdzv_id = tmp_path / "a", tmp_path / "b", uuid.uuid4().hex
    nodes = two_nodes(*RUN, cwds=[a, b], rdzv_id=rdzv_id)
    wait_for(lambda: list((a / "outputs").rglob("last.pt")), timeout=240)
    (run_dir,) = run_dirs(a)
    [worker] = subprocess.run(["pgrep", "-P", str(nodes[0].pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(worker), signal.SIGKILL)
    assert 0 not in ended(nodes)
    assert not (run_dir / "metrics.json").exists()
    assert (a / "outputs" / ".torchrun" / rdzv_id).read_text() == str(run_dir)

    assert ended(two_nodes(*RUN, cwds=[b, a], rdzv_id=rdzv_id)) == [0, 0], stderr_of(a, b)
    assert (b / "outputs" / ".torchrun" / rdzv_id).read_text() == str(run_dir)  # rank 0 ran on b this time
    assert run_dirs(a) == [run_dir] and run_dirs(b) == []
    assert "Resuming from" in (run_dir / "train.log").read_text()
    assert metrics_of(run_dir) == metrics_of(two_node_run)
    reference = torch.load(two_node_run / "checkpoints" / "last.pt", weights_only=True)["model"]
    for name, tensor in torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"].items():
        assert torch.equal(tensor, reference[name]), name


def test_rank_0_resumes_the_run_dir_any_node_recorded_if_it_sees_it(tmp_path):
    from birnn.train import recorded_run_dir

    seen = str(tmp_path)
    assert recorded_run_dir("r1", [None, seen]) == seen  # recorded by the node of rank 1
    assert recorded_run_dir("r1", [seen, seen, None]) == seen
    with pytest.raises(BirnnError, match="recorded on another node\\), which this node does not see: the run dir must"):
        recorded_run_dir("r1", [None, str(tmp_path / "elsewhere")])
    with pytest.raises(BirnnError, match="name different run dirs"):
        recorded_run_dir("r1", [seen, str(tmp_path / "other")])


def test_multirun_under_torchrun_is_refused(tmp_path):
    rc, _, err = finished(torchrun("-m", "optimizer.lr=0.001,0.003", *FAST, cwd=tmp_path, stderr=subprocess.PIPE))
    assert "a multirun (-m) cannot run under torchrun" in err and "tasks_per_node" in err
    # as docs/distributed.md says: birnn's line first, then torchrun's own report (exit code 2), torchrun exits 1
    lines = err.splitlines()
    assert lines[0].startswith("error: a multirun (-m) cannot run under torchrun") and rc == 1
    assert "Traceback" in err and err.index("ChildFailedError") > len(lines[0])
    assert "exitcode  : 2" in err.split("Root Cause")[1]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_global_batch_must_divide_among_processes():
    with pytest.raises(
        BirnnError,
        match="data.batch_size=99 is the global batch and must be divisible by the number of processes \\(2\\)",
    ):
        Dist(rank=1, world_size=2).check_batch(99)
    Dist(rank=1, world_size=2).check_batch(100)


def test_more_local_ranks_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(BirnnError, match="Local rank 1 has no GPU: this machine has 1"):
        Dist(rank=1, world_size=2, local_rank=1).place(torch.device("cuda"))


def test_shares_of_every_global_batch_cover_it_once():
    x, y = torch.arange(25.0).view(25, 1, 1), torch.arange(25)
    whole = [b.y for b in shuffled_batches(x, y, 10, torch.Generator().manual_seed(0))]
    shares = [list(shuffled_batches(x, y, 10, torch.Generator().manual_seed(0), dist=Dist(r, 3))) for r in range(3)]
    for i, batch in enumerate(whole):
        assert torch.equal(torch.cat([s[i].y for s in shares]), batch)
        assert {s[i].size for s in shares} == {len(batch)}
    assert [len(s[-1].y) for s in shares] == [2, 2, 1]


def _silent_peer(rank: int, port: int, result) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist = Dist.start("cpu", timeout_s=2)
    if rank == 1:
        time.sleep(30)  # alive but never answers
        return
    start = time.monotonic()
    try:
        dist.agree(1)
    except Exception as e:  # whatever the lost peer raised, lost_peer names it
        result.put((str(dist.lost_peer(e)), time.monotonic() - start))


def test_a_silent_peer_stops_the_others_after_the_timeout():
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_silent_peer, args=(r, port, result), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    error, waited = result.get(timeout=60)
    assert waited < 20, (error, waited)
    assert error.startswith("Rank 0 lost contact with another process of this run"), error
    for p in procs:
        p.kill()


@pytest.mark.slow
def test_submitit_local_runs_each_job_as_one_two_task_ddp_run(tmp_path):
    proc = run_cli(
        "-m",
        "optimizer.lr=0.003,0.01",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        *FAST,
        "trainer.max_steps=6",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for job in ("0", "1"):
        run_dir = tmp_path / "sweep" / job
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and metrics["steps"] == 6
        assert (run_dir / "train.log").read_text().count("Test accuracy") == 1
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == [".submitit", "0", "1"]
