"""A linear-chain CRF over per-step scores: the forward algorithm for the loss, batched Viterbi for decoding, and
the BIO/BIOES constraints decoding may follow (``model.crf_constraints``).

Cost: each step of the forward algorithm is one small matrix product, ``alpha_t = log(exp(alpha_{t-1} - m) @
exp(T - c)) + m + c + emissions_t`` (``m`` each sample's largest score, ``c`` each tag's largest incoming
transition), rather than a log-sum-exp over ``(batch, tags, tags)``; the gold path's score is a few gathers over
the whole batch. Viterbi keeps only the best score per tag at each step (a max over ``(tags, tags, batch)``
without indices, the costly part of ``torch.max``) and its backtrace recomputes the one argmax it needs per step
over ``(tags, batch)``. Nothing runs per sample in Python, so the decoder traces for export.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from birnn.schema.errors import BirnnError
from birnn.schema.tags import span_scheme

log = logging.getLogger("birnn")

PAD_TAG = -100  # decoded tag at padded steps (the ignore index of per-step labels)
# Smallest sum the forward algorithm takes the log of (float32's smallest normal, e^-87): a tag whose every way in
# lies 87 nats below the step's best score plus its best incoming transition is floored there. Its error in log Z
# is below e^(2 x the span of the transition scores - 87), under float32's precision while that span is under ~35.
TINY = torch.finfo(torch.float32).tiny
BUFFERS = ("allowed_start", "allowed_end", "allowed")  # the constraints, in the state dict (True: allowed)


class CRF(nn.Module):
    """Transition scores between ``num_tags`` tags, plus start and end scores, and the constraints decoding obeys.

    ``emissions`` are ``(batch, steps, num_tags)``; ``lengths`` the valid steps of each sample (every sample has
    at least one). Steps at or beyond a sample's length never enter its score. The buffers ``allowed_start``
    (tags a path may start with), ``allowed_end`` (end with) and ``allowed`` ``[from, to]`` are all True (no
    constraint) until ``constrain`` sets them; only ``decode`` reads them: the loss is the unconstrained CRF's.
    """

    def __init__(self, num_tags: int):
        super().__init__()
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))  # [from, to]
        self.register_buffer("allowed_start", torch.ones(num_tags, dtype=torch.bool))
        self.register_buffer("allowed_end", torch.ones(num_tags, dtype=torch.bool))
        self.register_buffer("allowed", torch.ones(num_tags, num_tags, dtype=torch.bool))

    def constrain(self, start: Tensor, end: Tensor, transitions: Tensor) -> None:
        """Let decoding start, end and move only where these boolean masks are True."""
        self.allowed_start.copy_(start)
        self.allowed_end.copy_(end)
        self.allowed.copy_(transitions)

    def nll(self, emissions: Tensor, tags: Tensor, lengths: Tensor) -> Tensor:
        """Negative log-likelihood of ``tags`` (batch, steps) per sample: log Z minus the gold path's score."""
        emissions = emissions.float()
        lengths = lengths.to(emissions.device)
        mask = _mask(emissions, lengths)
        with torch.autocast(emissions.device.type, enabled=False):  # the matrix products stay in float32
            log_z = self._log_partition(emissions, mask)
        return log_z - self._gold(emissions, tags.masked_fill(~mask, 0), mask, lengths)

    def _gold(self, emissions: Tensor, tags: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        """The score of each sample's path ``tags`` (0 at padded steps, which ``mask`` leaves out)."""
        emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2).masked_fill(~mask, 0).sum(1)
        moved = self.transitions[tags[:, :-1], tags[:, 1:]].masked_fill(~mask[:, 1:], 0).sum(1)
        last = tags.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
        return self.start[tags[:, 0]] + emitted + moved + self.end[last]

    def _log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """log Z per sample by the forward algorithm, one matrix product per step.

        The shifts (``top``: each sample's best score; ``shift``: each tag's best incoming transition) are
        constants to autograd: the result does not depend on them, so its gradient is exact without them.
        """
        shift = self.transitions.detach().amax(0)
        factors = (self.transitions - shift).exp()  # [from, to], each column's largest 1
        shifted = emissions + shift
        alpha = self.start + emissions[:, 0]
        for t in range(1, emissions.shape[1]):
            top = alpha.detach().amax(1, keepdim=True)
            summed = ((alpha - top).exp() @ factors).clamp_min(TINY).log()
            alpha = torch.where(mask[:, t, None], summed + top + shifted[:, t], alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    @torch.no_grad()
    def decode(self, emissions: Tensor, lengths: Tensor) -> Tensor:
        """The highest-scoring allowed tag path of each sample (batch, steps), ``PAD_TAG`` beyond its length."""
        never = float("-inf")
        emissions = emissions.float()
        mask = _mask(emissions, lengths)
        steps = emissions.shape[1]
        transitions = self.transitions.masked_fill(~self.allowed, never)
        # (tags, batch) layout: the max over the previous tag is over the outermost dimension of (from, to, batch)
        per_step = emissions.permute(1, 2, 0).contiguous()
        score = (self.start.masked_fill(~self.allowed_start, never).unsqueeze(1) + per_step[0]).contiguous()
        scores = [score]
        for t in range(1, steps):
            best = (score.unsqueeze(1) + transitions.unsqueeze(2)).amax(0)
            score = torch.where(mask[:, t], best + per_step[t], score)
            scores.append(score)
        current = (score + self.end.masked_fill(~self.allowed_end, never).unsqueeze(1)).argmax(0)
        path = []
        for t in reversed(range(steps)):
            path.append(torch.where(mask[:, t], current, PAD_TAG))
            if t:  # the previous tag: the argmax that the max above took for the current tag
                previous = (scores[t - 1] + transitions[:, current]).argmax(0)
                current = torch.where(mask[:, t], previous, current)
        return torch.stack(path[::-1], dim=1)


def _mask(emissions: Tensor, lengths: Tensor) -> Tensor:
    """``(batch, steps)`` True at each sample's valid steps."""
    steps = torch.arange(emissions.shape[1], device=emissions.device)
    return steps < lengths.to(emissions.device).unsqueeze(1)


def allowed_transitions(classes: Sequence[str]) -> tuple[Tensor, Tensor, Tensor] | None:
    """The start, end and ``[from, to]`` masks of valid BIO (IOB2) or BIOES sequences over the tags ``classes``
    (as AllenNLP's ``allowed_transitions``); None when the names are neither. IOB2: no ``I-X`` first or after
    anything but ``B-X``/``I-X``. BIOES: ``B-X`` and ``I-X`` go on to ``I-X`` or ``E-X`` only; a sequence starts,
    and follows ``O``/``E-``/``S-``, with ``O``, ``B-`` or ``S-``; it ends with ``O``, ``E-`` or ``S-``."""
    scheme = span_scheme(classes)
    if scheme is None:
        return None
    parts = [("O", None) if c == "O" else tuple(c.split("-", 1)) for c in classes]
    inside = ("B", "I")  # continued by the same type's I- (and E-)

    def follows(a: tuple, b: tuple) -> bool:
        if scheme == "IOB2":
            return b[0] != "I" or (a[0] in inside and a[1] == b[1])
        if a[0] in inside:
            return b[0] in ("I", "E") and a[1] == b[1]
        return b[0] in ("O", "B", "S")

    opening = ("O", "B") if scheme == "IOB2" else ("O", "B", "S")
    closing = ("O", "B", "I") if scheme == "IOB2" else ("O", "E", "S")
    start = torch.tensor([p[0] in opening for p in parts])
    end = torch.tensor([p[0] in closing for p in parts])
    return start, end, torch.tensor([[follows(a, b) for b in parts] for a in parts])


def broken_sequences(y: Tensor, start: Tensor, end: Tensor, transitions: Tensor) -> int:
    """How many rows of per-step labels ``y`` (``PAD_TAG`` past each length) start, move or end where the masks
    forbid."""
    valid = y != PAD_TAG
    lengths = valid.sum(1)
    y, valid = y[lengths > 0], valid[lengths > 0]
    tags = y.clamp_min(0)
    start, end, transitions = start.to(y.device), end.to(y.device), transitions.to(y.device)
    last = tags.gather(1, (valid.sum(1, keepdim=True) - 1))[:, 0]
    moved = ~transitions[tags[:, :-1], tags[:, 1:]] & valid[:, 1:]
    return int((~start[tags[:, 0]] | ~end[last] | moved.any(1)).sum())


def check_setting(setting: object) -> None:
    """Refuse a ``model.crf_constraints`` other than auto, true or false."""
    if not (isinstance(setting, bool) or setting == "auto"):
        raise BirnnError(f"model.crf_constraints must be auto, true or false; got {setting!r}")


def configure(crf: CRF, setting: str | bool, classes: Sequence[str], train_y: Tensor) -> None:
    """Set ``crf``'s constraints for ``model.crf_constraints`` (``auto``: on when ``classes`` are BIO/BIOES names
    and every gold sequence of the training split ``train_y`` obeys them) and log which."""
    check_setting(setting)
    if setting is False:
        log.info("CRF constraints: off (model.crf_constraints=false)")
        return
    masks = allowed_transitions(classes)
    if masks is None:
        if setting is True:
            raise BirnnError(
                "model.crf_constraints=true needs BIO or BIOES tag names (O, B-X, I-X, E-X, S-X); "
                f"the tags are {', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''}"
            )
        log.info("CRF constraints: off (the tag names are not BIO/BIOES: O, and B-X among B-, I-, E-, S- plus a type)")
        return
    scheme, broken = span_scheme(classes), broken_sequences(train_y, *masks)
    if broken and setting == "auto":
        log.info(
            "CRF constraints: off (%d of %d training sequences break %s's transitions, e.g. an I- tag after O: "
            "IOB1 tags?); model.crf_constraints=true turns them on",
            broken,
            len(train_y),
            scheme,
        )
        return
    crf.constrain(*masks)
    log.info("CRF constraints: on (%s tags): decoding never yields a sequence %s forbids", scheme, scheme)
    if broken:
        log.warning("CRF constraints: %d of %d training sequences break them", broken, len(train_y))


def with_constraints(model: nn.Module, state: dict) -> dict:
    """``state`` (a checkpoint's model state) with the constraint buffers of each of ``model``'s CRFs that it
    lacks (written before they existed) allowing everything, as its model decoded."""
    missing = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, CRF) and f"{prefix}transitions" in state:
            missing |= {prefix + b: torch.ones_like(getattr(module, b)) for b in BUFFERS if prefix + b not in state}
    return {**state, **missing} if missing else state
