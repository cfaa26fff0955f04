"""The (Bi)LSTM sequence classifier and its readouts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

_GATES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class _LastStepPath:
    """Computes ``lstm(x)[0][:, -1]`` of a bidirectional ``nn.LSTM`` without the work the readout never sees.

    At the last time step the top layer's backward direction has read only the final input row, so it
    runs for one step (an ``LSTMCell``) instead of all of them; the lower layers and the top forward
    direction run in full. The helper modules alias the parameters of ``lstm`` (same ``Parameter``
    objects), so the model's ``state_dict`` stays exactly ``nn.LSTM``'s and the optimizer sees one set.
    """

    def __init__(self, lstm: nn.LSTM):
        layers, hidden = lstm.num_layers, lstm.hidden_size
        top = layers - 1
        top_in = lstm.input_size if top == 0 else 2 * hidden
        self.dropout = lstm.dropout
        # Built on the meta device (no memory, no RNG draws), then pointed at lstm's parameters.
        self.lower = (nn.LSTM(lstm.input_size, hidden, top, batch_first=True, bidirectional=True,
                              dropout=lstm.dropout, device="meta") if top else None)
        self.top_forward = nn.LSTM(top_in, hidden, 1, batch_first=True, device="meta")
        self.top_backward = nn.LSTMCell(top_in, hidden, device="meta")
        if self.lower is not None:
            for name in self.lower._flat_weights_names:
                setattr(self.lower, name, getattr(lstm, name))
        for gate in _GATES:
            setattr(self.top_forward, f"{gate}_l0", getattr(lstm, f"{gate}_l{top}"))
            setattr(self.top_backward, gate, getattr(lstm, f"{gate}_l{top}_reverse"))

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        if self.lower is not None:
            self.lower.train(training)
            x, _ = self.lower(x)
            x = F.dropout(x, self.dropout, training)
        forward, _ = self.top_forward(x)
        backward, _ = self.top_backward(x[:, -1])
        return torch.cat([forward[:, -1], backward], dim=1)


class BiLSTMClassifier(nn.Module):
    """LSTM over the rows of an input (batch, steps, features) and a linear classifier on a readout.

    Readouts: ``last`` (output at the last step, the tutorial's), ``final`` (final hidden states of the
    top layer, both directions concatenated) and ``mean`` (output averaged over time). Parameter names
    match the tutorial's model (``lstm.*``, ``fc.*``).
    """

    def __init__(self, input_size: int, num_classes: int, hidden_size: int = 128, num_layers: int = 2,
                 bidirectional: bool = True, dropout: float = 0.0, readout: str = "last",
                 backward_shortcut: bool = True):
        super().__init__()
        self.readout = readout
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                            bidirectional=bidirectional, dropout=dropout)
        self.fc = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)
        shortcut = backward_shortcut and readout == "last" and bidirectional
        # Not a submodule: it only borrows self.lstm's parameters.
        self._last_step = _LastStepPath(self.lstm) if shortcut else None

    def features(self, x: Tensor) -> Tensor:
        if self._last_step is not None:
            return self._last_step(x, self.training)
        out, (h_n, _) = self.lstm(x)
        if self.readout == "last":
            return out[:, -1, :]
        if self.readout == "mean":
            return out.mean(dim=1)
        return torch.cat([h_n[-2], h_n[-1]], dim=1) if self.lstm.bidirectional else h_n[-1]

    def forward(self, x: Tensor) -> Tensor:
        """Logits in fp32. Under autocast only the recurrent features run in low precision: the linear head
        runs in fp32 (low-precision logits blur the loss gradient and cost accuracy)."""
        features = self.features(x)
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self.fc(features.float())
        return self.fc(features)


def build_model(cfg: DictConfig, input_size: int, num_classes: int) -> BiLSTMClassifier:
    return BiLSTMClassifier(input_size, num_classes, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                            bidirectional=cfg.bidirectional, dropout=cfg.dropout, readout=cfg.readout,
                            backward_shortcut=cfg.backward_shortcut)
