"""``model.stem=conv``: shapes, the patch-embedding equivalence, lengths exactness (a padded batch equals each sample
alone, logits and gradients), per-step labels, config errors, old checkpoints (no stem key), ONNX export (fixed and
variable length), exact resume after kill -9 and torchrun 2 processes = 1 process."""

import pytest
import torch
import torch.nn.functional as F
from test_conv_models import assert_two_processes_end_with_one_process_weights
from test_lengths import CLASSES, FEATURES, LENGTHS, _padded_batch, assert_padded_batch_is_each_sample_alone
from test_resume import kill_9_then_resume

from birnn import evaluate, export
from birnn.data.patches import patch
from birnn.engine.restore import restore
from birnn.models.rnn import RNNClassifier, build_model
from birnn.models.unpacked import Unpacked
from birnn.schema.config import RNN_CLASSIFIER, typed
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import FAST, make_cfg

SMALL_STEM = ["model.stem=conv", "model.stem_kernel=4", "model.stem_stride=2", "model.stem_channels=8"]


def stemmed(kernel: int, stride: int, **keys) -> RNNClassifier:
    keys = {"hidden_size": 5, "stem_channels": 6, **keys}
    return RNNClassifier(FEATURES, CLASSES, stem="conv", stem_kernel=kernel, stem_stride=stride, **keys)


def test_defaults_add_nothing_and_conv_shortens_the_sequence():
    assert make_cfg().model.stem == "none"
    plain = build_model(make_cfg().model, 28, 10)
    assert not hasattr(plain, "stem") and {k.split(".")[0] for k in plain.state_dict()} == {"lstm", "fc"}
    model = build_model(make_cfg("model.stem=conv").model, 1, 5)
    assert (model.stem.conv.kernel_size, model.stem.conv.stride, model.stem.conv.out_channels) == ((8,), (4,), 64)
    assert model.lstm.input_size == 64
    x = torch.rand(3, 50, 1)
    steps, lengths = model.stem(x, torch.tensor([50, 9, 1]))
    assert steps.shape == (3, 13, 64) and lengths.tolist() == [13, 3, 1]  # ceil(length / 4)
    assert model(x).shape == (3, 5)


def test_kernel_equal_to_stride_is_a_linear_map_of_data_patch():
    """Windows of k steps every k steps: the conv is a Linear over data.patch=k's patches (last one zero-filled)."""
    torch.manual_seed(0)
    stem = stemmed(3, 3).stem
    x = torch.rand(2, 7, FEATURES)
    weight = stem.conv.weight.permute(0, 2, 1).reshape(6, -1)  # (channels, k x features), step-major as patch
    expected = F.gelu(stem.norm(F.linear(patch(x, 3), weight, stem.conv.bias)))
    torch.testing.assert_close(stem(x)[0], expected)


@pytest.mark.parametrize(("kernel", "stride"), [(4, 2), (3, 3), (5, 1), (8, 4)])
@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("readout", ["last", "final", "mean", "max"])
def test_padded_batch_equals_each_sample_alone(kernel, stride, shortcut, readout):
    """The stem normalizes each step on its own, so training and eval alike: logits and gradients of the
    junk-padded batch are those of each sample run alone, unpadded."""
    torch.manual_seed(kernel * 10 + stride)
    batched = stemmed(kernel, stride, readout=readout, backward_shortcut=shortcut)
    plain = stemmed(kernel, stride, readout=readout, backward_shortcut=False)
    plain.load_state_dict(batched.state_dict())
    assert_padded_batch_is_each_sample_alone(batched, plain, *_padded_batch(stride))


def test_unpacked_form_equals_the_packed_model():
    torch.manual_seed(0)
    model = stemmed(4, 2, readout="mean").eval()
    x, lengths, _ = _padded_batch(0)
    x[torch.arange(max(LENGTHS))[None, :] >= lengths[:, None]] = 0  # exported inputs are zero-padded
    torch.testing.assert_close(Unpacked(model)(x, lengths), model(x, lengths))


@pytest.mark.parametrize("tokens", [False, True])
def test_per_step_labels_work_with_stride_1_only(tokens):
    torch.manual_seed(0)
    x, lengths, _ = _padded_batch(0)
    if tokens:  # the stem reads the embeddings
        x = torch.randint(1, 9, x.shape[:2], generator=torch.Generator().manual_seed(0))
        model = stemmed(3, 1, per_step=True, vocab_size=9, embedding_dim=4).eval()
    else:
        model = stemmed(3, 1, per_step=True).eval()
    logits = model(x, lengths)
    assert logits.shape == (len(LENGTHS), max(LENGTHS), CLASSES)
    for i, n in enumerate(LENGTHS):
        assert (logits[i, :n] - model(x[i : i + 1, :n])[0]).abs().max() <= 1e-5
    with pytest.raises(BirnnError, match=r"model.stem=conv with per-step labels needs model.stem_stride=1"):
        build_model(make_cfg("model.stem=conv").model, 3, 4, per_step=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.stem=patch"], "model.stem must be one of none, conv; got 'patch'"),
        (["model.stem_kernel=0"], "model.stem_kernel must be in 1..4096, got 0"),
        (["model.stem_kernel=2", "model.stem_stride=3"], r"model.stem_stride must be in 1..model.stem_kernel \(2\)"),
        (["model.stem_stride=0"], "model.stem_stride must be in 1..model.stem_kernel"),
        (["model.stem_channels=0"], "model.stem_channels must be in 1..65536, got 0"),
    ],
)
def test_bad_stem_keys_are_one_error(overrides, message):
    with pytest.raises(BirnnError, match=message):
        build_model(make_cfg("model.stem=conv", *overrides).model, 1, 2)


def test_a_checkpoint_config_without_the_stem_keys_builds_todays_model():
    model = typed({"model": {"_target_": RNN_CLASSIFIER, "hidden_size": 16}}).model
    assert (model.stem, model.stem_kernel, model.stem_stride, model.stem_channels) == ("none", 8, 4, 64)


def test_trains_restores_and_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    metrics = train(make_cfg(*FAST, *SMALL_STEM, "trainer.max_steps=30"), tmp_path)
    assert metrics["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    restored = restore(tmp_path / "checkpoints" / "last.pt")
    assert restored.model.stem.conv.stride == (2,)
    out, difference = export.export(restored, "onnx", tmp_path / "m.onnx")
    assert out.is_file() and difference <= 1e-4


def test_variable_length_series_evaluate_and_export_to_onnx_with_lengths(tmp_path):
    pytest.importorskip("aeon")
    pytest.importorskip("onnxruntime")
    from test_sequences import problem, ramps

    root = problem(tmp_path, "Tiny", ramps(24, [5, 7, 9], seed=0), ramps(9, [6, 8, 9], seed=1))
    run = ["data=uea", "data.name=Tiny", f"data.root={root}", "data.normalize=false", "data.batch_size=8"]
    metrics = train(make_cfg(*FAST, *run, *SMALL_STEM, "model.readout=final", "trainer.max_steps=3"), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert evaluate.evaluate_checkpoint(ckpt)["test_accuracy"] == metrics["test_accuracy"]
    restored = restore(ckpt)
    assert restored.spec["max_length"] is None  # variable length: exported unpacked, with lengths
    out, difference = export.export(restored, "onnx", tmp_path / "m.onnx")
    assert out.is_file() and difference <= 1e-4


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(tmp_path):
    kill_9_then_resume(
        tmp_path, [*FAST, *SMALL_STEM, "trainer.checkpoint_every_n_steps=7", "trainer.log_every_n_steps=4"]
    )


@pytest.mark.slow
def test_two_processes_do_the_single_process_math(tmp_path):
    """The stem normalizes per step (no batch statistics): torchrun's 2 processes end with 1 process's weights."""
    weights = assert_two_processes_end_with_one_process_weights(tmp_path, [*FAST, *SMALL_STEM])
    assert any(k.startswith("stem.") for k in weights)
