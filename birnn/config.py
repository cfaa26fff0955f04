"""Structured-config schemas (registered in Hydra's ConfigStore) and the range checks Hydra cannot do.

Each YAML under ``conf/<group>/`` names its schema in its own defaults list
(``/schema/<group>/<name>@_here_``), so a wrong type or an unknown key is rejected at composition,
before any data loads. ``validate`` then checks ranges and choices.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from birnn.errors import BirnnError

READOUTS = ("last", "final", "mean")
CELLS = ("lstm", "gru")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("32", "bf16", "16")
SCHEDULERS = ("none", "cosine", "onecycle")
MAX_WIDTH, MAX_LAYERS = 65_536, 64  # far beyond any recurrent classifier; refuses typos like 1000000000
MAX_THREADS = 4 * (os.cpu_count() or 1)
TEST_ON = ("last", "best")

_PACKAGE = Path(__file__).resolve().parent
# The config tree: ``birnn/conf/`` in an installed wheel (package data built from the repository's
# ``conf/``), else the ``conf/`` beside this package (a checkout, editable or on PYTHONPATH). Found from this
# file, not by importing ``birnn.conf``, so it never depends on which editable install's finder wins.
CONFIG_DIR = next((d for d in (_PACKAGE / "conf", _PACKAGE.parent / "conf") if (d / "config.yaml").is_file()),
                  _PACKAGE / "conf")


def import_from_cwd() -> None:
    """Let ``_target_`` name modules in the working directory, as under ``python -m``: a console script
    starts with its bin folder on ``sys.path`` instead. Appended, so installed packages still come first."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


@dataclass
class ModelConfig:
    hidden_size: int = 128
    num_layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.0
    readout: str = "last"
    # readout=last: run the last layer's backward direction over the final step only (exact, faster).
    backward_shortcut: bool = True
    cell: str = "lstm"  # lstm | gru (model=bigru)


@dataclass
class DataConfig:
    """The keys every data option has. The node is open (see ``data_schema``): a loader's own keys go beside
    these and reach the loader as keyword arguments, while these stay typed."""

    _target_: str = MISSING  # loader: (root, download, **kwargs) -> birnn.data.Splits
    root: str = "data"
    download: bool = True
    batch_size: int = 100
    eval_batch_size: int = 500
    val_size: int = 0
    split_seed: int = 0
    normalize: bool = False  # per-feature standardization with the training split's mean and std
    # k steps read as one step of k x features (birnn/patches.py); auto: from the training split's length
    patch: Any = 1
    # Validation split as a fraction of the training split (when val_size is 0). A multirun or a search whose
    # jobs set neither gets SWEEP_VAL_FRACTION (birnn/selection.py).
    val_fraction: float = 0.0
    folds: int = 0  # K > 1: stratified K-fold over the training split; fold `fold` is the validation split
    fold: int = 0


@dataclass
class UEADataConfig(DataConfig):
    """``data=uea``: a UCR/UEA archive problem in its ``.ts`` format (``birnn/sequences.py``)."""

    _target_: str = "birnn.sequences.load_uea"
    root: Optional[str] = None  # null: the problems bundled with aeon; else a local copy of the archive
    download: bool = False  # true is refused: birnn does not download archive problems
    name: Optional[str] = None  # the problem, e.g. JapaneseVowels (<root>/<name>/<name>_TRAIN.ts)
    batch_size: int = 32
    normalize: bool = True


def data_schema(schema: type[DataConfig] = DataConfig) -> DictConfig:
    """A data schema as a node that accepts extra (loader) keys: struct mode off on this node only."""
    node = OmegaConf.structured(schema)
    OmegaConf.set_struct(node, False)
    return node


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    lr: float = 0.003
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
class SchedulerConfig:
    name: str = "none"
    warmup_steps: int = 0  # linear warm-up from ~0 to optimizer.lr (cosine)
    min_lr_ratio: float = 0.0  # cosine ends at optimizer.lr * min_lr_ratio
    pct_start: float = 0.3  # onecycle: fraction of steps spent rising to optimizer.lr


@dataclass
class DeviceConfig:
    type: str = "auto"
    num_threads: Optional[int] = None  # CPU threads; null = torch's default (joblib launcher: cores / n_jobs)
    cudnn_benchmark: bool = True
    # Several processes (torchrun, SLURM): how long a collective waits for a silent peer before the run stops.
    dist_timeout_s: float = 300.0
    tune_allocator: bool = True  # CPU + glibc: keep freed memory in the heap (birnn/allocator.py)


@dataclass
class TrainerConfig:
    epochs: int = 2
    log_every_n_steps: int = 100
    max_steps: Optional[int] = None
    grad_clip: Optional[float] = None
    precision: str = "32"
    checkpoint_every_n_steps: int = 500
    early_stopping_patience: Optional[int] = None
    log_images: bool = True  # confusion matrix + misclassified grid in TensorBoard after each test pass
    test_on: str = "last"  # last | best (best.pt, chosen on validation): the checkpoint the final test pass scores
    # Score the test split at every epoch end; null: true for a single run, false in a multirun or a search.
    test_every_epoch: Optional[bool] = None


@dataclass
class Config:
    seed: int = 0
    model: Any = MISSING
    data: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    device: Any = MISSING
    trainer: Any = MISSING
    search: Any = None  # python -m birnn.search only (hparams_search=...): the study, see SearchConfig


@dataclass
class SearchConfig:
    """``python -m birnn.search``: an Optuna study over the training config (birnn/search.py)."""

    study_name: str = "birnn"
    dir: str = MISSING  # the study dir: trial run dirs, the default storage, the summary
    storage: Optional[str] = None  # null: sqlite:///<dir>/study.db; any SQLAlchemy URL; a *.journal file path
    n_trials: int = 20  # COMPLETE + PRUNED trials over all workers
    seed: int = 0  # TPE sampler seed of worker 0 (worker i: seed + i)
    worker: int = 0  # this worker's index (several workers on one storage: 0, 1, ...)
    sampler_args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of optuna's TPESampler
    pruner: str = "median"  # none | median | successive_halving | hyperband
    pruners: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # pruner name -> its keyword arguments
    heartbeat_interval_s: int = 30  # RDB storages: a running trial's heartbeat
    heartbeat_grace_s: int = 120  # no heartbeat for this long: its worker is dead, the trial is retried
    max_retries: int = 3  # retries of a trial whose worker died
    # config key -> choice(...) | interval(...) | range(...); null leaves a key of the default space out
    params: Dict[str, Optional[str]] = field(default_factory=dict)


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="schema/model", name="bilstm", node=ModelConfig)
    cs.store(group="schema/data", name="data", node=data_schema())
    cs.store(group="schema/data", name="uea", node=data_schema(UEADataConfig))
    cs.store(group="schema/optimizer", name="adam", node=AdamConfig)
    cs.store(group="schema/optimizer", name="adamw", node=AdamWConfig)
    cs.store(group="schema/optimizer", name="sgd", node=SGDConfig)
    cs.store(group="schema/scheduler", name="scheduler", node=SchedulerConfig)
    cs.store(group="schema/device", name="device", node=DeviceConfig)
    cs.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    search = OmegaConf.structured(SearchConfig)
    OmegaConf.set_struct(search.params, False)  # the search space: any config key (checked by birnn.search)
    cs.store(group="schema/search", name="search", node=search)


register_schemas()


def validate(cfg: DictConfig) -> None:
    """Check ranges and choices right after composition; raise one BirnnError listing every problem."""
    m, d, o, t = cfg.model, cfg.data, cfg.optimizer, cfg.trainer
    checks = [
        (0 < m.hidden_size <= MAX_WIDTH, f"model.hidden_size must be in 1..{MAX_WIDTH}, got {m.hidden_size}"),
        (0 < m.num_layers <= MAX_LAYERS, f"model.num_layers must be in 1..{MAX_LAYERS}, got {m.num_layers}"),
        (0 <= m.dropout < 1, f"model.dropout must be in [0, 1), got {m.dropout}"),
        (m.readout in READOUTS, f"model.readout must be one of {', '.join(READOUTS)}; got {m.readout!r}"),
        (m.cell in CELLS, f"model.cell must be one of {', '.join(CELLS)}; got {m.cell!r}"),
        (d.batch_size > 0, f"data.batch_size must be > 0, got {d.batch_size}"),
        (d.eval_batch_size > 0, f"data.eval_batch_size must be > 0, got {d.eval_batch_size}"),
        (d.val_size >= 0, f"data.val_size must be >= 0, got {d.val_size}"),
        (_patch_ok(d.get("patch", 1)), f"data.patch must be a whole number >= 1 or auto, got {d.get('patch')!r}"),
        (math.isfinite(o.lr) and o.lr > 0, f"optimizer.lr must be a finite number > 0, got {o.lr}"),
        (cfg.scheduler.name in SCHEDULERS,
         f"scheduler.name must be one of {', '.join(SCHEDULERS)}; got {cfg.scheduler.name!r}"),
        (cfg.scheduler.warmup_steps >= 0, f"scheduler.warmup_steps must be >= 0, got {cfg.scheduler.warmup_steps}"),
        (0 <= cfg.scheduler.min_lr_ratio <= 1,
         f"scheduler.min_lr_ratio must be in [0, 1], got {cfg.scheduler.min_lr_ratio}"),
        (0 < cfg.scheduler.pct_start < 1, f"scheduler.pct_start must be in (0, 1), got {cfg.scheduler.pct_start}"),
        (cfg.device.type in DEVICES, f"device.type must be one of {', '.join(DEVICES)}; got {cfg.device.type!r}"),
        (cfg.device.num_threads is None or 0 < cfg.device.num_threads <= MAX_THREADS,
         f"device.num_threads must be in 1..{MAX_THREADS} (4 x this machine's cores) or null, "
         f"got {cfg.device.num_threads}"),
        (0 <= cfg.seed < 2**63, f"seed must be in 0..2**63-1, got {cfg.seed}"),
        (cfg.device.dist_timeout_s > 0, f"device.dist_timeout_s must be > 0, got {cfg.device.dist_timeout_s}"),
        (t.epochs > 0, f"trainer.epochs must be > 0, got {t.epochs}"),
        (t.log_every_n_steps > 0, f"trainer.log_every_n_steps must be > 0, got {t.log_every_n_steps}"),
        (t.max_steps is None or t.max_steps > 0, f"trainer.max_steps must be > 0 or null, got {t.max_steps}"),
        (t.grad_clip is None or t.grad_clip > 0, f"trainer.grad_clip must be > 0 or null, got {t.grad_clip}"),
        (t.precision in PRECISIONS, f"trainer.precision must be one of {', '.join(PRECISIONS)}; got {t.precision!r}"),
        (t.checkpoint_every_n_steps >= 0,
         f"trainer.checkpoint_every_n_steps must be >= 0 (0 = epoch ends only), got {t.checkpoint_every_n_steps}"),
        (t.early_stopping_patience is None or t.early_stopping_patience > 0,
         f"trainer.early_stopping_patience must be > 0 or null, got {t.early_stopping_patience}"),
        (t.early_stopping_patience is None or has_validation(d),
         "trainer.early_stopping_patience needs a validation split: set data.val_size > 0 (or data.folds)"),
        (t.test_on in TEST_ON, f"trainer.test_on must be one of {', '.join(TEST_ON)}; got {t.test_on!r}"),
        (t.test_on == "last" or has_validation(d),
         "trainer.test_on=best needs a validation split: set data.val_size > 0 (or data.folds)"),
        (0 <= d.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {d.val_fraction}"),
        (d.folds == 0 or d.folds > 1, f"data.folds must be 0 (off) or > 1, got {d.folds}"),
        (d.folds == 0 or 0 <= d.fold < d.folds, f"data.fold must be in [0, data.folds), got {d.fold}"),
        (d.folds == 0 or (d.val_size == 0 and d.val_fraction == 0),
         "data.folds and data.val_size/data.val_fraction exclude each other: with folds, the held-out fold is "
         "the validation split"),
    ]
    checks += [(math.isfinite(v), f"{k} must be a finite number, got {v}") for k, v in flatten(to_plain(cfg)).items()
               if isinstance(v, float) and k != "optimizer.lr"]
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
