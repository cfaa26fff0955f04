"""CUDA-only checks (``pytest -m cuda``; skipped without a GPU). ``scripts/gpu_check.sh`` runs them."""

import pytest
import torch

from birnn.evaluate import evaluate_checkpoint
from birnn.models.rnn import RNNClassifier
from birnn.train import train
from conftest import make_cfg

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU = ["data=digits", "device=cuda", "trainer.log_images=false", "trainer.epochs=3"]


def test_last_step_shortcut_matches_cudnn_full_run():
    torch.manual_seed(0)
    full = RNNClassifier(28, 10, backward_shortcut=False).cuda()
    fast = RNNClassifier(28, 10).cuda()
    fast.load_state_dict(full.state_dict())
    x = torch.rand(64, 28, 28, device="cuda")
    torch.testing.assert_close(fast(x), full(x), atol=1e-4, rtol=1e-4)
    fast(x).square().sum().backward()
    full(x).square().sum().backward()
    for (name, a), b in zip(fast.named_parameters(), full.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("precision", ["32", "bf16", "16"])
def test_training_on_cuda_learns_and_the_checkpoint_evaluates_the_same(tmp_path, precision):
    metrics = train(make_cfg(*GPU, f"trainer.precision={precision}"), tmp_path)
    assert metrics["test_accuracy"] > 0.5
    scores = evaluate_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert scores["device"].startswith("cuda") and scores["test_accuracy"] == metrics["test_accuracy"]


def test_resume_on_cuda_is_exact(tmp_path):
    reference = train(make_cfg(*GPU), tmp_path / "reference")
    train(make_cfg(*GPU, "trainer.max_steps=20"), tmp_path / "resumed")
    resumed = train(make_cfg(*GPU), tmp_path / "resumed")
    assert resumed["test_accuracy"] == reference["test_accuracy"]
