"""An ``RNNClassifier`` on padded batches with lengths but without packing: exact, and traceable for export.

Packing (``pack_padded_sequence``) has data-dependent shapes that ``torch.export`` and ONNX cannot trace. Here
each layer's forward direction runs over the padded batch as it is (the padding comes after a sample's steps, so
its valid outputs never see it), and the backward direction runs forward over each sample reversed within its
own length (a gather), then is reversed back. The valid outputs are those of the packed model. A stem
(``model.stem``) runs first, as in the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from birnn.models.characters import reversed_within
from birnn.models.rnn import CELLS, RNNClassifier, pooled, token_inputs


def _direction(rnn: nn.RNNBase, layer: int, suffix: str) -> nn.RNNBase:
    """A one-layer, one-direction copy of ``rnn``'s layer ``layer`` (``suffix``: ``""`` or ``"_reverse"``)."""
    module = CELLS[rnn.mode.lower()][0]
    size = rnn.input_size if layer == 0 else rnn.hidden_size * (2 if rnn.bidirectional else 1)
    one = module(size, rnn.hidden_size, 1, batch_first=True)
    one.load_state_dict({f"{name}_l0": getattr(rnn, f"{name}_l{layer}{suffix}") for name in _weights(rnn)})
    return one


def _weights(rnn: nn.RNNBase) -> tuple[str, ...]:
    return ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if rnn.bias else ("weight_ih", "weight_hh")


class Unpacked(nn.Module):
    """``model(x, lengths)`` of an eval-mode ``RNNClassifier``, computed without packing."""

    def __init__(self, model: RNNClassifier):
        super().__init__()
        rnn = model.rnn
        self.embedding = getattr(model, "embedding", None)
        self.pretrained = getattr(model, "pretrained", None)  # a buffer of the model: exported with the graph
        self.characters = getattr(model, "characters", None)
        self.stem = getattr(model, "stem", None)
        self.fc, self.readout, self.per_step = model.fc, model.readout, model.per_step
        self.crf = getattr(model, "crf", None)
        self.forward_layers = nn.ModuleList(_direction(rnn, i, "") for i in range(rnn.num_layers))
        self.backward_layers = nn.ModuleList(
            _direction(rnn, i, "_reverse") for i in range(rnn.num_layers) if rnn.bidirectional
        )

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Logits; a tagger with a CRF also gives its Viterbi tags (batch, steps), -100 past each length."""
        if self.embedding is not None:
            x = token_inputs(x, self.embedding, self.pretrained, self.characters)
        if self.stem is not None:
            x, lengths = self.stem(x, lengths)
        for i, forward_layer in enumerate(self.forward_layers):
            out = forward_layer(x)[0]
            if self.backward_layers:
                back = reversed_within(self.backward_layers[i](reversed_within(x, lengths))[0], lengths)
                out = torch.cat([out, back], dim=2)
            x = out
        if self.per_step:
            scores = self.fc(x)
            return scores if self.crf is None else (scores, self.crf.decode(scores, lengths))
        last = x[torch.arange(x.shape[0], device=x.device), lengths.to(x.device) - 1]
        if self.readout == "last":
            return self.fc(last)
        if self.readout == "final":  # forward: its state at the last valid step; backward: at the first step
            hidden = self.forward_layers[-1].hidden_size
            return self.fc(torch.cat([last[:, :hidden], x[:, 0, hidden:]], dim=1) if self.backward_layers else last)
        return self.fc(pooled(x, self.readout, lengths))


class Spelled(nn.Module):
    """``model(inputs, characters, lengths)`` for export: a character model's (``model.char_encoder``) token IDs
    ``(N, steps)`` and their character IDs ``(N, steps, chars)`` as separate inputs, joined as the model reads them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor, characters: Tensor, lengths: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return self.model(torch.cat([inputs.unsqueeze(-1), characters], dim=-1), lengths)
