"""Precision, schedules and experiment presets do what they say (correctness, not speed)."""

import math

import pytest
import torch

from birnn.engine.schedule import build_scheduler
from birnn.schema.errors import BirnnError
from birnn.system.device import cpu_bf16_recurrence
from birnn.train import train
from conftest import FAST, make_cfg


def test_bf16_trains_digits_to_a_sane_accuracy(tmp_path, caplog):
    """bf16 where the CPU has bf16 recurrent kernels; elsewhere fp32 with one warning (never a crash)."""
    metrics = train(make_cfg(*FAST, "trainer.precision=bf16", "model.hidden_size=32"), tmp_path)
    stored = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["config"]["trainer"]["precision"]
    if cpu_bf16_recurrence():
        assert stored == "bf16" and "no bf16 LSTM/GRU kernels" not in caplog.text
    else:
        assert stored == "32" and "no bf16 LSTM/GRU kernels; training in fp32" in caplog.text
    assert metrics["test_accuracy"] >= 0.8


def lrs(cfg_overrides, total_steps, lr=0.01):
    cfg = make_cfg(*cfg_overrides, f"optimizer.lr={lr}")
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr)
    scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps)
    seen = []
    for _ in range(total_steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_cosine_warms_up_then_decays_to_min():
    seen = lrs(["scheduler=cosine", "scheduler.warmup_steps=10", "scheduler.min_lr_ratio=0.1"], 110)
    assert seen[0] == pytest.approx(0.001) and seen[9] == pytest.approx(0.01)  # linear warm-up
    assert seen[10] == pytest.approx(0.01) and seen[60] == pytest.approx(0.01 * (0.1 + 0.9 * 0.5), rel=1e-3)
    assert all(a >= b for a, b in zip(seen[10:], seen[11:])) and seen[-1] == pytest.approx(0.001, rel=0.01)


def old_cosine_factor(step, total_steps, warmup_steps, min_lr_ratio):
    """The LambdaLR formula scheduler=cosine used before it became torch's LinearLR + CosineAnnealingLR."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("total,warmup,floor", [(110, 10, 0.1), (50, 0, 0.0), (20, 1, 0.5), (30, 40, 0.0)])
def test_cosine_on_torchs_schedulers_computes_the_old_formula(total, warmup, floor):
    seen = lrs(["scheduler=cosine", f"scheduler.warmup_steps={warmup}", f"scheduler.min_lr_ratio={floor}"], total)
    assert seen == pytest.approx(
        [0.01 * old_cosine_factor(s, total, warmup, floor) for s in range(total)], rel=1e-12, abs=1e-15
    )


def test_bad_schedule_values_are_one_line():
    with pytest.raises(BirnnError, match="scheduler.min_lr_ratio must be in"):
        lrs(["scheduler=cosine", "scheduler.min_lr_ratio=2"], 10)
    with pytest.raises(BirnnError, match="OneCycleLR.*pct_start"):
        lrs(["scheduler=onecycle", "scheduler.pct_start=1.5"], 10)


def test_onecycle_rises_to_lr_at_pct_start_then_anneals():
    seen = lrs(["scheduler=onecycle", "scheduler.pct_start=0.25"], 100)
    peak = max(range(100), key=seen.__getitem__)
    assert 20 <= peak <= 26 and seen[peak] == pytest.approx(0.01, rel=1e-3)
    assert seen[0] < 0.001 and seen[-1] < 1e-5


def test_no_scheduler_keeps_the_tutorials_constant_lr(tmp_path):
    assert build_scheduler(make_cfg().scheduler, torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]), 10) is None


def test_scheduler_state_resumes(tmp_path):
    metrics = train(make_cfg(*FAST, "scheduler=onecycle", "trainer.max_steps=20"), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 20 and metrics["steps"] == 20


@pytest.mark.parametrize("preset", ["tutorial", "fast"])
def test_presets_compose(preset):
    from birnn.schema.config import validate

    cfg = make_cfg(f"experiment={preset}")
    validate(cfg)
    if preset == "tutorial":
        assert cfg == make_cfg()
    else:
        assert (
            cfg.trainer.precision == "bf16"
            and cfg.scheduler._target_ == "torch.optim.lr_scheduler.OneCycleLR"
            and cfg.model.readout == "final"
        )
        assert make_cfg(f"experiment={preset}", "data=digits").data._target_ == "birnn.data.load_digits"
