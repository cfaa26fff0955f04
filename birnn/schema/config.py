"""Structured-config schemas (registered in Hydra's ConfigStore) and the range checks Hydra cannot do.

Each YAML under ``conf/<group>/`` names its schema in its own defaults list
(``/schema/<group>/<name>@_here_``), so a wrong type or an unknown key is rejected at composition,
before any data loads. ``validate`` then checks ranges and choices.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from birnn.schema.errors import BirnnError, first_line
from birnn.schema.metrics import TASK_MONITORS

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("32", "bf16", "16")
MAX_THREADS = 4 * (os.cpu_count() or 1)
TEST_ON = ("last", "best")
TASKS = tuple(TASK_MONITORS)
LOSSES = ("mse", "mae", "huber")  # task.loss
# data.signature_suffixes' default: common English endings (inflection, derivation, possessive 's); the longest a
# word ends with goes into its signature
SIGNATURE_SUFFIXES = (
    *("ing", "ed", "ly", "s", "es", "ies", "'s", "ion", "er", "ers", "est", "al", "ive", "ous", "ful", "less"),
    *("able", "ible", "ment", "ness", "ity", "ic", "ism", "ist", "ize", "y"),
)
log = logging.getLogger("birnn")
RNN_CLASSIFIER = "birnn.models.RNNClassifier"  # the model of checkpoints written before model._target_
# Where birnn's own components moved when the modules became packages (2026-12): checkpoints and configs that
# name the old homes keep working (a user's config gets one warning per name).
RENAMED = {
    "birnn.model.RNNClassifier": RNN_CLASSIFIER,
    "birnn.arrays.load_arrays": "birnn.data.load_arrays",
    "birnn.sequences.load_uea": "birnn.data.load_uea",
    "birnn.schedule.warmup_cosine": "birnn.engine.schedule.warmup_cosine",
    "birnn.tracking.TensorBoard": "birnn.records.tracking.TensorBoard",
    "birnn.mlflow_tracking.MLflow": "birnn.records.mlflow_tracking.MLflow",
}

_PACKAGE = Path(__file__).resolve().parents[1]  # birnn/
# The config tree: ``birnn/conf/`` in an installed wheel (package data built from the repository's
# ``conf/``), else the ``conf/`` beside this package (a checkout, editable or on PYTHONPATH). Found from this
# file, not by importing ``birnn.conf``, so it never depends on which editable install's finder wins.
CONFIG_DIR = next(
    (d for d in (_PACKAGE / "conf", _PACKAGE.parent / "conf") if (d / "config.yaml").is_file()), _PACKAGE / "conf"
)


def import_from_cwd() -> None:
    """Let ``_target_`` name modules in the working directory, as under ``python -m``: a console script
    starts with its bin folder on ``sys.path`` instead. Appended, so installed packages still come first."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


@dataclass
class ModelComponentConfig:
    """Any model (``/schema/model/model``, an open node like ``data_schema``): ``_target_`` names a class or
    factory called as ``target(input_size=..., num_classes=..., **the other keys)`` that returns an
    ``nn.Module`` whose ``module(x, lengths=None)`` gives logits."""

    _target_: str = MISSING  # e.g. mymodels.ConvBiGRU (docs/own-model.md)


@dataclass
class ModelConfig:
    """birnn's own model, ``birnn.models.RNNClassifier`` (model=bilstm, model=bigru): its keys are typed."""

    _target_: str = RNN_CLASSIFIER
    hidden_size: int = 128  # units per direction in each recurrent layer
    num_layers: int = 2  # stacked recurrent layers
    bidirectional: bool = True  # false: a plain (unidirectional) LSTM / GRU
    dropout: float = 0.0  # between recurrent layers
    # last: output at the last step (the tutorial's) | final: final hidden states of both directions |
    # mean: mean over time | max: each feature's largest output over time
    readout: str = "last"
    backward_shortcut: bool = (
        True  # readout=last: the last layer's backward direction runs over the final step only (exact, faster)
    )
    cell: str = "lstm"  # lstm | gru (model=bigru): the recurrent module is nn.LSTM / nn.GRU
    # token data only: the nn.Embedding (padding ID 0) in front of the recurrence; null: 64, or data.vectors' dimension
    embedding_dim: int | None = None
    freeze_embeddings: bool = False  # token data: the embeddings do not train (with data.vectors: keep the vectors)
    head_dropout: float = 0.0  # dropout on the features the linear head reads (the readout, or every step's output)
    crf: bool = False  # per-step labels only: a linear-chain CRF on the per-step scores (birnn/models/crf.py)
    # auto | true | false: the CRF decodes only valid BIO/BIOES sequences (no I-X after O); auto: when the tag names
    # are BIO/BIOES and every gold sequence of the training split obeys the rules (IOB1 files do not)
    crf_constraints: Any = "auto"
    # none | conv: a learned patch embedding before the recurrence (birnn/models/stem.py): Conv1d-LayerNorm-GELU,
    # ceil(steps / stem_stride) steps of stem_channels features; after data.patch's reshaping if both are set
    stem: str = "none"
    stem_kernel: int = 8  # steps each stem window reads (>= stem_stride)
    stem_stride: int = 4  # steps between windows: the sequence gets this many times shorter (per-step labels: 1)
    stem_channels: int = 64  # features per step the recurrence reads
    # none | cnn | lstm (token data: data=tagged, data=text with the word tokenizer): each word's character features
    # after its embedding (birnn/models/characters.py), from its spelling before data.lowercase
    char_encoder: str = "none"
    char_embedding_dim: int = 30  # per character
    char_channels: int | None = None  # null: 30 CNN filters (Ma & Hovy 2016), or 25 per LSTM direction (Lample et al.)
    char_kernel: int = 3  # characters each CNN filter reads
    embedding_dropout: float = 0.0  # token data: dropout on the word and character inputs in training (Ma & Hovy: 0.5)


@dataclass
class LSTMFCNConfig:
    """``model=lstm_fcn``: LSTM-FCN (Karim et al. 2017), with MLSTM-FCN's squeeze-and-excite blocks on
    multivariate input (Karim et al. 2019); ``birnn.models.LSTMFCN``. Defaults: the papers'."""

    _target_: str = "birnn.models.LSTMFCN"
    hidden_size: int = 8  # LSTM cells (the papers try 8, 64, 128)
    dropout: float = 0.8  # on the LSTM's final hidden state
    filters: list[int] = field(default_factory=lambda: [128, 256, 128])  # one Conv1d-BatchNorm-ReLU block each
    kernel_sizes: list[int] = field(default_factory=lambda: [8, 5, 3])  # one per block
    # squeeze-and-excite after every block but the last; null: on for input_size > 1 (MLSTM-FCN), else off
    squeeze_excite: bool | None = None
    reduction: int = 16  # squeeze-and-excite: channels / reduction hidden units


@dataclass
class InceptionTimeConfig:
    """``model=inception_time``: one InceptionTime network (Ismail Fawaz et al. 2020; the published classifier
    is an ensemble of five from different seeds); ``birnn.models.InceptionTime``. Defaults: the paper's."""

    _target_: str = "birnn.models.InceptionTime"
    depth: int = 6  # Inception modules
    filters: int = 32  # per branch: each convolution and the max-pooling branch
    kernel_sizes: list[int] = field(default_factory=lambda: [40, 20, 10])  # the reference code's (41 - 1, halved)
    bottleneck: int = 32  # 1x1 bottleneck filters before the convolutions; 0: none (none on one input channel)
    residual: bool = True  # a shortcut around every three modules


MODEL_SCHEMAS: dict[str, type] = {
    cls._target_: cls for cls in (ModelConfig, LSTMFCNConfig, InceptionTimeConfig)
}  # birnn's own models: their keys are typed


@dataclass
class DataConfig:
    """The keys every data option has. The node is open (see ``data_schema``): a loader's own keys go beside
    these and reach the loader as keyword arguments, while these stay typed."""

    _target_: str = MISSING  # loader: (root, download, **kwargs) -> birnn.data.Splits
    root: str = "data"  # where the loader finds (or downloads) its files
    download: bool = True  # fetch missing files (MNIST, Fashion-MNIST)
    batch_size: int = 100  # the global batch (split among processes under torchrun)
    eval_batch_size: int = 500
    val_size: int = 0  # training samples held out for validation (0 = the tutorial: none)
    split_seed: int = 0
    normalize: bool = False  # per-feature standardization with the training split's mean and std
    # each series z-normalized by its own mean and std per channel over its valid steps, before data.normalize
    normalize_series: bool = False
    # k steps read as one step of k x features (birnn/data/patches.py); auto: from the training split's length
    patch: Any = 1
    # Validation split as a fraction of the training split (when val_size is 0). A multirun or a search whose
    # jobs set neither gets SWEEP_VAL_FRACTION (birnn/studies/selection.py).
    val_fraction: float = 0.0
    folds: int = 0  # K > 1: stratified K-fold over the training split; fold `fold` is the validation split
    fold: int = 0


@dataclass
class UEADataConfig(DataConfig):
    """``data=uea``: a UCR/UEA archive problem in its ``.ts`` format (``birnn/data/uea.py``)."""

    _target_: str = "birnn.data.load_uea"
    root: str | None = None  # null: the problems bundled with aeon; else a local copy of the archive
    download: bool = False  # true is refused: birnn does not download archive problems
    name: str | None = None  # required: the problem, e.g. JapaneseVowels (<root>/<name>/<name>_TRAIN.ts)
    batch_size: int = 32
    normalize: bool = True  # per-channel standardization with the training split's statistics


@dataclass
class TextDataConfig(DataConfig):
    """``data=text``: labelled texts, tokenized (``birnn/data/text.py``, ``birnn/data/tokenize.py``)."""

    _target_: str = "birnn.data.load_text"
    download: bool = False  # unused (as is root)
    path: str | None = None  # required: a .csv/.tsv/.jsonl file, or a folder with one folder of .txt files per class
    test_path: str | None = None  # the test split in the same form; null: data.test_fraction of data.path
    test_fraction: float = 0.2  # without test_path: a stratified fraction of data.path held out for test
    test_seed: int = 0  # seeds the test_fraction draw
    text_column: str = "text"  # CSV/TSV header name or JSONL key of the text
    label_column: str = "label"  # ... and of the label (any string; classes are the training split's, sorted)
    tokenizer: str = "word"  # char | word (letters/digits runs and punctuation) | bpe (needs birnn[text])
    vocab_size: int | None = None  # most frequent tokens kept, <pad> and <unk> included; null: all (bpe: 8000)
    min_freq: int = 1  # tokens seen fewer times in the training split become <unk> (or their signature)
    lowercase: bool = True
    unknown: str = "unk"  # unk | signature (tokenizer=word): a word outside the vocabulary becomes <unk-Cap-ing>...
    signature_suffixes: list[str] = field(default_factory=lambda: [*SIGNATURE_SUFFIXES])  # the endings it may carry
    max_length: int | None = None  # longer texts are truncated to this many tokens (one warning counts them)
    batch_size: int = 32
    # pretrained word vectors (birnn/data/vectors.py): a GloVe, word2vec (text or binary) or fastText .vec file, also
    # .gz; a word with a vector keeps it however rare, and words only the vectors know keep theirs at predict time
    vectors: str | None = None
    vectors_format: str = "auto"  # auto (from the file) | glove | word2vec | word2vec_binary | fasttext
    max_word_length: int = 20  # model.char_encoder: a word's first this many characters are read


@dataclass
class TaggedDataConfig(DataConfig):
    """``data=tagged``: sentences with one tag per token (``birnn/data/tagged.py``)."""

    _target_: str = "birnn.data.load_tagged"
    download: bool = False  # unused (as is root)
    path: str | None = None  # required: a file, or a folder whose files are all read (sorted)
    test_path: str | None = None  # the test split in the same form; null: data.test_fraction of the sentences
    test_fraction: float = 0.1  # without test_path: a fraction of the sentences held out for test
    test_seed: int = 0  # seeds the test_fraction draw
    format: str = "conll"  # conll: one token per line, blank line between sentences | slash: word/tag tokens per line
    token_column: int = 0  # conll: the whitespace column of the token (0-based)
    tag_column: int = -1  # conll: the column of the tag (-1: the last)
    vocab_size: int | None = None  # most frequent words kept, <pad> and <unk> included; null: all
    min_freq: int = 1  # words seen fewer times in the training split become <unk> (or their signature)
    lowercase: bool = True
    unknown: str = "unk"  # unk | signature: a word outside the vocabulary becomes its shape, <unk-Cap-ing>...
    signature_suffixes: list[str] = field(default_factory=lambda: [*SIGNATURE_SUFFIXES])  # the endings it may carry
    max_length: int | None = None  # a longer sentence is refused (naming file and line): tags are never truncated
    batch_size: int = 32
    # pretrained word vectors (birnn/data/vectors.py): a GloVe, word2vec (text or binary) or fastText .vec file, also
    # .gz; a word with a vector keeps it however rare, and words only the vectors know keep theirs at predict time
    vectors: str | None = None
    vectors_format: str = "auto"  # auto (from the file) | glove | word2vec | word2vec_binary | fasttext
    max_word_length: int = 20  # model.char_encoder: a word's first this many characters are read


def data_schema(schema: type = DataConfig) -> DictConfig:
    """A schema as a node that accepts extra (loader or model) keys: struct mode off on this node only."""
    node = OmegaConf.structured(schema)
    OmegaConf.set_struct(node, False)
    return node


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    lr: float = 0.003  # the tutorial's
    weight_decay: float = 0.0


@dataclass
class AdamWConfig:
    _target_: str = "torch.optim.AdamW"
    lr: float = 0.003
    weight_decay: float = 0.01


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass
class CosineConfig:
    """``scheduler=cosine``: linear warm-up to optimizer.lr, then cosine decay
    (``birnn.engine.schedule.warmup_cosine``).

    A scheduler is a partial: ``birnn.engine.run`` calls it as ``target(optimizer, total_steps=N, **the other
    keys)``.
    """

    _target_: str = "birnn.engine.schedule.warmup_cosine"
    _partial_: bool = True
    warmup_steps: int = 100  # linear warm-up to optimizer.lr over this many steps
    min_lr_ratio: float = 0.0  # decays to optimizer.lr * min_lr_ratio at the last step


@dataclass
class OneCycleConfig:
    """``scheduler=onecycle``: torch's OneCycleLR, peaking at optimizer.lr."""

    _target_: str = "torch.optim.lr_scheduler.OneCycleLR"
    _partial_: bool = True
    # the peak lr: the optimizer's unless set
    max_lr: float = "${optimizer.lr}"  # type: ignore[assignment]
    pct_start: float = 0.3  # fraction of the steps spent rising to max_lr


@dataclass
class DeviceConfig:
    type: str = "auto"  # auto: cuda, else mps, else cpu | cpu | cuda | mps
    # CPU threads; null = OMP_NUM_THREADS if set, a joblib job's share of the cores, else the cores other processes
    # leave free, measured again every 5 s (docs/speed.md, "Threads on a shared machine")
    num_threads: int | None = None
    cudnn_benchmark: bool = True  # CUDA: let cuDNN pick the fastest kernels for the batch shapes
    # Several processes (torchrun, SLURM): how long a collective waits for a silent peer before the run stops.
    dist_timeout_s: float = 300.0
    tune_allocator: bool = (
        True  # CPU + glibc: keep freed memory in the heap (birnn/system/allocator.py); no effect on CUDA
    )


@dataclass
class TrainerConfig:
    epochs: int = 2  # the tutorial's
    log_every_n_steps: int = 100  # log line + tracker train scalars every N steps, and at an epoch's end without one
    # also a log line once this many seconds passed since the last (off a terminal there is no progress bar); null: off
    log_every_n_seconds: float | None = 60.0
    max_steps: int | None = None  # optional cap on optimizer steps
    grad_clip: float | None = None  # max gradient norm; null = off (the tutorial)
    precision: str = "32"  # 32 | bf16 (autocast, CPU and CUDA) | 16 (CUDA, grad scaler)
    checkpoint_every_n_steps: int = 500  # plus every epoch end; 0 = epoch ends only
    early_stopping_patience: int | None = None  # epochs without validation improvement (needs data.val_size > 0)
    log_images: bool = True  # confusion matrix + misclassified inputs after each test pass (~0.1-0.3 s each on a CPU)
    test_on: str = "last"  # last | best (best.pt, chosen on validation): the checkpoint the final test pass scores
    # Score the test split at every epoch end; null: true for a single run, false in a multirun or a search.
    test_every_epoch: bool | None = None
    # resume from a checkpoint without a checksum (written by a birnn before 2026-11-29): only if you trust the file
    allow_unverified: bool = False
    # what "best" means (best.pt, early stopping, sweep ranking, search objective): val_accuracy | val_f1 (macro-F1
    # over classes or tags) | val_loss; task=regression: val_rmse (its default) | val_mae | val_r2 | val_loss
    monitor: str = "val_accuracy"


@dataclass
class TaskConfig:
    """``task=classification`` (the default) or ``task=regression``: what the targets are (docs/regression.md)."""

    name: str = "classification"  # classification | regression (values, not classes)
    per_step: bool = False  # regression: one value per step, targets (N, steps); NaN = not scored
    loss: str = "mse"  # regression: mse | mae | huber, on the standardized targets
    # regression: fit on targets minus the training split's mean over its std (per output), inverted for every score
    # and prediction
    standardize_targets: bool = True
    log_target: bool = False  # regression: fit log1p of a non-negative (skewed) target, inverted likewise


@dataclass
class TensorBoardConfig:
    """``tracker=tensorboard`` (the default): event files in the run dir (``tensorboard --logdir outputs``)."""

    _target_: str = "birnn.records.tracking.TensorBoard"


@dataclass
class MLflowConfig:
    """``tracker=mlflow``: one MLflow run per birnn run (``birnn.records.mlflow_tracking``; needs ``birnn[mlflow]``)."""

    _target_: str = "birnn.records.mlflow_tracking.MLflow"
    tracking_uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///<working dir>/outputs/mlflow.db
    experiment: str = "birnn"  # the MLflow experiment the runs go to
    log_checkpoints: bool = True  # upload checkpoints/*.pt as artifacts when the run finishes
    # retries of a failed request to a tracking server ($MLFLOW_HTTP_REQUEST_MAX_RETRIES wins); 0: a server that is
    # down costs one warning at once (MLflow's own default retries for minutes)
    request_retries: int = 0
    request_timeout_s: int = 10  # seconds per request to a tracking server ($MLFLOW_HTTP_REQUEST_TIMEOUT wins)


@dataclass
class Config:
    seed: int = 0  # torch's seed: initial weights, dropout and data order
    model: Any = MISSING
    data: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING  # null (scheduler=none): constant lr, the tutorial's
    device: Any = MISSING
    trainer: Any = MISSING
    tracker: Any = MISSING
    task: Any = MISSING  # task=classification (the default) | regression: values instead of classes
    search: Any = None  # python -m birnn.search only (hparams_search=...): the study, see SearchConfig


@dataclass
class SearchConfig:
    """``python -m birnn.search``: an Optuna study over the training config (birnn/search.py)."""

    study_name: str = "birnn"
    dir: str = MISSING  # the study dir: trial run dirs, the default storage, the summary
    storage: str | None = None  # null: sqlite:///<dir>/study.db; any SQLAlchemy URL; a *.journal file path
    n_trials: int = 20  # COMPLETE + PRUNED trials over all workers
    seed: int = 0  # TPE sampler seed of worker 0 (worker i: seed + i)
    worker: int = 0  # this worker's index (several workers on one storage: 0, 1, ...)
    sampler_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of optuna's TPESampler
    pruner: str = "median"  # none | median | successive_halving | hyperband
    pruners: dict[str, dict[str, Any]] = field(default_factory=dict)  # pruner name -> its keyword arguments
    heartbeat_interval_s: int = 30  # RDB storages: a running trial's heartbeat
    heartbeat_grace_s: int = 120  # no heartbeat for this long: its worker is dead, the trial is retried
    max_retries: int = 3  # retries of a trial whose worker died
    # config key -> choice(...) | interval(...) | range(...); null leaves a key of the default space out
    params: dict[str, str | None] = field(default_factory=dict)


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="schema/model", name="bilstm", node=ModelConfig)
    cs.store(group="schema/model", name="model", node=data_schema(ModelComponentConfig))
    cs.store(group="schema/model", name="lstm_fcn", node=LSTMFCNConfig)
    cs.store(group="schema/model", name="inception_time", node=InceptionTimeConfig)
    cs.store(group="schema/data", name="data", node=data_schema())
    cs.store(group="schema/data", name="uea", node=data_schema(UEADataConfig))
    cs.store(group="schema/data", name="text", node=data_schema(TextDataConfig))
    cs.store(group="schema/data", name="tagged", node=data_schema(TaggedDataConfig))
    cs.store(group="schema/optimizer", name="adam", node=AdamConfig)
    cs.store(group="schema/optimizer", name="adamw", node=AdamWConfig)
    cs.store(group="schema/optimizer", name="sgd", node=SGDConfig)
    cs.store(group="schema/scheduler", name="cosine", node=CosineConfig)
    cs.store(group="schema/scheduler", name="onecycle", node=OneCycleConfig)
    cs.store(group="schema/device", name="device", node=DeviceConfig)
    cs.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    cs.store(group="schema/task", name="task", node=TaskConfig)
    search = OmegaConf.structured(SearchConfig)
    OmegaConf.set_struct(search.params, False)  # the search space: any config key (checked by birnn.search)
    cs.store(group="schema/search", name="search", node=search)
    cs.store(group="schema/tracker", name="tensorboard", node=TensorBoardConfig)
    cs.store(group="schema/tracker", name="mlflow", node=MLflowConfig)


register_schemas()

OPTIMIZER_SCHEMAS = {cls._target_: cls for cls in (AdamConfig, AdamWConfig, SGDConfig)}
# data options with their own keys
DATA_SCHEMAS = {cls._target_: cls for cls in (UEADataConfig, TextDataConfig, TaggedDataConfig)}
TYPED_GROUPS = ("model", "data", "optimizer")


def schema_for(group: str, node: dict | DictConfig) -> DictConfig:
    """The schema of a model, data or optimizer option, chosen by its ``_target_`` (birnn's own models have theirs;
    a model without one is birnn's RNNClassifier); an optimizer birnn has no schema for gets an empty node."""
    target = node.get("_target_")
    if group == "model":
        own = MODEL_SCHEMAS.get(RNN_CLASSIFIER if target is None else target)
        return OmegaConf.structured(own) if own else data_schema(ModelComponentConfig)
    if group == "data":
        return data_schema(DATA_SCHEMAS.get(target, DataConfig))
    return OmegaConf.structured(OPTIMIZER_SCHEMAS[target]) if target in OPTIMIZER_SCHEMAS else OmegaConf.create()


def apply_schemas(cfg: DictConfig) -> None:
    """Type (in place) each model, data and optimizer option composed without a schema line in its defaults
    list, e.g. a user's file written for an earlier birnn: it gets the schema ``schema_for`` picks, so the keys
    it leaves out (those added since) take their defaults and the ones it sets are type-checked. Old homes of
    birnn's components are renamed first (``rename_targets``)."""
    rename_targets(cfg)
    for group in TYPED_GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or OmegaConf.get_type(node) is not dict:
            continue
        try:
            typed = OmegaConf.merge(schema_for(group, node), node)
        except OmegaConfBaseException as e:
            raise BirnnError(f"Invalid config: {group}.{e.full_key}: {first_line(e)}") from None
        with open_dict(cfg):
            cfg[group] = typed


def renamed(tree: Any) -> Any:
    """``tree`` (plain containers) with every ``_target_`` that names an old home of birnn's own (``RENAMED``)
    naming the new one."""
    if isinstance(tree, dict):
        return {k: RENAMED.get(v, v) if k == "_target_" else renamed(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [renamed(v) for v in tree]
    return tree


def rename_targets(node: DictConfig, where: str = "") -> None:
    """Point every ``_target_`` of a composed config that names an old home (``RENAMED``) at the new one,
    with one warning per name."""
    for key in node:
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            rename_targets(value, f"{where}{key}.")
        elif key == "_target_" and value in RENAMED:
            log.warning("%s_target_=%s has moved to %s; use the new name.", where, value, RENAMED[value])
            node[key] = RENAMED[value]


def validate(cfg: DictConfig) -> None:
    """Check ranges and choices right after composition (and ``apply_schemas``); raise one BirnnError listing
    every problem."""
    d, o, t = cfg.data, cfg.optimizer, cfg.trainer
    checks = [
        (d.batch_size > 0, f"data.batch_size must be > 0, got {d.batch_size}"),
        (d.eval_batch_size > 0, f"data.eval_batch_size must be > 0, got {d.eval_batch_size}"),
        (d.val_size >= 0, f"data.val_size must be >= 0, got {d.val_size}"),
        (_patch_ok(d.get("patch", 1)), f"data.patch must be a whole number >= 1 or auto, got {d.get('patch')!r}"),
        (math.isfinite(o.lr) and o.lr > 0, f"optimizer.lr must be a finite number > 0, got {o.lr}"),
        (cfg.device.type in DEVICES, f"device.type must be one of {', '.join(DEVICES)}; got {cfg.device.type!r}"),
        (
            cfg.device.num_threads is None or 0 < cfg.device.num_threads <= MAX_THREADS,
            f"device.num_threads must be in 1..{MAX_THREADS} (4 x this machine's cores) or null, "
            f"got {cfg.device.num_threads}",
        ),
        (0 <= cfg.seed < 2**63, f"seed must be in 0..2**63-1, got {cfg.seed}"),
        (cfg.device.dist_timeout_s > 0, f"device.dist_timeout_s must be > 0, got {cfg.device.dist_timeout_s}"),
        (t.epochs > 0, f"trainer.epochs must be > 0, got {t.epochs}"),
        (t.log_every_n_steps > 0, f"trainer.log_every_n_steps must be > 0, got {t.log_every_n_steps}"),
        (
            t.get("log_every_n_seconds") is None or t.log_every_n_seconds > 0,
            f"trainer.log_every_n_seconds must be > 0 or null, got {t.get('log_every_n_seconds')}",
        ),
        (t.max_steps is None or t.max_steps > 0, f"trainer.max_steps must be > 0 or null, got {t.max_steps}"),
        (t.grad_clip is None or t.grad_clip > 0, f"trainer.grad_clip must be > 0 or null, got {t.grad_clip}"),
        (t.precision in PRECISIONS, f"trainer.precision must be one of {', '.join(PRECISIONS)}; got {t.precision!r}"),
        (
            t.checkpoint_every_n_steps >= 0,
            f"trainer.checkpoint_every_n_steps must be >= 0 (0 = epoch ends only), got {t.checkpoint_every_n_steps}",
        ),
        (
            t.early_stopping_patience is None or t.early_stopping_patience > 0,
            f"trainer.early_stopping_patience must be > 0 or null, got {t.early_stopping_patience}",
        ),
        (
            t.early_stopping_patience is None or has_validation(d),
            "trainer.early_stopping_patience needs a validation split: set data.val_size > 0 (or data.folds)",
        ),
        (t.test_on in TEST_ON, f"trainer.test_on must be one of {', '.join(TEST_ON)}; got {t.test_on!r}"),
        (cfg.task.name in TASKS, f"task.name must be one of {', '.join(TASKS)}; got {cfg.task.name!r}"),
        (
            t.monitor in TASK_MONITORS.get(cfg.task.name, ()),
            f"trainer.monitor must be one of {', '.join(TASK_MONITORS.get(cfg.task.name, ()))} under "
            f"task={cfg.task.name}; got {t.monitor!r}",
        ),
        (cfg.task.loss in LOSSES, f"task.loss must be one of {', '.join(LOSSES)}; got {cfg.task.loss!r}"),
        (
            t.test_on == "last" or has_validation(d),
            "trainer.test_on=best needs a validation split: set data.val_size > 0 (or data.folds)",
        ),
        (0 <= d.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {d.val_fraction}"),
        (d.folds == 0 or d.folds > 1, f"data.folds must be 0 (off) or > 1, got {d.folds}"),
        (d.folds == 0 or 0 <= d.fold < d.folds, f"data.fold must be in [0, data.folds), got {d.fold}"),
        (
            d.folds == 0 or (d.val_size == 0 and d.val_fraction == 0),
            "data.folds and data.val_size/data.val_fraction exclude each other: with folds, the held-out fold is "
            "the validation split",
        ),
    ]
    checks += [
        (math.isfinite(v), f"{k} must be a finite number, got {v}")
        for k, v in flatten(to_plain(cfg)).items()
        if isinstance(v, float) and k != "optimizer.lr"
    ]
    problems = [msg for ok, msg in checks if not ok]
    if problems:
        raise BirnnError("Invalid config:\n  " + "\n  ".join(problems))


def _patch_ok(patch: Any) -> bool:
    return patch == "auto" or (isinstance(patch, int) and not isinstance(patch, bool) and patch >= 1)


def has_validation(data: DictConfig) -> bool:
    """Whether the data config holds out a validation split (val_size, val_fraction or folds)."""
    return data.val_size > 0 or data.get("val_fraction", 0) > 0 or data.get("folds", 0) > 1


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain containers (storable with ``torch.save`` / ``weights_only`` loads)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def typed(stored: dict) -> DictConfig:
    """A stored (plain) config typed by the schemas its ``_target_`` names pick: keys added to birnn since it
    was written take their defaults, a wrong type raises OmegaConf's error."""
    stored = renamed(stored)
    groups = {group: schema_for(group, stored.get(group, {})) for group in TYPED_GROUPS}
    schema = OmegaConf.structured(
        Config(**groups, scheduler=None, device=DeviceConfig(), trainer=TrainerConfig(), tracker={}, task=TaskConfig())
    )
    return OmegaConf.merge(schema, stored)


def upgrade(stored: dict) -> dict:
    """A checkpoint's config from an earlier birnn in today's form (to compare on resume, after ``typed``, which
    renames old homes).

    A model without ``_target_`` is birnn's RNNClassifier (``embedding_dim`` 64 if unset). The old
    ``scheduler.name`` switch becomes today's component where the saved schedule state fits it (none, onecycle);
    the old cosine (a ``LambdaLR``) does not.
    """
    model = {"_target_": RNN_CLASSIFIER, **stored.get("model", {})}
    if RENAMED.get(model["_target_"], model["_target_"]) == RNN_CLASSIFIER:
        model.setdefault("embedding_dim", 64)  # its width before the key existed (and before null meant "follow")
    stored = {**stored, "model": model}
    old = stored.get("scheduler") or {}
    if "name" not in old:
        return stored
    if old["name"] == "cosine":
        raise BirnnError(
            "Cannot resume: this run was started with the old scheduler.name=cosine, whose saved "
            "schedule state (a LambdaLR) does not fit today's scheduler=cosine (torch's LinearLR + "
            "CosineAnnealingLR); finish it with the birnn version that started it, or start a new run."
        )
    if old["name"] == "onecycle":
        stored["scheduler"] = {
            "_target_": OneCycleConfig._target_,
            "_partial_": True,
            "max_lr": stored["optimizer"]["lr"],
            "pct_start": old["pct_start"],
        }
    else:
        stored["scheduler"] = None
    return stored
