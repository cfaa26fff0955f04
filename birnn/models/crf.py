"""A linear-chain CRF over per-step scores: the forward algorithm for the loss, batched Viterbi for decoding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

PAD_TAG = -100  # decoded tag at padded steps (the ignore index of per-step labels)


class CRF(nn.Module):
    """Transition scores between ``num_tags`` tags, plus start and end scores.

    ``emissions`` are ``(batch, steps, num_tags)``; ``lengths`` the valid steps of each sample (every sample has
    at least one). Steps at or beyond a sample's length never enter its score.
    """

    def __init__(self, num_tags: int):
        super().__init__()
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))  # [from, to]

    def nll(self, emissions: Tensor, tags: Tensor, lengths: Tensor) -> Tensor:
        """Negative log-likelihood of ``tags`` (batch, steps) per sample: log Z minus the gold path's score."""
        emissions = emissions.float()
        mask = _mask(emissions, lengths)
        tags = tags.masked_fill(~mask, 0)
        batch = torch.arange(len(tags), device=tags.device)
        gold = self.start[tags[:, 0]] + emissions[batch, 0, tags[:, 0]]
        score = self.start + emissions[:, 0]
        for t in range(1, emissions.shape[1]):
            step = self.transitions[tags[:, t - 1], tags[:, t]] + emissions[batch, t, tags[:, t]]
            gold = gold + step * mask[:, t]
            following = torch.logsumexp(score.unsqueeze(2) + self.transitions + emissions[:, t].unsqueeze(1), dim=1)
            score = torch.where(mask[:, t, None], following, score)
        last = tags[batch, lengths.to(tags.device) - 1]
        gold = gold + self.end[last]
        return torch.logsumexp(score + self.end, dim=1) - gold

    @torch.no_grad()
    def decode(self, emissions: Tensor, lengths: Tensor) -> Tensor:
        """The highest-scoring tag path of each sample (batch, steps), ``PAD_TAG`` beyond its length."""
        emissions = emissions.float()
        mask = _mask(emissions, lengths)
        score = self.start + emissions[:, 0]
        pointers = []
        for t in range(1, emissions.shape[1]):
            best, pointer = (score.unsqueeze(2) + self.transitions).max(dim=1)
            pointers.append(pointer)
            score = torch.where(mask[:, t, None], best + emissions[:, t], score)
        current = (score + self.end).argmax(dim=1)
        path = torch.full(mask.shape, PAD_TAG, dtype=torch.int64, device=emissions.device)
        for t in reversed(range(emissions.shape[1])):
            path[:, t] = torch.where(mask[:, t], current, PAD_TAG)
            if t:
                previous = pointers[t - 1].gather(1, current.unsqueeze(1)).squeeze(1)
                current = torch.where(mask[:, t], previous, current)
        return path


def _mask(emissions: Tensor, lengths: Tensor) -> Tensor:
    """``(batch, steps)`` True at each sample's valid steps."""
    steps = torch.arange(emissions.shape[1], device=emissions.device)
    return steps < lengths.to(emissions.device).unsqueeze(1)
