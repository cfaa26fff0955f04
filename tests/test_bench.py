"""The benchmarks run offline on tiny data and write every field (their speed is not asserted).

The whole-process run executes the tutorial's own script (``birnn/benchmarks/tutorial_main.py``) and reads its
accuracy line."""

import json

import pytest
import torch

from birnn.bench import main
from birnn.benchmarks.step import TutorialBiRNN, compose_config, with_default_data
from birnn.data.pipeline import load_data
from conftest import FAST, make_cfg, tiny_idx_images, write_idx


def test_bench_quick_on_digits_writes_all_fields(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = main(
        [
            "--quick",
            "--rounds",
            "1",
            "--steps",
            "2",
            "--eval-every",
            "10",
            "--target",
            "0.3",
            "--out",
            str(out),
            *FAST,
            "trainer.max_steps=40",
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["ratios"] == result["ratios"]
    for side in ("reference", "birnn"):
        speed = saved["throughput"][side]
        assert speed["train_samples_per_second"] > 0 and speed["eval_samples_per_second"] > 0
        assert len(speed["train_seconds_per_round"]) == 1
    tta = saved["time_to_accuracy"]
    assert tta["target"] == 0.3 and tta["target_source"] == "given"
    assert [p["step"] for p in tta["birnn"]["curve"]][:1] == [10]
    assert tta["birnn"]["curve"][-1]["step"] <= 40  # stops at the target or at the config's max_steps
    assert set(saved["ratios"]) == {"train", "eval", "time_to_acc"} and saved["ratios"]["train"] > 0
    assert saved["machine"]["device"] == "cpu" and saved["process_peak_rss_mb"] > 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("speedup train=") and " eval=" in last_line and " time_to_acc=" in last_line


def test_bench_reads_debians_fashion_mnist_on_both_sides_and_prints_n_a_plainly(tmp_path, capsys):
    """Only Debian's .gz files (no <root>/FashionMNIST/raw/): the reference trains on the samples birnn read."""
    system = tmp_path / "system"
    write_idx(system, *tiny_idx_images(200, 0), "train", gz=True)
    write_idx(system, *tiny_idx_images(100, 1), "t10k", gz=True)
    data = ["data=fashion_mnist", f"data.root={tmp_path / 'root'}", "data.download=false", f"+data.system_dir={system}"]
    small = ["device=cpu", "device.num_threads=1", "model.hidden_size=8", "trainer.max_steps=4"]
    quick = ["--quick", "--rounds", "1", "--steps", "2", "--eval-every", "2", "--target", "1.01"]  # never reached
    result = main([*quick, "--out", str(tmp_path / "b.json"), *data, *small])
    assert result["time_to_accuracy"]["reference_seconds"] is None and result["ratios"]["time_to_acc"] is None
    assert result["throughput"]["reference"]["train_samples_per_second"] > 0
    out = capsys.readouterr().out
    assert "n/as" not in out and out.strip().splitlines()[-1].endswith("time_to_acc=n/a")
    assert [line.split()[-1] for line in out.splitlines() if line.startswith(("reference ", "birnn "))] == ["n/a"] * 2


@pytest.mark.parametrize(
    "tagger", ["softmax", pytest.param("crf", marks=pytest.mark.slow), pytest.param("vectors", marks=pytest.mark.slow)]
)
def test_bench_on_tagged_sentences_reports_tokens_per_second_of_both(tmp_path, capsys, tagger):
    """The token mode with each tagger birnn trains: per-step softmax, a CRF, pretrained vectors (birnn's side; the
    reference is the tutorial's tagger at the same width)."""
    conll = tmp_path / "t.conll"
    conll.write_text(
        "".join("a X\ngood ADJ\nfilm X\n\n" if i % 2 else "the X\nplot X\nwas X\ngood ADJ\n\n" for i in range(40))
    )
    data = ["data=tagged", f"data.path={conll}", "data.batch_size=8", "device=cpu", "device.num_threads=1"]
    if tagger == "vectors":
        pytest.importorskip("gensim")
        (tmp_path / "v.txt").write_text("".join(f"{w} {' '.join(['0.5'] * 8)}\n" for w in ("good", "the", "zanzibar")))
        data.append(f"data.vectors={tmp_path / 'v.txt'}")
    elif tagger == "crf":
        data.append("model.crf=true")
    result = main(
        [
            "--rounds",
            "1",
            "--steps",
            "2",
            "--eval-every",
            "5",
            "--out",
            str(tmp_path / "b.json"),
            *data,
            "model.hidden_size=8",
            "model.embedding_dim=8",
            "trainer.max_steps=10",
        ]
    )
    splits = load_data(make_cfg(*data).data, torch.device("cpu"))
    train_tokens = float(splits.train_lengths.double().mean())
    for side in ("reference", "birnn"):
        speed = result["throughput"][side]
        assert speed["train_tokens_per_second"] == pytest.approx(speed["train_samples_per_second"] * train_tokens)
        assert speed["eval_tokens_per_second"] > 0
        assert 0 <= result["time_to_accuracy"][side]["final_accuracy"] <= 1
    assert "train tokens/s" in capsys.readouterr().out


def test_the_default_data_is_fashion_mnist_unless_the_data_or_a_preset_is_named():
    assert with_default_data(["model.hidden_size=8"]) == ["data=fashion_mnist", "model.hidden_size=8"]
    assert with_default_data(["experiment=brown_pos"]) == ["experiment=brown_pos"]  # the preset's data=tagged
    assert compose_config(with_default_data(["experiment=names"])).data._target_ == "birnn.data.load_text"


def test_reference_model_is_the_tutorials():
    import torch

    model = TutorialBiRNN(28, 128, 2, 10, torch.device("cpu"))
    assert model(torch.rand(3, 28, 28)).shape == (3, 10)
    lstm = 2 * 4 * 128 * (28 + 128 + 2) + 2 * 4 * 128 * (256 + 128 + 2)  # 2 directions x 4 gates, 2 layers
    assert sum(p.numel() for p in model.parameters()) == lstm + 2570


@pytest.mark.slow
def test_whole_process_bench_on_digits_prints_its_fields(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the tutorial script too: the suite shares 2 cores
    out = tmp_path / "whole.json"
    result = main(["--whole-process", "--rounds", "2", "--epochs", "1", "--out", str(out), *FAST])
    saved = json.loads(out.read_text())
    assert saved["ratios"] == result["ratios"] and saved["seeds"] == [0, 1]
    for side in ("tutorial", "birnn"):
        assert [run["seed"] for run in saved["runs"][side]] == [0, 1]
        for run in saved["runs"][side]:
            assert run["wall_seconds"] > 0 and run["cpu_seconds"] >= run["sys_seconds"] > 0
            assert run["peak_rss_mb"] > 50 and run["minor_faults"] > 0 and 0 < run["accuracy"] <= 1
        assert saved["median"][side]["wall_seconds"] > 0
    assert len(saved["accuracy_difference"]["per_seed"]) == 2
    median = saved["median"]
    assert saved["ratios"]["wall"] == median["tutorial"]["wall_seconds"] / median["birnn"]["wall_seconds"]
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("tutorial ") for line in lines) and any(line.startswith("birnn ") for line in lines)
    ours, theirs = saved["median"]["birnn"]["accuracy"], saved["median"]["tutorial"]["accuracy"]
    assert lines[-1] == f"speedup whole_process={saved['ratios']['wall']:.2f} accuracy={ours:.4f}/{theirs:.4f}"
