"""What the command lines print: one ``error:`` line per bad input, help, program names, closed pipes."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys

import pytest

from birnn import predict
from birnn.train import train
from conftest import FAST, ROOT, make_cfg, run_cli

HYDRA_NOISE = ("Error executing job", "HYDRA_FULL_ERROR", "To append to your config", "Traceback")


@pytest.mark.parametrize(
    "args,line",
    [
        (["model.hiden_size=3"], "error: model.hiden_size is not a config key. Did you mean model.hidden_size?"),
        (["modle=bigru"], "error: modle is not a config key. Did you mean model?"),
        (
            ["optimizer.lr=0", "trainer.epochs=0"],
            "error: Invalid config: optimizer.lr must be a finite number > 0, got 0.0; "
            "trainer.epochs must be > 0, got 0",
        ),
        (
            ["data=nope"],
            "error: Could not find 'data/nope' (options: arrays, digits, fashion_mnist, mnist, packed, tagged, text, "
            "uea)",
        ),
        (
            ["model.hidden_size=abc"],
            "error: Error merging override model.hidden_size=abc: Value 'abc' of type 'str' "
            "could not be converted to Integer",
        ),
    ],
)
def test_a_bad_config_is_one_error_line(tmp_path, args, line):
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [line]
    assert not any(noise in proc.stderr + proc.stdout for noise in HYDRA_NOISE)


@pytest.mark.parametrize(
    "args,line",
    [
        (
            ["search.params={model.hidden_size:choice(16,32),optimizer.lr:tag(log,interval(1e-4,3e-2))}"],
            "error: search.params={model.hidden_size:choice(16,32),optimizer.lr:tag(log,interval(1e-4,3e-2))}: "
            "a choice/range/interval inside {...} or [...] must be quoted, and the whole override too for the shell: "
            "\"search.params={model.hidden_size:'choice(16,32)',optimizer.lr:'tag(log,interval(1e-4,3e-2))'}\"",
        ),
        (
            ["search.params={a:'choice(1,2)'"],
            "error: Cannot parse the override search.params={a:'choice(1,2)': no viable alternative at input",
        ),
        (["search.n_trials=0"], "error: search.n_trials, search.heartbeat_interval_s and search.heartbeat_grace_s"),
        (["-m", "search.worker=0,1", "search.n_trials=0"], "error: job 0 (search.worker=0 search.n_trials=0 "),
        (
            ["search.storage=sqlite:////nonexistent/s.db"],
            "error: Cannot open the study storage sqlite:////nonexistent/",
        ),
        (["search.storage=nosuchdb://host/db"], "error: Cannot open the study storage nosuchdb://host/db: Can't load"),
    ],
)
def test_every_search_error_is_one_line_and_writes_nothing(tmp_path, args, line):
    proc = run_cli(*args, *FAST, f"search.dir={tmp_path / 'study'}", cwd=tmp_path, module="birnn.search")
    assert proc.returncode == 1
    [only] = proc.stderr.splitlines()
    assert only.startswith(line) and "Sweep dir" not in only, only
    assert not any(noise in proc.stderr + proc.stdout for noise in HYDRA_NOISE)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_database_driver_is_named_with_its_package(tmp_path):
    if importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed")
    url = "postgresql+psycopg2://birnn@127.0.0.1:1/studies"
    proc = run_cli(
        *FAST, f"search.dir={tmp_path / 'study'}", f"search.storage={url}", cwd=tmp_path, module="birnn.search"
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: search.storage={url} needs a database driver that is not installed (No module named 'psycopg2'); "
        "pip install 'psycopg2-binary'"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_run_dir_that_cannot_be_written_is_one_error_line(tmp_path):
    """Hydra opens train.log and writes .hydra/ before birnn runs (a read-only run dir on resume gave a traceback
    ending "Unable to configure handler 'file'"). As root nothing is read-only: a folder stands in the log's place."""
    run_dir = tmp_path / "run"
    (run_dir / "train.log").mkdir(parents=True)
    proc = run_cli(*FAST, "trainer.max_steps=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: Cannot write {run_dir / 'train.log'}: Is a directory. The run dir must be writable (a resume writes "
        "its log and a .hydra/resume-N record there): make it writable or copy it elsewhere"
    ]


@pytest.mark.parametrize("errno_, text", [(13, "Permission denied"), (30, "Read-only file system")])
def test_a_refused_write_into_the_run_dir_is_described(errno_, text):
    from birnn.schema.console import describe

    refused = OSError(errno_, text, "/runs/a/train.log")
    try:
        raise ValueError("Unable to configure handler 'file'") from refused  # as logging.config raises it
    except ValueError as e:
        handler = e
    assert describe(handler).startswith(f"Cannot write /runs/a/train.log: {text}. The run dir must be writable")
    record = OSError(errno_, text, "/runs/a/.hydra/resume-1")  # Hydra's record of the re-launch
    assert describe(record).startswith(f"Cannot write /runs/a/.hydra/resume-1: {text}. The run dir must be writable")


def test_a_failed_sweep_job_names_itself_and_the_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "optimizer.lr=0,-1", *FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1 and not any(noise in proc.stderr for noise in HYDRA_NOISE)
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("error: job 0 (optimizer.lr=0 data=digits ")  # Hydra's own spelling of the overrides
    assert last.endswith(
        f"): Invalid config: optimizer.lr must be a finite number > 0, got 0.0. "
        f"Sweep dir {sweep}; its summary: {sweep / 'summary.md'}"
    )
    assert "| 0 | failed |" in (sweep / "summary.md").read_text()  # every job failed: a summary all the same


def test_a_failed_sweep_job_whose_message_ends_a_sentence_has_one_full_stop(tmp_path):
    sweep = tmp_path / "sweep"
    missing = ["data=mnist", f"data.root={tmp_path / 'none'}", "data.download=false"]
    proc = run_cli("-m", "seed=0", *FAST, *missing, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    last = proc.stderr.splitlines()[-1]
    assert proc.returncode == 1 and "or data=digits (ships with scikit-learn). Sweep dir " in last, last
    assert ".." not in last


def test_a_sweep_prints_its_dir_and_where_its_summary_went(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "seed=0", *FAST, "trainer.max_steps=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"Sweep dir {sweep}\n" in proc.stdout
    assert f"Sweep summary in {sweep} (summary.md, summary.csv, summary.png)\n" in proc.stdout
    assert (sweep / "summary.md").is_file()


def test_help_lists_the_users_groups_not_the_schemas(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\ndata: arrays, digits, fashion_mnist, mnist, packed, tagged, text, uea\n" in proc.stdout
    assert "schema/" not in proc.stdout and "\nmodel: " in proc.stdout


@pytest.mark.parametrize(
    "argv0,name", [("/venv/bin/birnn-predict", "birnn-predict"), ("/src/birnn/predict.py", "python -m birnn.predict")]
)
def test_help_names_the_command_it_was_started_by(monkeypatch, capsys, argv0, name):
    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: {name} ")


def test_output_into_a_closed_pipe_is_no_traceback(tmp_path):
    train(make_cfg(*FAST, "trainer.max_steps=2"), tmp_path / "run")
    read, write = os.pipe()
    os.close(read)  # like `| head` that has already exited
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for args, code in ((["--help"], 0), ([str(tmp_path / "run" / "checkpoints" / "last.pt"), "device=cpu"], 1)):
        proc = subprocess.run(
            [sys.executable, "-m", "birnn.evaluate", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == code and proc.stderr == ""  # no BrokenPipeError traceback
    os.close(write)


def test_a_max_steps_stop_in_epoch_one_logs_epoch_one(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="birnn.train"):
        train(make_cfg(*FAST, "trainer.max_steps=3"), tmp_path / "run")  # digits: 15 steps per epoch
    assert any(r.getMessage().startswith("Epoch 1: test_loss") for r in caplog.records)
    assert not any(r.getMessage().startswith("Epoch 0") for r in caplog.records)
