"""Variable-length batches: a padded batch with lengths equals each sample run alone, unpadded, through the
plain path (logits and gradients), for every readout, cell, depth and with the last-step shortcut, also when the
series are read k steps at a time (``data.patch``)."""

import pytest
import torch
import torch.nn.functional as F

import birnn.models.layers
from birnn.data.patches import patch, patch_lengths
from birnn.data.targets import ClassPerSequence
from birnn.engine.loop import Stepper, eval_pass
from birnn.models.rnn import RNNClassifier

LENGTHS = [7, 1, 4, 7, 2, 5]  # the longest, a single step, and everything between, unsorted
FEATURES, CLASSES = 3, 4


def _padded_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, lengths, labels; the padding is large non-zero junk, so any leak of it into a result shows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(len(LENGTHS), max(LENGTHS), FEATURES, generator=g)
    lengths = torch.tensor(LENGTHS)
    junk = torch.arange(max(LENGTHS))[None, :] >= lengths[:, None]
    x[junk] = 5 + 10 * torch.randn(int(junk.sum()), FEATURES, generator=g)
    return x, lengths, torch.randint(0, CLASSES, (len(LENGTHS),), generator=g)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("readout", ["last", "final", "mean", "max"])
def test_padded_batch_equals_each_sample_alone(cell, num_layers, shortcut, readout):
    torch.manual_seed(num_layers)
    kwargs = dict(hidden_size=5, num_layers=num_layers, readout=readout, cell=cell)
    batched = RNNClassifier(FEATURES, CLASSES, backward_shortcut=shortcut, **kwargs)
    plain = RNNClassifier(FEATURES, CLASSES, backward_shortcut=False, **kwargs)
    plain.load_state_dict(batched.state_dict())
    assert (batched._last_step is not None) == (shortcut and readout == "last")
    assert_padded_batch_is_each_sample_alone(batched, plain, *_padded_batch(num_layers))


def assert_padded_batch_is_each_sample_alone(batched, plain, x, lengths, y) -> None:
    """``batched`` on the padded batch gives the logits and gradients of ``plain`` (same weights) on each sample
    alone, unpadded."""
    logits = batched(x, lengths)
    F.cross_entropy(logits, y, reduction="sum").backward()
    alone = torch.cat([plain(x[i : i + 1, :n]) for i, n in enumerate(lengths.tolist())])
    F.cross_entropy(alone, y, reduction="sum").backward()

    assert (logits - alone).abs().max() <= 1e-5
    for (name, p), q in zip(batched.named_parameters(), plain.parameters()):
        assert p.grad is not None, f"{name} got no gradient"
        assert (p.grad - q.grad).abs().max() <= 1e-5, name


@pytest.mark.parametrize("k", [2, 3, 7])
@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("readout", ["last", "final", "mean", "max"])
def test_patched_padded_batch_equals_each_sample_patched_alone(k, shortcut, readout):
    """Patching the junk-padded batch (lengths ceil(n / k)) gives each sample's logits and gradients as if it
    were patched alone, unpadded: its last patch zero-filled, never the padding's junk."""
    torch.manual_seed(k)
    kwargs = dict(hidden_size=5, num_layers=2, readout=readout)
    batched = RNNClassifier(k * FEATURES, CLASSES, backward_shortcut=shortcut, **kwargs)
    plain = RNNClassifier(k * FEATURES, CLASSES, backward_shortcut=False, **kwargs)
    plain.load_state_dict(batched.state_dict())
    x, lengths, y = _padded_batch(k)

    logits = batched(patch(x, k, lengths), patch_lengths(lengths, k))
    F.cross_entropy(logits, y, reduction="sum").backward()
    alone = torch.cat([plain(patch(x[i : i + 1, :n], k)) for i, n in enumerate(LENGTHS)])
    F.cross_entropy(alone, y, reduction="sum").backward()

    assert (logits - alone).abs().max() <= 1e-5
    for (name, p), q in zip(batched.named_parameters(), plain.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-5, name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unidirectional_readouts_respect_lengths(cell):
    torch.manual_seed(0)
    x, lengths, _ = _padded_batch(0)
    for readout in ("last", "final", "mean", "max"):
        model = RNNClassifier(FEATURES, CLASSES, hidden_size=5, bidirectional=False, readout=readout, cell=cell)
        alone = torch.cat([model(x[i : i + 1, :n]) for i, n in enumerate(LENGTHS)])
        assert (model(x, lengths) - alone).abs().max() <= 1e-5, readout


def test_no_packing_without_lengths(monkeypatch):
    """Fixed-length data never reaches pack_padded_sequence; full lengths give the same logits."""
    torch.manual_seed(0)
    x = torch.rand(3, 6, FEATURES)
    models = [
        RNNClassifier(FEATURES, CLASSES, hidden_size=5, readout=r, cell=c)
        for r in ("last", "final", "mean", "max")
        for c in ("lstm", "gru")
    ]
    packed = [m(x, torch.full((3,), 6)) for m in models]

    def refuse(*args, **kwargs):
        raise AssertionError("packed a batch that has no lengths")

    monkeypatch.setattr(birnn.models.layers, "pack_padded_sequence", refuse)
    for model, logits in zip(models, packed):
        assert (model(x) - logits).abs().max() <= 1e-5


def test_training_step_and_evaluation_pass_lengths():
    """A step on a padded batch ignores the junk (two junk fillings give the same update) and reports the
    per-sample loss; evaluation slices lengths with its batches (4 does not divide the 6 samples)."""
    torch.manual_seed(0)
    x, lengths, y = _padded_batch(3)
    other = x.clone()
    junk = torch.arange(max(LENGTHS))[None, :] >= lengths[:, None]
    other[junk] = -7.0
    models = [RNNClassifier(FEATURES, CLASSES, hidden_size=5, cell="gru") for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    alone = torch.cat([models[0](x[i : i + 1, :n]) for i, n in enumerate(LENGTHS)]).detach()
    cpu = torch.device("cpu")

    classes = ClassPerSequence([str(c) for c in range(CLASSES)])
    result = eval_pass(models[0], classes, x, y, 4, cpu, lengths=lengths)
    assert result.predictions.tolist() == alone.argmax(1).tolist()
    assert result.loss == pytest.approx(F.cross_entropy(alone, y).item(), abs=1e-5)
    losses = [
        Stepper(m, classes, torch.optim.SGD(m.parameters(), lr=0.5), cpu).step(batch, y, lengths)[0]
        for m, batch in zip(models, (x, other))
    ]
    assert losses[0].item() == pytest.approx(F.cross_entropy(alone, y, reduction="sum").item(), abs=1e-5)
    for p, q in zip(*(m.parameters() for m in models)):
        assert (p - q).abs().max() <= 1e-6
    assert (models[0](x, lengths) - alone).abs().max() > 1e-3  # the step did change the model


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("readout", ["last", "final", "mean", "max"])
def test_cuda_packed_batch_equals_cpu(cell, readout):
    """cuDNN packed kernels, lengths on the GPU: same logits and gradients as the CPU (TF32 off)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cpu = RNNClassifier(FEATURES, CLASSES, hidden_size=5, num_layers=2, readout=readout, cell=cell)
    gpu = RNNClassifier(FEATURES, CLASSES, hidden_size=5, num_layers=2, readout=readout, cell=cell)
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    x, lengths, y = _padded_batch(2)
    logits = {}
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        logits[device] = model(x.to(device), lengths.to(device))
        F.cross_entropy(logits[device], y.to(device), reduction="sum").backward()
    assert (logits["cpu"] - logits["cuda"].cpu()).abs().max() <= 1e-4
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert (p.grad - q.grad.cpu()).abs().max() <= 1e-4, name
