"""Model shapes for every readout and cell, checkpoint names, and the exact last-step shortcut against plain
nn.LSTM / nn.GRU."""

import pytest
import torch

from birnn.engine.checkpoint import load_model_state
from birnn.models.rnn import RNNClassifier


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("readout", ["last", "final", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_output_shape(readout, bidirectional, cell):
    model = RNNClassifier(
        input_size=8,
        num_classes=5,
        hidden_size=6,
        num_layers=2,
        bidirectional=bidirectional,
        readout=readout,
        cell=cell,
    )
    assert isinstance(model.rnn, torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)
    assert model(torch.rand(3, 7, 8)).shape == (3, 5)
    assert model.fc.in_features == 6 * (2 if bidirectional else 1)


def test_readouts_differ_and_last_is_the_tutorials():
    torch.manual_seed(0)
    x = torch.rand(4, 7, 8)
    model = RNNClassifier(8, 5, hidden_size=6, readout="last", backward_shortcut=False)
    out, (h_n, _) = model.lstm(x)
    torch.testing.assert_close(model(x), model.fc(out[:, -1, :]))
    model.readout = "final"
    torch.testing.assert_close(model(x), model.fc(torch.cat([h_n[-2], h_n[-1]], 1)))
    model.readout = "mean"
    torch.testing.assert_close(model(x), model.fc(out.mean(1)))
    model.readout = "max"
    torch.testing.assert_close(model(x), model.fc(out.max(1).values))


def test_state_dict_matches_the_tutorial_model():
    model = RNNClassifier(28, 10)
    tutorial_lstm = torch.nn.LSTM(28, 128, 2, batch_first=True, bidirectional=True)
    assert set(model.state_dict()) == {f"lstm.{k}" for k in tutorial_lstm.state_dict()} | {"fc.weight", "fc.bias"}


def test_a_checkpoint_of_the_lstm_only_model_loads():
    """Checkpoints written before model.cell hold nn.LSTM's names under lstm.* and fc.*: they load strictly
    into the default (cell=lstm) model and compute what those weights compute."""
    torch.manual_seed(0)
    lstm, fc = torch.nn.LSTM(8, 6, 2, batch_first=True, bidirectional=True), torch.nn.Linear(12, 5)
    saved = {
        **{f"lstm.{k}": v for k, v in lstm.state_dict().items()},
        **{f"fc.{k}": v for k, v in fc.state_dict().items()},
    }
    model = RNNClassifier(8, 5, hidden_size=6)
    load_model_state(model, saved, "old.pt")
    x = torch.rand(3, 7, 8)
    torch.testing.assert_close(model(x), fc(lstm(x)[0][:, -1]))
    assert set(RNNClassifier(8, 5, hidden_size=6, cell="gru").state_dict()) == (
        {f"gru.{k}" for k in torch.nn.GRU(8, 6, 2, bidirectional=True).state_dict()} | {"fc.weight", "fc.bias"}
    )


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_last_step_shortcut_equals_the_plain_module(num_layers, cell):
    torch.manual_seed(num_layers)
    plain = RNNClassifier(8, 5, hidden_size=12, num_layers=num_layers, backward_shortcut=False, cell=cell)
    fast = RNNClassifier(8, 5, hidden_size=12, num_layers=num_layers, backward_shortcut=True, cell=cell)
    fast.load_state_dict(plain.state_dict())
    assert fast._last_step is not None and plain._last_step is None
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.rand(9, 11, 8)
    y = torch.randint(0, 5, (9,))
    logits = {}
    for name, model in (("plain", plain), ("fast", fast)):
        logits[name] = model(x)
        torch.nn.functional.cross_entropy(logits[name], y).backward()
    assert (logits["plain"] - logits["fast"]).abs().max() <= 1e-5
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-5, name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_shortcut_follows_parameter_updates_and_device_moves(cell):
    torch.manual_seed(0)
    plain = RNNClassifier(8, 5, hidden_size=12, backward_shortcut=False, cell=cell)
    fast = RNNClassifier(8, 5, hidden_size=12, cell=cell)
    fast.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for p, q in zip(plain.parameters(), fast.parameters()):
            p.add_(0.1)
            q.add_(0.1)
    fast = fast.to(torch.float64).to(torch.float32)
    x, lengths = torch.rand(4, 6, 8), torch.tensor([6, 2, 5, 1])
    assert (plain(x) - fast(x)).abs().max() <= 1e-5
    assert (plain(x, lengths) - fast(x, lengths)).abs().max() <= 1e-5


def test_shortcut_only_applies_where_exact():
    assert RNNClassifier(8, 5, readout="mean")._last_step is None
    assert RNNClassifier(8, 5, bidirectional=False)._last_step is None


@pytest.mark.parametrize("per_step", [False, True])
@pytest.mark.parametrize("key", ["embedding_dropout", "head_dropout"])
def test_embedding_and_head_dropout_act_in_training_only_and_add_no_weights(key, per_step):
    torch.manual_seed(0)
    kwargs = {"hidden_size": 6, "vocab_size": 20, "embedding_dim": 4, "readout": "final", "per_step": per_step}
    plain, dropped = RNNClassifier(20, 3, **kwargs), RNNClassifier(20, 3, **kwargs, **{key: 0.5})
    dropped.load_state_dict(plain.state_dict())  # the same weights: dropout has none
    assert list(dropped.state_dict()) == list(plain.state_dict())
    ids, lengths = torch.randint(1, 20, (4, 6)), torch.tensor([6, 5, 3, 1])
    plain.eval(), dropped.eval()
    assert torch.equal(dropped(ids, lengths), plain(ids, lengths))
    dropped.train(), plain.train()
    assert not torch.equal(dropped(ids, lengths), plain(ids, lengths))


@pytest.mark.parametrize("key", ["embedding_dropout", "head_dropout"])
def test_dropout_outside_zero_to_one_is_refused(key):
    with pytest.raises(Exception, match=f"model.{key} must be in"):
        RNNClassifier(8, 3, **{key: 1.0})
