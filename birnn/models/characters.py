"""Character features of each word (``model.char_encoder``): a character CNN (Ma & Hovy 2016) or BiLSTM (Lample et
al. 2016) over a word's characters, one vector per word, concatenated to its word embedding.

Inputs are the character IDs of every word of a batch at once, ``(..., chars)``, 0-padded after each word's own
characters (``birnn.data.text.spelled``). Padding never changes a word's vector: the embedding of ID 0 is zero, so
the CNN reads padding as its own zero padding, its max-pool spans the word's characters only, the LSTM's forward
direction stops at the word's last character and its backward direction starts there (the characters reversed
within the word), and a word of no characters (a padding step) gets zeros. No packing, so export traces it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from birnn.models.layers import same_conv
from birnn.schema.errors import BirnnError, check_config

ENCODERS = ("none", "cnn", "lstm")
MAX_CHANNELS = 4_096


def check_characters(
    encoder: str, embedding_dim: int, channels: int | None, kernel: int, dropout: float, tokens: bool
) -> None:
    """Raise one BirnnError listing every ``model.char_*`` value (and ``model.embedding_dropout``) that is wrong."""
    check_config(
        [
            (encoder in ENCODERS, f"model.char_encoder must be one of {', '.join(ENCODERS)}; got {encoder!r}"),
            (
                0 < embedding_dim <= MAX_CHANNELS,
                f"model.char_embedding_dim must be in 1..{MAX_CHANNELS}, got {embedding_dim}",
            ),
            (
                channels is None or 0 < channels <= MAX_CHANNELS,
                f"model.char_channels must be in 1..{MAX_CHANNELS} or null, got {channels}",
            ),
            (0 < kernel <= 32, f"model.char_kernel must be in 1..32, got {kernel}"),
            (0 <= dropout < 1, f"model.embedding_dropout must be in [0, 1), got {dropout}"),
            (
                tokens or (encoder == "none" and not dropout),
                "model.char_encoder and model.embedding_dropout read token inputs (data=tagged, data=text)",
            ),
        ]
    )


def reversed_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Each sample's first ``lengths[i]`` steps of a batch-first ``x`` in reverse order, the padding after them left
    in place."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    last = (lengths.to(x.device) - 1).unsqueeze(1)
    index = torch.where(steps <= last, last - steps, steps)
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.shape[2]))


class CharacterEncoder(nn.Module):
    """One vector of ``width`` features per word from its character IDs: ``cnn`` (``channels`` filters, 30 by
    default, of ``kernel`` characters, max-pooled over the word) or ``lstm`` (``channels`` per direction, 25 by
    default: the final states of both directions). Weights: ``embedding.*`` and ``conv.*`` or ``forward_lstm.*``,
    ``backward_lstm.*``. ``dropout`` applies to the character embeddings in training mode."""

    def __init__(
        self,
        encoder: str,
        characters: int,
        embedding_dim: int = 30,
        channels: int | None = None,
        kernel: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        if encoder not in ("cnn", "lstm"):
            raise BirnnError(f"model.char_encoder must be cnn or lstm to build character features, got {encoder!r}")
        self.encoder, self.dropout = encoder, dropout
        self.embedding = nn.Embedding(characters, embedding_dim, padding_idx=0)
        if encoder == "cnn":
            self.width = channels or 30
            self.conv = same_conv(embedding_dim, self.width, kernel)
        else:
            hidden = channels or 25
            self.width = 2 * hidden
            self.forward_lstm = nn.LSTM(embedding_dim, hidden, batch_first=True)
            self.backward_lstm = nn.LSTM(embedding_dim, hidden, batch_first=True)

    def forward(self, chars: Tensor) -> Tensor:
        """``(..., chars)`` character IDs -> ``(..., width)`` features; zeros for a word of no characters."""
        shape = chars.shape[:-1]
        chars = chars.reshape(-1, chars.shape[-1])
        lengths = (chars != 0).sum(dim=1)
        x = F.dropout(self.embedding(chars), self.dropout, self.training)
        if self.encoder == "cnn":
            out = self.conv(x.transpose(1, 2))  # (words, channels, chars)
            valid = torch.arange(chars.shape[1], device=chars.device) < lengths.unsqueeze(1)
            out = out.masked_fill(~valid.unsqueeze(1), float("-inf")).amax(dim=2)
        else:
            last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, self.width // 2)
            forward = self.forward_lstm(x)[0].gather(1, last)
            backward = self.backward_lstm(reversed_within(x, lengths))[0].gather(1, last)
            out = torch.cat([forward, backward], dim=2).squeeze(1)
        out = torch.where((lengths > 0).unsqueeze(1), out, 0.0)
        return out.reshape(*shape, self.width)
