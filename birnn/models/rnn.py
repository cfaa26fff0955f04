"""The (Bi)LSTM / (Bi)GRU sequence classifier, its readouts and the last-step shortcut; building any model component.

``model(x)`` runs a fixed-length batch as it is; ``model(x, lengths)`` packs it
(``pack_padded_sequence``) so the zero padding after each sample's ``lengths[i]`` valid steps never enters
the recurrence, and every readout reads each sample at its own length.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_packed_sequence

from birnn.models.characters import CharacterEncoder, check_characters
from birnn.models.crf import CRF, check_setting
from birnn.models.embedding import embed
from birnn.models.layers import pack
from birnn.models.stem import ConvStem, check_stem
from birnn.schema import trust
from birnn.schema.config import RNN_CLASSIFIER
from birnn.schema.errors import BirnnError, check_config, first_line

log = logging.getLogger("birnn")
READOUTS = ("last", "final", "mean", "max")
_GATES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# model.cell -> (multi-layer cuDNN-capable module, one-step cell with the same gate layout)
CELLS: dict[str, tuple[type[nn.RNNBase], type[nn.RNNCellBase]]] = {
    "lstm": (nn.LSTM, nn.LSTMCell),
    "gru": (nn.GRU, nn.GRUCell),
}


def _at_last_step(x: Tensor, lengths: Tensor) -> Tensor:
    """``x[i, lengths[i] - 1]`` for every sample ``i`` of a batch-first ``x``."""
    steps = (lengths - 1).to(x.device)
    return x[torch.arange(len(x), device=x.device), steps]


def _final_hidden(hidden: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    """``h_n`` of an LSTM's ``(h_n, c_n)`` or of a GRU's ``h_n``."""
    return hidden[0] if isinstance(hidden, tuple) else hidden


def token_inputs(
    x: Tensor,
    embedding: nn.Embedding,
    pretrained: Tensor | None,
    characters: CharacterEncoder | None,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """What the recurrence reads of token inputs: each token's embedding, with its character features after it when
    ``characters`` is given (``x`` (batch, steps, 1 + chars): the token ID, then its character IDs), and ``dropout``
    on the whole in training mode."""
    if characters is None:
        out = embed(x, embedding, pretrained)
    else:
        out = torch.cat([embed(x[..., 0], embedding, pretrained), characters(x[..., 1:])], dim=-1)
    return F.dropout(out, dropout, training)


class _LastStepPath:
    """Computes ``rnn(x)[0][:, -1]`` of a bidirectional ``nn.LSTM``/``nn.GRU`` without the work the readout never sees.

    At the last time step the top layer's backward direction has read only the final input, so it runs for
    one step (an ``LSTMCell``/``GRUCell``) instead of all of them; the lower layers and the top forward
    direction run in full (packed when lengths are given; the backward cell then reads each sample's own
    last valid input). The helper modules alias the parameters of ``rnn`` (same ``Parameter`` objects),
    so the model's ``state_dict`` stays exactly ``rnn``'s and the optimizer sees one set.
    """

    def __init__(self, rnn: nn.LSTM | nn.GRU):
        module, cell = CELLS[rnn.mode.lower()]
        layers, hidden = rnn.num_layers, rnn.hidden_size
        top = layers - 1
        top_in = rnn.input_size if top == 0 else 2 * hidden
        self.dropout = rnn.dropout
        # Built on the meta device (no memory, no RNG draws), then pointed at rnn's parameters.
        self.lower = (
            module(
                rnn.input_size, hidden, top, batch_first=True, bidirectional=True, dropout=rnn.dropout, device="meta"
            )
            if top
            else None
        )
        self.top_forward = module(top_in, hidden, 1, batch_first=True, device="meta")
        self.top_backward = cell(top_in, hidden, device="meta")
        if self.lower is not None:
            for name in self.lower._flat_weights_names:
                setattr(self.lower, name, getattr(rnn, name))
        for gate in _GATES:
            setattr(self.top_forward, f"{gate}_l0", getattr(rnn, f"{gate}_l{top}"))
            setattr(self.top_backward, gate, getattr(rnn, f"{gate}_l{top}_reverse"))

    def __call__(self, x: Tensor, training: bool, lengths: Tensor | None = None) -> Tensor:
        if lengths is not None:
            return self._packed(x, training, lengths)
        if self.lower is not None:
            self.lower.train(training)
            x, _ = self.lower(x)
            x = F.dropout(x, self.dropout, training)
        forward, _ = self.top_forward(x)
        backward = _final_hidden(self.top_backward(x[:, -1]))
        return torch.cat([forward[:, -1], backward], dim=1)

    def _packed(self, x: Tensor, training: bool, lengths: Tensor) -> Tensor:
        packed = pack(x, lengths)
        if self.lower is not None:
            self.lower.train(training)
            packed, _ = self.lower(packed)
            packed = packed._replace(data=F.dropout(packed.data, self.dropout, training))
            x, _ = pad_packed_sequence(packed, batch_first=True)
        _, hidden = self.top_forward(packed)  # the forward output at the last valid step is its final state
        backward = _final_hidden(self.top_backward(_at_last_step(x, lengths)))
        return torch.cat([_final_hidden(hidden)[-1], backward], dim=1)


class RNNClassifier(nn.Module):
    """LSTM or GRU over the steps of an input (batch, steps, features) and a linear classifier on a readout.

    Readouts: ``last`` (output at the last step, the tutorial's), ``final`` (final hidden states of the
    top layer, both directions concatenated), ``mean`` (output averaged over time) and ``max`` (each feature's
    largest output over time); with ``lengths``, "last step" and "over time" mean each sample's own valid steps.
    Parameter names match the tutorial's model (``lstm.*``, ``fc.*``); a GRU's are ``gru.*``.

    Token data (``vocab_size`` given): int64 IDs ``(batch, steps)`` pass an ``nn.Embedding`` (``embedding.*``,
    padding ID 0) first; with ``frozen_words`` the last IDs are pretrained words read from the ``pretrained`` buffer
    (``birnn.models.embedding``); ``freeze_embeddings``: the embedding does not train. ``per_step``: the head reads
    every step and the logits are ``(batch, steps, num_classes)`` (readouts do not apply); ``crf`` adds a
    linear-chain CRF (``crf.*``) that the training loss and the decoding use (``birnn.engine.loop``);
    ``crf_constraints`` (auto, true, false) says whether its decoding follows the BIO/BIOES rules of the tag names,
    which the training run sets (``birnn.models.crf.configure``).

    ``char_encoder`` (``cnn``, ``lstm``; token data with ``characters`` IDs, ``birnn.models.characters``): each
    token's character features (``characters.*``: ``char_embedding_dim`` per character, ``char_channels`` filters of
    ``char_kernel`` characters, or per LSTM direction) after its embedding; the inputs are then ``(batch, steps,
    1 + chars)``, the token ID then its character IDs. ``embedding_dropout``: dropout on the token inputs (the
    characters' embeddings, and each token's embedding and character features together) in training mode.

    ``stem="conv"``: a learned patch embedding (``birnn.models.stem``, ``stem.*``) reads the steps (after the
    embedding, if any) first; the recurrence then runs over ``ceil(steps / stem_stride)`` steps of
    ``stem_channels`` features and the lengths shrink alike. ``"none"`` (the default) adds nothing.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        bidirectional: bool = True,
        dropout: float = 0.0,
        readout: str = "last",
        backward_shortcut: bool = True,
        cell: str = "lstm",
        embedding_dim: int | None = 64,
        crf: bool = False,
        crf_constraints: str | bool = "auto",
        vocab_size: int | None = None,
        per_step: bool = False,
        stem: str = "none",
        stem_kernel: int = 8,
        stem_stride: int = 4,
        stem_channels: int = 64,
        freeze_embeddings: bool = False,
        frozen_words: int = 0,
        char_encoder: str = "none",
        char_embedding_dim: int = 30,
        char_channels: int | None = None,
        char_kernel: int = 3,
        embedding_dropout: float = 0.0,
        characters: int | None = None,
        head_dropout: float = 0.0,
    ):
        super().__init__()
        embedding_dim = embedding_dim or 64
        check_options(hidden_size, num_layers, dropout, readout, cell)
        check_config([(0 <= head_dropout < 1, f"model.head_dropout must be in [0, 1), got {head_dropout}")])
        check_stem(stem, stem_kernel, stem_stride, stem_channels, MAX_WIDTH, per_step)
        if crf and not per_step:
            raise BirnnError("model.crf=true needs per-step labels (data=tagged, or arrays with y of shape (N, steps))")
        check_setting(crf_constraints)
        check_characters(
            char_encoder, char_embedding_dim, char_channels, char_kernel, embedding_dropout, vocab_size is not None
        )
        if (char_encoder != "none") != (characters is not None):
            raise BirnnError(
                f"model.char_encoder={char_encoder} with {'no ' if characters is None else ''}character IDs in the "
                "data: the character vocabulary comes with the data when model.char_encoder is cnn or lstm"
            )
        if crf_constraints is True and not crf:
            raise BirnnError("model.crf_constraints=true needs model.crf=true: the constraints are the CRF's")
        if vocab_size is not None and not 0 < embedding_dim <= MAX_WIDTH:
            raise BirnnError(f"model.embedding_dim must be in 1..{MAX_WIDTH}, got {embedding_dim}")
        if per_step and (readout != "last" or not backward_shortcut):
            log.warning("model.readout and model.backward_shortcut do not apply to per-step labels: every step is read")
        self.readout, self.cell, self.per_step = readout, cell, per_step
        self.embedding_dropout = embedding_dropout
        if vocab_size is not None:
            self.embedding = nn.Embedding(vocab_size - frozen_words, embedding_dim, padding_idx=0)
            self.embedding.weight.requires_grad_(not freeze_embeddings)
            if frozen_words:  # pretrained words outside the training split: a buffer, so no optimizer state
                self.register_buffer("pretrained", torch.zeros(frozen_words, embedding_dim))
            input_size = embedding_dim
        if characters is not None:
            self.characters = CharacterEncoder(
                char_encoder, characters, char_embedding_dim, char_channels, char_kernel, embedding_dropout
            )
            input_size += self.characters.width
        if stem == "conv":
            self.stem = ConvStem(input_size, stem_channels, stem_kernel, stem_stride)
            input_size = stem_channels
        self.add_module(
            cell,
            CELLS[cell][0](
                input_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional, dropout=dropout
            ),
        )
        self.fc = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)
        # no parameters: checkpoints are the same with and without them; identity in eval mode
        self.head_dropout = nn.Dropout(head_dropout) if head_dropout else None
        if crf:
            self.crf = CRF(num_classes)
        shortcut = backward_shortcut and readout == "last" and bidirectional and not per_step
        # Not a submodule: it only borrows the recurrent module's parameters.
        self._last_step = _LastStepPath(self.rnn) if shortcut else None

    @property
    def rnn(self) -> nn.LSTM | nn.GRU:
        """The recurrent module (registered as ``lstm`` or ``gru``)."""
        return getattr(self, self.cell)

    def features(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if lengths is not None and not len(lengths):
            lengths = None  # an empty batch (a process's share of DDP's last batch) has nothing to pack
        if hasattr(self, "embedding"):
            x = token_inputs(
                x,
                self.embedding,
                getattr(self, "pretrained", None),
                getattr(self, "characters", None),
                self.embedding_dropout,
                self.training,
            )
        if hasattr(self, "stem"):
            x, lengths = self.stem(x, lengths)
        if self._last_step is not None:
            return self._last_step(x, self.training, lengths)
        if self.per_step:
            return self._every_step(x, lengths)
        if lengths is None:
            out, hidden = self.rnn(x)
        else:
            packed, hidden = self.rnn(pack(x, lengths))
            out = None if self.readout == "final" else pad_packed_sequence(packed, batch_first=True)[0]
        h_n = _final_hidden(hidden)
        if self.readout == "final":
            return torch.cat([h_n[-2], h_n[-1]], dim=1) if self.rnn.bidirectional else h_n[-1]
        if lengths is None:
            return out[:, -1, :] if self.readout == "last" else pooled(out, self.readout)
        if self.readout == "last":
            return _at_last_step(out, lengths)
        return pooled(out, self.readout, lengths)

    def _every_step(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """The top layer's output at every step (batch, steps, directions x hidden); zeros beyond a length."""
        if lengths is None:
            return self.rnn(x)[0]
        packed, _ = self.rnn(pack(x, lengths))
        return pad_packed_sequence(packed, batch_first=True, total_length=x.shape[1])[0]

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Logits in fp32 for ``x`` (batch, steps, features), each sample's first ``lengths[i]`` steps if given;
        ``(batch, steps, classes)`` for per-step labels.

        Under autocast only the recurrent features run in low precision: the linear head runs in fp32
        (low-precision logits blur the loss gradient and cost accuracy)."""
        features = self.features(x, lengths)
        if self.head_dropout is not None:
            features = self.head_dropout(features)
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self.fc(features.float())
        return self.fc(features)


def pooled(out: Tensor, readout: str, lengths: Tensor | None = None) -> Tensor:
    """``out`` (batch, steps, features) pooled over time by ``readout`` (``mean`` or ``max``), each sample over its
    first ``lengths[i]`` steps if given."""
    if lengths is None:
        return out.mean(dim=1) if readout == "mean" else out.amax(dim=1)
    steps = torch.arange(out.shape[1], device=out.device).unsqueeze(0)
    valid = (steps < lengths.to(out.device).unsqueeze(1)).unsqueeze(2)
    if readout == "max":
        return out.masked_fill(~valid, float("-inf")).amax(dim=1)
    return (out * valid).sum(dim=1) / lengths.to(out.device, out.dtype).unsqueeze(1)


MAX_WIDTH, MAX_LAYERS = 65_536, 64  # far beyond any recurrent classifier: refuses typos like 1000000000


def check_options(hidden_size: int, num_layers: int, dropout: float, readout: str, cell: str) -> None:
    """Raise one BirnnError listing every ``model.*`` value RNNClassifier cannot be built with."""
    check_config(
        [
            (0 < hidden_size <= MAX_WIDTH, f"model.hidden_size must be in 1..{MAX_WIDTH}, got {hidden_size}"),
            (0 < num_layers <= MAX_LAYERS, f"model.num_layers must be in 1..{MAX_LAYERS}, got {num_layers}"),
            (0 <= dropout < 1, f"model.dropout must be in [0, 1), got {dropout}"),
            (readout in READOUTS, f"model.readout must be one of {', '.join(READOUTS)}; got {readout!r}"),
            (cell in CELLS, f"model.cell must be one of {', '.join(CELLS)}; got {cell!r}"),
        ]
    )


def _innermost(error: BaseException) -> BaseException:
    """The exception at the bottom of a chain of ``raise ... from``."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def build_model(
    cfg: DictConfig,
    input_size: int,
    num_classes: int,
    allow: Iterable[str] | None = None,
    vocab_size: int | None = None,
    per_step: bool = False,
    frozen_words: int = 0,
    characters: int | None = None,
) -> nn.Module:
    """The model ``cfg`` (the ``model`` node) names: ``cfg._target_(input_size=..., num_classes=..., **keys)``.

    Token data add ``vocab_size=...`` (``input_size`` is then the vocabulary size too) and per-step labels add
    ``per_step=True``; neither is passed otherwise, so a model for float sequences needs neither. ``characters``
    (the number of character IDs, ``model.char_encoder``) reaches only birnn's RNNClassifier; another model given
    ``model.char_encoder`` is refused.

    Training (``allow`` None) instantiates the user's own config with Hydra. Restoring a checkpoint passes
    ``allow``: the stored ``_target_`` is resolved under the trust rule (``birnn.schema.trust``) and called with the
    stored keys as plain values, so nothing nested in them is instantiated.
    """
    target = cfg.get("_target_")
    if target not in (RNN_CLASSIFIER, f"{__name__}.RNNClassifier") and (
        characters is not None or cfg.get("char_encoder", "none") != "none"
    ):
        raise BirnnError(
            f"model.char_encoder: character features belong to birnn's recurrent classifier (model=bilstm, "
            f"model=bigru), not {target}"
        )
    given = {
        "input_size": input_size,
        "num_classes": num_classes,
        **({"vocab_size": vocab_size} if vocab_size is not None else {}),
        **({"per_step": True} if per_step else {}),
        **({"frozen_words": frozen_words} if frozen_words else {}),
        **({"characters": characters} if characters is not None else {}),
    }
    try:
        if allow is None:
            model = instantiate(cfg, **given)
        else:
            factory = trust.resolve(target, "model._target_", allow)
            keys = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "_target_"}
            model = factory(**given, **keys)
    except BirnnError:
        raise
    except InstantiationException as e:  # Hydra's wrapper around the import or the call that failed
        cause = _innermost(e)
        if isinstance(cause, BirnnError):
            raise cause from None
        if isinstance(cause, ImportError):
            raise BirnnError(
                f"model._target_={target} cannot be imported ({type(cause).__name__}: "
                f"{first_line(cause)}); install it or put its module on the path (the working "
                "directory counts)."
            ) from None
        raise BirnnError(
            f"model._target_={target} cannot be built: {type(cause).__name__}: {first_line(cause)}"
        ) from None
    except Exception as e:  # a user's model may raise anything; one line names it
        raise BirnnError(f"model._target_={target} cannot be built: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise BirnnError(f"model._target_={target} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model
