"""Data: a source loader -> split tensors on the training device -> shuffled batches.

A loader is any callable ``(root, download, **kwargs) -> Splits`` named by ``data._target_``. Images
become sequences: one row per time step, one pixel per feature, scaled to [0, 1].
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from birnn.data import normalize, patches
from birnn.data.mapped import Mapped
from birnn.data.targets import (
    IGNORE,  # noqa: F401 - where loaders and tests import it from
    Target,
    as_values,
    fit_values,
    for_classes,
    for_data,
    per_step,
    value_names,
)
from birnn.schema import trust
from birnn.schema.errors import BirnnError
from birnn.system.distributed import Dist

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
OFFLINE_HINT = (
    "Offline alternatives: data=fashion_mnist (apt-get install dataset-fashion-mnist) "
    "or data=digits (ships with scikit-learn)."
)
# Keys of a data config that birnn itself handles (batching, hold-out, standardization), not the loader.
COMMON_KEYS = (
    "batch_size",
    "eval_batch_size",
    "val_size",
    "split_seed",
    "normalize",
    "normalize_series",
    "patch",
    "val_fraction",
    "folds",
    "fold",
)


@dataclass
class Splits:
    """Float inputs (N, steps, features) and int64 labels, for train, test and (optional) val.

    Fields added after the first release come last with defaults (users build ``Splits`` positionally).
    ``*_lengths``: int64 valid steps per sample for variable-length data (inputs zero-padded to the
    longest), None when every sample has all steps. ``normalization``: per-feature ``{"mean": [...],
    "std": [...]}`` already applied to the inputs (set by ``load_data``), None when not standardized.
    ``kind``: ``image`` (rows of an image, values in [0, 1]; pictures show images) or ``series`` (any
    sequences; pictures show line plots). ``patch``: the steps read as one (``birnn.data.patches``, set by
    ``load_data``); ``raw_shape``: ``(steps, features)`` of the inputs before patching, None when unpatched.
    ``vocab_size``: set for token data, whose inputs are int64 token IDs ``(N, steps)`` (0 = padding).
    ``tokenizer``: the text tokenizer as a JSON string (``birnn.data.tokenize``), None for other data. Labels
    ``(N, steps)`` instead of ``(N,)`` are one tag per step (``IGNORE`` at padding): ``per_step``.
    ``fingerprint``: a SHA-256 of the data's content (``content_fingerprint``; a pack's comes from its manifest),
    recorded in checkpoints so that a resume on other data is refused; None when not computed.
    ``word_vectors`` and ``trained_vocab``: pretrained word vectors (``birnn.data.vectors``) for the model's embedding.
    ``values``: regression targets (``task=regression``, set by ``load_data``): float labels, ``classes`` the names of
    the outputs, and this the kind's spec (``birnn.data.targets.Values.spec``: scaling, loss, per step); None for
    classes.
    ``characters``: the number of character IDs (``model.char_encoder``), whose token inputs are then
    ``(N, steps, 1 + word length)``: each token's ID, then its characters' IDs, 0-padded (``birnn.data.text.spelled``).
    """

    train_x: Tensor | Mapped  # Mapped: memory-mapped inputs (data=packed), gathered batch by batch
    train_y: Tensor
    test_x: Tensor | Mapped
    test_y: Tensor
    classes: list[str]
    val_x: Tensor | Mapped | None = None
    val_y: Tensor | None = None
    train_lengths: Tensor | None = None
    test_lengths: Tensor | None = None
    val_lengths: Tensor | None = None
    normalization: dict | None = None
    kind: str = "image"
    patch: int = 1
    raw_shape: tuple[int, int] | None = None
    vocab_size: int | None = None
    tokenizer: str | None = None
    fingerprint: str | None = None
    word_vectors: Tensor | None = None  # data.vectors: (vocab_size, dim) pretrained rows, NaN where a token has none
    trained_vocab: int | None = None  # data.vectors: token IDs below this train, the rest are frozen pretrained words
    normalize_series: bool = False  # data.normalize_series: every series z-normalized on its own (set by load_data)
    values: dict | None = None  # task=regression: the kind's spec (Values.spec); None: classes
    characters: int | None = None  # model.char_encoder: character IDs; inputs (N, steps, 1 + word length)

    @property
    def input_size(self) -> int:
        """Features per step, or the number of token IDs for token data."""
        return self.vocab_size if self.vocab_size is not None else self.train_x.shape[-1]

    @property
    def per_step(self) -> bool:
        """One label per step (tagging, values per step) rather than one per sequence."""
        return bool(self.values["per_step"]) if self.values is not None else per_step(self.train_y)

    @property
    def target(self) -> Target:
        """The kind of target (``birnn.data.targets``): what the model outputs, its loss, predictions and scores."""
        return for_data(self.classes, self.per_step, self.values)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _from_torchvision(cls: type, root: str, download: bool, classes: list[str] | None = None) -> Splits:
    """Load both splits of a torchvision IDX dataset once as uint8 tensors, scaled like ``ToTensor``."""
    raw = Path(root).resolve() / cls.__name__ / "raw"
    missing = [f for f in IDX_FILES if not (raw / f).is_file()]
    if missing and download:
        try:
            cls(root, train=True, download=True)
        except Exception as e:  # torchvision raises RuntimeError/URLError listing every mirror
            lines = str(e).strip().splitlines()
            reason = lines[-1] if lines else type(e).__name__  # torchvision ends with the last mirror's error
            raise BirnnError(
                f"{cls.__name__} is not in {raw} and could not be downloaded ({reason}). "
                f"Put the four IDX files there ({', '.join(IDX_FILES)}). {OFFLINE_HINT}"
            ) from None
    elif missing:
        raise BirnnError(
            f"{cls.__name__} is not in {raw}: missing {', '.join(missing)} "
            f"(data.download=false). Put the four IDX files there, or set data.download=true. {OFFLINE_HINT}"
        )
    try:
        train, test = cls(root, train=True), cls(root, train=False)
    except Exception as e:
        raise BirnnError(f"Could not read the {cls.__name__} IDX files in {raw}: {e}") from None
    return Splits(
        train_x=train.data.float().div_(255),
        train_y=train.targets.long(),
        test_x=test.data.float().div_(255),
        test_y=test.targets.long(),
        classes=classes or [str(c).split(" - ")[-1] for c in train.classes],
    )


def load_mnist(root: str = "data", download: bool = True) -> Splits:
    """MNIST from ``<root>/MNIST/raw/`` (torchvision layout), downloaded there when allowed."""
    from torchvision.datasets import MNIST

    return _from_torchvision(MNIST, root, download, classes=[str(i) for i in range(10)])


def load_fashion_mnist(root: str = "data", download: bool = True, system_dir: str = FASHION_SYSTEM_DIR) -> Splits:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw/``, else the Debian package's ``.gz`` files read in place."""
    from torchvision.datasets import FashionMNIST

    raw = Path(root).resolve() / "FashionMNIST" / "raw"
    system = Path(system_dir)
    if not all((raw / f).is_file() for f in IDX_FILES) and all((system / f"{f}.gz").is_file() for f in IDX_FILES):
        try:
            train_x, train_y, test_x, test_y = (read_idx_gz(system / f"{name}.gz") for name in IDX_FILES)
        except (OSError, ValueError, RuntimeError) as e:
            raise BirnnError(f"Could not read the Fashion-MNIST files in {system}: {e}") from None
        return Splits(
            train_x.float().div_(255), train_y.long(), test_x.float().div_(255), test_y.long(), classes=FASHION_CLASSES
        )
    return _from_torchvision(FashionMNIST, root, download, classes=FASHION_CLASSES)


def read_idx_gz(path: Path) -> Tensor:
    """One gzipped IDX file of uint8 values (images or labels), read without unpacking it to disk."""
    blob = gzip.decompress(path.read_bytes())
    dims = blob[3]
    shape = [int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return torch.frombuffer(bytearray(blob[4 + 4 * dims :]), dtype=torch.uint8).view(shape)


def load_digits(root: str = "data", download: bool = False) -> Splits:
    """scikit-learn's bundled 8x8 digits (values 0-16): a fixed 80/20 split, 8 steps of 8 pixels.

    ``root`` and ``download`` are accepted for a uniform loader signature and unused.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).div_(16)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1797))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    return Splits(x[train], y[train], x[test], y[test], classes=[str(i) for i in range(10)])


def _check_keys(loader: object, target: str, kwargs: dict) -> None:
    """A data key the loader does not take (a typo: the data node accepts any key) is one clear error."""
    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):  # no signature to check against
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise BirnnError(
            f"data.{unknown[0]} is not a key of {target} (it takes {', '.join(params)}; "
            f"every data option also has {', '.join(COMMON_KEYS)})"
        )


def _takes(loader: object, key: str) -> bool:
    """Whether ``loader`` has a parameter ``key``."""
    try:
        return key in inspect.signature(loader).parameters
    except (TypeError, ValueError):
        return False


def check_class_names(classes: object, source: str, advice: str = "correct that label") -> None:
    """Class names are text that prints: a list of strings, each valid Unicode (no lone surrogate, which a JSON
    ``"\\ud800"`` decodes to), else one line. Checked at load, so no run trains on names it cannot print."""
    if not isinstance(classes, (list, tuple)):
        raise BirnnError(f"{source}: the classes must be a list of names, not a {type(classes).__name__}")
    for i, name in enumerate(classes):
        if not isinstance(name, str):
            raise BirnnError(f"{source}: class {i} is named by a {type(name).__name__}, not a string")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = ascii(name if len(name) <= 60 else name[:60] + "...")
            raise BirnnError(
                f"{source}: class {i} is named {shown}, which is not valid Unicode text (it holds a lone "
                f"surrogate): {advice}"
            ) from None


def _takes(loader: object, name: str) -> bool:
    """Whether ``loader`` has a parameter ``name``."""
    try:
        return name in inspect.signature(loader).parameters
    except (TypeError, ValueError):
        return False


def load_source(
    cfg: DictConfig,
    allow: Sequence[str] | None = None,
    tokenizer: str | None = None,
    classes: Sequence[str] | None = None,
    task: str | None = None,
    series: bool | None = None,
    characters: bool = False,
) -> Splits:
    """The configured loader's splits as it returns them (no hold-out, standardization or patching).

    ``allow`` given means ``cfg`` came from a checkpoint: its loader must pass the trust rule
    (``birnn.schema.trust``) with those allowed modules. ``tokenizer`` given (a checkpoint's, JSON) reaches a
    text loader as ``fitted`` instead of fitting one, and the checkpoint's ``classes`` as ``fitted_classes``
    where the loader takes them (it then need not read a training file to know them). ``task``
    (``classification``, ``regression``) reaches a loader that takes ``task`` (it then reads classes or values).
    A loader that takes ``normalize_series`` is told whether the series will be z-normalized one by one
    (``series``, a checkpoint's; None: ``data.normalize_series``): ``data=uea`` then fills a missing value with its
    series' own mean. ``characters`` (``model.char_encoder``): the loader gives each token's characters too,
    fitting their vocabulary.
    """
    kwargs = {
        k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in COMMON_KEYS and k != "_target_"
    }
    if allow is not None:
        loader = trust.resolve(cfg._target_, "data._target_", allow)
    else:
        try:
            loader = get_method(cfg._target_)
        except Exception as e:
            raise BirnnError(f"data._target_={cfg._target_!r} is not an importable loader: {e}") from None
    _check_keys(loader, cfg._target_, kwargs)
    if _takes(loader, "normalize_series"):
        kwargs["normalize_series"] = bool(cfg.get("normalize_series", False) if series is None else series)
    if characters and _takes(loader, "characters"):
        kwargs["characters"] = True
    if tokenizer is not None:
        kwargs["fitted"] = tokenizer
        if classes is not None and _takes(loader, "fitted_classes"):
            kwargs["fitted_classes"] = list(classes)
    if task is not None and _takes(loader, "task"):
        kwargs["task"] = task
    splits: Splits = loader(**kwargs)
    if characters and splits.characters is None:
        raise BirnnError(
            f"model.char_encoder reads the characters of words, which {cfg._target_} does not give (use data=tagged, "
            "data=text with data.tokenizer=word, or a pack birnn-pack wrote with model.char_encoder set)"
        )
    check_class_names(splits.classes, cfg._target_)
    if splits.vocab_size is None:
        dims, shape = 3, "inputs shaped (N, steps, features)"
    elif splits.characters is None:
        dims, shape = 2, "token IDs (N, steps)"
    else:
        dims, shape = 3, "token and character IDs (N, steps, 1 + chars)"
    if splits.train_x.ndim != dims or splits.test_x.ndim != dims:
        raise BirnnError(f"{cfg._target_} must return {shape}; got {tuple(splits.train_x.shape)}")
    if splits.vocab_size is not None and (
        cfg.get("normalize", False) or cfg.get("normalize_series", False) or cfg.get("patch", 1) != 1
    ):
        raise BirnnError(
            "data.normalize, data.normalize_series and data.patch apply to float features, not to token IDs"
        )
    return splits


def load_data(
    cfg: DictConfig,
    device: torch.device,
    normalization: dict | None = None,
    patch: int | None = None,
    allow: Sequence[str] | None = None,
    tokenizer: str | None = None,
    classes: Sequence[str] | None = None,
    fingerprint: bool = False,
    task: dict | None = None,
    values: dict | None = None,
    series: bool | None = None,
    characters: bool = False,
) -> Splits:
    """Run the configured loader (``load_source``), hold out ``val_size`` training samples, standardize, patch,
    and move every split to ``device``.

    With ``data.normalize_series`` (``series`` given: a checkpoint's) every series of every split is first
    z-normalized by its own statistics (``birnn.data.normalize.per_series``).
    With ``data.normalize`` the per-feature statistics are fitted on the training split (after the hold-out);
    ``normalization`` given (a checkpoint's) is applied instead of fitting. ``data.patch`` (``auto``: from the
    training split) reads k steps as one; ``patch`` given (a checkpoint's) is used instead. Memory-mapped
    inputs (``Mapped``, ``data=packed``) get the same treatment as views, applied batch by batch. ``tokenizer``:
    a checkpoint's, for its text loader, with the checkpoint's ``classes`` (``load_source``). ``fingerprint``: set
    ``Splits.fingerprint`` from the loader's splits (``content_fingerprint``) unless the loader set it (a training
    run records it). ``task`` (the ``task`` config) with ``name: regression``: the targets are values
    (``as_values``), their scaling fitted on the training split after the hold-out (``fit_values``);
    ``values`` given (a checkpoint's ``Values.spec``) is applied instead. Classes under ``task=regression`` and values
    under ``task=classification`` are one error. ``characters``: each token's characters too (``load_source``).

    The loader's input tensors become the pipeline's: the hold-out and standardization rewrite them in place
    (no second copy of a split in memory), so a loader must return tensors nothing else uses.
    """
    series = bool(cfg.get("normalize_series", False)) if series is None else series
    task = dict(task or {})
    regression = values is not None or task.get("name") == "regression"
    kind = "regression" if regression else "classification"
    splits = separate(load_source(cfg, allow, tokenizer, classes, kind, series, characters))
    splits = _as_values(splits, cfg._target_, values or task) if regression else _as_classes(splits, cfg._target_)
    if fingerprint and splits.fingerprint is None:
        splits = replace(splits, fingerprint=content_fingerprint(splits))
    val = holdout(cfg, splits.train_y, splits.target.stratified)
    if val is not None:
        keep = torch.ones(len(splits.train_y), dtype=torch.bool)
        keep[val] = False
        train = keep.nonzero().squeeze(1)
        lengths = splits.train_lengths
        splits = replace(
            splits,
            val_x=subset(splits.train_x, val),  # before compact() overwrites the held-out rows
            train_x=compact(splits.train_x, train),
            train_y=splits.train_y[train],
            val_y=splits.train_y[val],
            **({} if lengths is None else {"train_lengths": lengths[train], "val_lengths": lengths[val]}),
        )
    if regression:
        for s in ("train", "val", "test"):  # per step, NaN is not scored: a split may hold nothing to score
            if (y := getattr(splits, f"{s}_y")) is not None and len(y) and not torch.isfinite(y).any():
                raise BirnnError(f"{cfg._target_} ({s} split) holds no scored target (every one NaN): nothing to score")
        fitted = values or fit_values(splits.classes, splits.per_step, task, splits.train_y).spec
        splits = replace(splits, values=fitted)
    if series:
        changed = {
            f"{s}_x": x.series_normalized()
            if isinstance(x, Mapped)
            else normalize.per_series_(x, getattr(splits, f"{s}_lengths"))
            for s in ("train", "test", "val")
            if (x := getattr(splits, f"{s}_x")) is not None
        }
        splits = replace(splits, normalize_series=True, **changed)
    if normalization is None and cfg.get("normalize", False):
        x = splits.train_x
        normalization = x.fit() if isinstance(x, Mapped) else normalize.fit(x, splits.train_lengths)
    if normalization is not None:
        standardized = {
            f"{s}_x": x.standardized(normalization)
            if isinstance(x, Mapped)
            else normalize.apply_(x, normalization, getattr(splits, f"{s}_lengths"))
            for s in ("train", "test", "val")
            if (x := getattr(splits, f"{s}_x")) is not None
        }
        splits = replace(splits, normalization=normalization, **standardized)
    if patch is None and splits.vocab_size is not None:
        patch = 1
    if patch is None:
        patch = patches.resolve(cfg.get("patch", 1), splits.train_x, splits.train_lengths)
    if patch > 1:
        splits = _patched(splits, patch)
    return replace(splits, **{k: v.to(device) for k, v in vars(splits).items() if isinstance(v, (Tensor, Mapped))})


def _as_classes(splits: Splits, source: str) -> Splits:
    """``splits`` of classes: float targets are values, one error naming ``task=regression``."""
    if splits.train_y.is_floating_point():
        raise BirnnError(
            f"{source} gives values (float targets), not classes: train them with task=regression (a classifier "
            "needs integer labels)"
        )
    return splits


def _as_values(splits: Splits, source: str, task: dict) -> Splits:
    """``splits`` of values (``birnn.data.targets.as_values``) named by the loader's classes when there is one per
    output (else ``value``, ``value0``...); ``values`` holds the kind's spec, its scaling not yet fitted."""
    per_step = bool(task.get("per_step", False))
    log = bool(task.get("log", task.get("log_target", False)))
    steps = splits.train_x.shape[1]
    changed = {
        f"{s}_y": as_values(y, getattr(splits, f"{s}_lengths"), steps, per_step, log, f"{source} ({s} split)")
        for s in ("train", "test", "val")
        if (y := getattr(splits, f"{s}_y")) is not None
    }
    y = changed["train_y"]
    outputs = 1 if per_step or y.ndim == 1 else y.shape[1]
    names = list(splits.classes) if len(splits.classes) == outputs else value_names(outputs)
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:  # each output's scores are keyed by its name (test_rmse_<name>)
        raise BirnnError(f"{source} names output {twice!r} twice: each of the {outputs} outputs needs its own name")
    spec = {"per_step": per_step, "loss": task.get("loss", "mse"), "log": log}
    return replace(splits, classes=names, values=spec, **changed)


def content_fingerprint(splits: Splits) -> str | None:
    """SHA-256 over every split's inputs, labels and lengths as the loader returned them (dtype, shape and bytes),
    with the classes: the same data give the same hex digest. None for memory-mapped inputs (a loader that maps
    them sets ``Splits.fingerprint`` itself, as ``data=packed`` does from its manifest's SHA-256s)."""
    h = hashlib.sha256(repr(list(splits.classes)).encode())
    for name in ("train", "val", "test"):
        for array in ("x", "y", "lengths"):
            t = getattr(splits, f"{name}_{array}")
            if isinstance(t, Mapped):
                return None
            if t is None:
                continue
            t = t.detach().cpu().contiguous()
            h.update(f"{name}_{array}:{t.dtype}{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # contiguous: a view, no copy
    return h.hexdigest()


def separate(splits: Splits) -> Splits:
    """``splits`` with no two input tensors sharing memory (a loader may return one tensor as train and test, or
    overlapping views), so that ``load_data``'s in-place hold-out and standardization change each split once."""
    seen: list[tuple[int, int]] = []
    changed = {}
    for name in ("train_x", "test_x", "val_x"):
        x = getattr(splits, name)
        if not isinstance(x, Tensor) or not x.numel():
            continue
        span = sum((n - 1) * stride for n, stride in zip(x.shape, x.stride())) + 1
        start = x.data_ptr()
        end = start + span * x.element_size()
        if any(start < e and s < end for s, e in seen):
            changed[name] = x = x.clone()
            start, end = x.data_ptr(), x.data_ptr() + x.numel() * x.element_size()
        seen.append((start, end))
    return replace(splits, **changed)


def subset(x: Tensor | Mapped, index: Tensor | slice) -> Tensor | Mapped:
    """Some rows of a split's inputs: a tensor's, or a view of memory-mapped ones (nothing read)."""
    return x.subset(index) if isinstance(x, Mapped) else x[index]


def compact(x: Tensor | Mapped, keep: Tensor) -> Tensor | Mapped:
    """Rows ``keep`` (ascending) of a split's inputs, as ``subset`` gives them, without a second copy of a tensor:
    they are moved to the front in place, chunk by chunk (row ``i`` comes from row ``keep[i] >= i``, which no
    earlier chunk has written over), and the result is a view of the first ``len(keep)`` rows."""
    if isinstance(x, Mapped):
        return x.subset(keep)
    for rows in normalize.chunks(x[: len(keep)]):
        x[rows] = x[keep[rows]]
    return x[: len(keep)]


def _patched(splits: Splits, k: int) -> Splits:
    """Every split read ``k`` steps at a time (``birnn.data.patches.patch``), lengths ``ceil(length / k)``."""
    changed: dict = {"patch": k, "raw_shape": tuple(int(n) for n in splits.test_x.shape[1:])}
    for s in ("train", "test", "val"):
        x, lengths = getattr(splits, f"{s}_x"), getattr(splits, f"{s}_lengths")
        if x is not None:
            changed[f"{s}_x"] = x.patched(k) if isinstance(x, Mapped) else patches.patch(x, k, lengths)
        if lengths is not None:
            changed[f"{s}_lengths"] = patches.patch_lengths(lengths, k)
    return replace(splits, **changed)


def holdout(cfg: DictConfig, train_y: Tensor, stratified: bool | None = None) -> Tensor | None:
    """The training-split indices held out for validation, or None: ``val_size`` samples (or ``val_fraction``
    of them) drawn with ``split_seed``, or fold ``fold`` of a ``folds``-fold split seeded the same: stratified by
    class for a class per sequence (``stratified``, the kind's; None: unless ``train_y`` holds one label per step),
    plain KFold otherwise (tags, values)."""
    n = len(train_y)
    folds = cfg.get("folds", 0)
    stratified = not per_step(train_y) if stratified is None else stratified
    if folds > 1 and not stratified:  # per-step labels, values: no class per sample to stratify by
        from sklearn.model_selection import KFold

        if n < folds:
            raise BirnnError(f"data.folds={folds} needs at least {folds} training samples; there are {n}")
        splitter = KFold(n_splits=folds, shuffle=True, random_state=cfg.split_seed)
        _, val = list(splitter.split(train_y.cpu().numpy()))[cfg.fold]
        return torch.from_numpy(val)
    if folds > 1:
        from sklearn.model_selection import StratifiedKFold

        smallest = int(torch.bincount(train_y).min()) if n else 0
        if smallest < folds:
            raise BirnnError(
                f"data.folds={folds} needs at least {folds} training samples of every class; "
                f"the rarest class has {smallest}"
            )
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.split_seed)
        _, val = list(splitter.split(train_y.numpy(), train_y.numpy()))[cfg.fold]
        return torch.from_numpy(val)
    size = cfg.val_size or round(cfg.get("val_fraction", 0.0) * n)
    if size and size >= n:
        raise BirnnError(f"data.val_size={size} leaves no training data ({n} samples)")
    if not size and cfg.get("val_fraction", 0.0) > 0:
        raise BirnnError(
            f"data.val_fraction={cfg.val_fraction} of {n} training samples holds out none: too little data for a "
            "validation split (give more data, or set data.val_fraction=0)"
        )
    if not size:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))[:size]


def spec(splits: Splits) -> dict:
    """What a checkpoint records about its data, enough to feed the model without the dataset.

    The raw inputs, before patching: ``features`` per step; ``max_length``: the fixed number of steps, or None
    for variable-length data; ``input_shape`` ``[steps, features]`` (the longest for variable length; older
    checkpoints hold only this and ``classes``); ``normalization``, ``kind`` and ``patch`` as in ``Splits``
    (the model reads ``patch * features`` features per step); ``normalize_series``: every series was z-normalized
    on its own first (absent in older checkpoints: false); ``vocab_size``, ``tokenizer`` and ``per_step``
    for token data and tags (token data have one "feature" per step: the ID); ``values``: regression targets'
    scaling (``Splits.values``; absent for classes); ``characters``: the number of character IDs
    (``model.char_encoder``), absent without; ``samples`` per split (a resume
    on a split of another size would shuffle other batches); ``fingerprint``: the data's content, as in ``Splits``.
    """
    shape = splits.test_x.shape[1:2] if splits.vocab_size is not None else splits.test_x.shape[1:]
    steps, features = splits.raw_shape or (*shape, 1)[:2]
    variable = splits.train_lengths is not None or splits.test_lengths is not None
    return {
        "input_shape": [int(steps), int(features)],
        "features": int(features),
        "max_length": None if variable else int(steps),
        "classes": list(splits.classes),
        "normalization": splits.normalization,
        "kind": splits.kind,
        "patch": splits.patch,
        "vocab_size": splits.vocab_size,
        "tokenizer": splits.tokenizer,
        "per_step": splits.per_step,
        "fingerprint": splits.fingerprint,
        "normalize_series": splits.normalize_series,
        **({"trained_vocab": splits.trained_vocab} if splits.trained_vocab is not None else {}),
        **({"values": splits.values} if splits.values is not None else {}),
        **({"characters": splits.characters} if splits.characters is not None else {}),
        "samples": {s: len(y) for s in ("train", "val", "test") if (y := getattr(splits, f"{s}_y")) is not None},
    }


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


@dataclass
class Batch:
    """This process's share of one global batch; ``size`` is the global batch's number of samples."""

    x: Tensor
    y: Tensor
    lengths: Tensor | None  # valid steps per sample; None: every step is valid
    size: int
    targets: int | None = None  # labels in the global batch (per-step labels: its valid steps); None: ``size``
    tokens: int = 0  # token data: the global batch's tokens (valid steps); 0 for float inputs

    @property
    def labels(self) -> int:
        """The labels the global batch scores: ``targets``, else one per sample."""
        return self.size if self.targets is None else self.targets


def shuffled_batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    generator: torch.Generator,
    start: int = 0,
    lengths: Tensor | None = None,
    dist: Dist = Dist(),
    target: Target | None = None,
) -> Iterator[Batch]:
    """One epoch of shuffled batches (the last may be smaller), as ``DataLoader(shuffle=True)`` gives.

    The permutation is drawn from ``generator`` (CPU) once per epoch, the same on every process; each
    process takes its share (``dist.shard``) of every global batch. ``start`` skips batches already
    trained on, so a resumed epoch sees exactly the batches the interrupted one had left. ``target``: the kind of
    target, which counts a batch's scored targets (default: classes, per step when ``y`` is ``(N, steps)``).
    """
    kind = target if target is not None else for_classes([], per_step(y))
    order = torch.randperm(len(y), generator=generator).to(x.device)
    for i in range(start * batch_size, len(y), batch_size):
        batch = order[i : i + batch_size]
        idx = batch[dist.shard(len(batch))]
        targets = kind.count(y[batch]) if kind.per_step else None
        ids = not x.dtype.is_floating_point  # token data: IDs (N, steps), or (N, steps, 1 + chars) with characters
        tokens = (len(batch) * x.shape[1] if lengths is None else int(lengths[batch].sum())) if ids else 0
        yield Batch(x[idx], y[idx], lengths[idx] if lengths is not None else None, len(batch), targets, tokens)


def sequential_batches(
    x: Tensor, y: Tensor, batch_size: int, lengths: Tensor | None = None
) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    for i in range(0, len(y), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size], lengths[i : i + batch_size] if lengths is not None else None
