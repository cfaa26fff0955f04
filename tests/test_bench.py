"""The benchmark runs offline on tiny data and writes every field (its speed is not asserted)."""

import json

from birnn.bench import TutorialBiRNN, main
from conftest import FAST


def test_bench_quick_on_digits_writes_all_fields(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = main(["--quick", "--rounds", "1", "--steps", "2", "--eval-every", "10", "--target", "0.3",
                   "--out", str(out), *FAST, "trainer.max_steps=40"])
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


def test_reference_model_is_the_tutorials():
    import torch

    model = TutorialBiRNN(28, 128, 2, 10, torch.device("cpu"))
    assert model(torch.rand(3, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == 2 * 4 * 128 * (28 + 128 + 2) + 2 * 4 * 128 * (256 + 128 + 2) + 2570
