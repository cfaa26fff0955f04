"""Token embeddings with pretrained words beyond the trained table (``data.vectors``, ``birnn.data.vectors``).

The training split's tokens (IDs below ``embedding.num_embeddings``) have trainable rows; words only the pretrained
vectors hold come after them and are read from a frozen buffer, so a 400,000-word table costs no gradient, no
optimizer state and no update per step, yet a word training never saw keeps its vector at evaluate and predict time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from birnn.schema.errors import BirnnError


def embed(ids: Tensor, embedding: nn.Embedding, pretrained: Tensor | None) -> Tensor:
    """The embeddings of token ``ids``: the trained table's rows, and ``pretrained``'s for IDs beyond it."""
    if pretrained is None:
        return embedding(ids)
    trained = embedding.num_embeddings
    inside = ids < trained
    own = embedding(torch.where(inside, ids, 0))
    other = F.embedding(torch.where(inside, 0, ids - trained), pretrained)
    return torch.where(inside.unsqueeze(-1), own, other)


@torch.no_grad()
def load_vectors(model: nn.Module, table: Tensor) -> None:
    """Fill ``model``'s embedding from ``table`` ((vocab, dim), NaN rows: keep the model's own initialization):
    the trained rows first, then the frozen ``pretrained`` buffer."""
    embedding = getattr(model, "embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise BirnnError("data.vectors needs a model with a word embedding (model=bilstm or bigru)")
    trained = embedding.num_embeddings
    weight = embedding.weight
    own = table[:trained].to(weight.device, weight.dtype)
    has = ~own.isnan().any(dim=1)
    weight[has] = own[has]
    if len(table) > trained:
        model.pretrained.copy_(table[trained:].to(model.pretrained.device, model.pretrained.dtype))
