"""The in-process benchmark: the tutorial's training step and evaluation pass against birnn's, side by side.

``reference`` is the tutorial's loop exactly: a torchvision dataset with ``ToTensor``,
``DataLoader(batch 100, shuffle)``, ``h0``/``c0`` allocated in every forward, fp32, ``reshape(-1, rows,
pixels)``, Adam 0.003, evaluation through a ``DataLoader`` of batch 100 under ``no_grad``. ``birnn`` is the
training step and the evaluation pass exactly as ``birnn.train`` runs them for the config given by the
overrides (default config on Fashion-MNIST). Each contender lives in its own spawned process (its own heap
and allocator settings: the reference keeps glibc's defaults, birnn tunes them as ``birnn.train`` does),
driven in turn by this one. Throughput is measured in alternating A/B rounds after a warm-up (median of
rounds); time to accuracy is training wall time (evaluation excluded) until test accuracy first reaches the
target, both contenders rebuilt from scratch.

Token data (``data=text``, ``data=tagged``) have no tutorial loop: their reference is the tutorial's model and
loop with an ``nn.Embedding`` in front (``TutorialTagger``, with ``model.char_encoder`` the same character encoder
computed plainly on the padded characters, ``PlainCharacters``), the configured width, batch and learning rate, on
padded batches run whole; per-step labels get the head at every step (padding ignored by the loss), one label
per text the last step's output. Both report tokens per second too (samples/s times the split's mean length).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from birnn.data.pipeline import IDX_FILES, IGNORE, Splits, load_data, num_batches, shuffled_batches
from birnn.data.vectors import resolve_embedding_dim
from birnn.engine.loop import eval_pass as birnn_eval_pass
from birnn.engine.run import build
from birnn.schema.config import CONFIG_DIR as CONF
from birnn.schema.config import apply_schemas, to_plain, validate
from birnn.schema.errors import BirnnError
from birnn.system.device import setup_device, synchronize


class TutorialBiRNN(nn.Module):
    """The tutorial's model, unchanged: zero initial states allocated on every forward."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, num_classes: int, device: torch.device):
        super().__init__()
        self.hidden_size, self.num_layers, self.device = hidden_size, num_layers, device
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(hidden_size * 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h0 = torch.zeros(self.num_layers * 2, x.size(0), self.hidden_size).to(self.device)
        c0 = torch.zeros(self.num_layers * 2, x.size(0), self.hidden_size).to(self.device)
        out, _ = self.lstm(x, (h0, c0))
        return self.fc(out[:, -1, :])


class PlainCharacters(nn.Module):
    """A word's character features as NCRF++ computes them, on the padded characters as they are: ``cnn`` max-pools
    a same-padded ``Conv1d`` over every character position, ``lstm`` takes a bidirectional LSTM's final states."""

    def __init__(self, encoder: str, characters: int, dim: int, channels: int | None, kernel: int):
        super().__init__()
        self.encoder = encoder
        self.embedding = nn.Embedding(characters, dim, padding_idx=0)
        if encoder == "cnn":
            self.width = channels or 30
            self.conv = nn.Conv1d(dim, self.width, kernel, padding=kernel // 2)
        else:
            self.width = 2 * (channels or 25)
            self.lstm = nn.LSTM(dim, self.width // 2, batch_first=True, bidirectional=True)

    def forward(self, chars: Tensor) -> Tensor:
        words = self.embedding(chars.reshape(-1, chars.shape[-1]))
        if self.encoder == "cnn":
            out = self.conv(words.transpose(1, 2)).amax(dim=2)
        else:
            hidden = self.lstm(words)[1][0]
            out = torch.cat([hidden[0], hidden[1]], dim=1)
        return out.reshape(*chars.shape[:-1], self.width)


class TutorialTagger(nn.Module):
    """The tutorial's BiLSTM for token IDs: an ``nn.Embedding`` in front, padded batches run whole (no lengths);
    the head at every step for per-step labels, else on the last step's output (the tutorial's readout).
    ``characters`` (``model.char_encoder``): each token's ``PlainCharacters`` after its embedding."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        classes: int,
        per_step: bool,
        characters: PlainCharacters | None = None,
    ):
        super().__init__()
        self.per_step = per_step
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.characters = characters
        width = embedding_dim + (characters.width if characters is not None else 0)
        self.lstm = nn.LSTM(width, hidden_size, num_layers, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(hidden_size * 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.characters is None:
            inputs = self.embedding(x)
        else:
            inputs = torch.cat([self.embedding(x[..., 0]), self.characters(x[..., 1:])], dim=-1)
        out, _ = self.lstm(inputs)
        return self.fc(out if self.per_step else out[:, -1, :])


class PilImages(Dataset):
    """Any split as the tutorial sees a torchvision dataset: a PIL image per sample, through ``ToTensor``."""

    def __init__(self, x: Tensor, y: Tensor):
        from torchvision import transforms

        self.images = (x.cpu() * 255).round().to(torch.uint8).numpy()
        self.labels = y.cpu().tolist()
        self.to_tensor = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        return self.to_tensor(Image.fromarray(self.images[i], mode="L")), self.labels[i]


def reference_datasets(cfg: DictConfig, splits: Splits) -> tuple[Dataset, Dataset]:
    """torchvision's own dataset classes for the IDX data where its files are (as in the tutorial), else PIL images
    of the splits birnn read (Debian's Fashion-MNIST ``.gz`` files, digits, series...): the same samples."""
    from torchvision import datasets, transforms

    classes = {"birnn.data.load_mnist": datasets.MNIST, "birnn.data.load_fashion_mnist": datasets.FashionMNIST}
    cls = classes.get(cfg.data._target_)
    raw = Path(cfg.data.root) / cls.__name__ / "raw" if cls else None
    if raw and all((raw / f).is_file() for f in IDX_FILES) and not cfg.data.val_size:
        return (
            cls(cfg.data.root, train=True, transform=transforms.ToTensor()),
            cls(cfg.data.root, train=False, transform=transforms.ToTensor()),
        )
    return PilImages(splits.train_x, splits.train_y), PilImages(splits.test_x, splits.test_y)


@dataclass
class Contender:
    """One side of the benchmark: how to train N steps and how to run one evaluation pass."""

    name: str
    train_steps: Callable[[int], None]
    eval_pass: Callable[[], float]  # returns test accuracy
    batch_size: int
    n_test: int
    device: torch.device
    total_steps: int  # a full run: birnn's for its config, the tutorial's 2 epochs for the reference
    tokens_per_sample: tuple[float, float] | None = None  # token data: mean valid tokens of a train, a test sample

    def timed(self, fn: Callable[[], object]) -> tuple[float, object]:
        """Wall seconds of ``fn()`` (device work included) and its result."""
        synchronize(self.device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(self.device)
        return time.perf_counter() - t0, out


def cycle(make: Callable[[], Iterator]) -> Iterator:
    """Batches forever, one epoch after another."""
    while True:
        yield from make()


def mean_tokens(splits: Splits) -> tuple[float, float] | None:
    """Mean valid tokens per train and per test sample (token data), None for float inputs."""
    if splits.vocab_size is None:
        return None
    return tuple(
        float(x.shape[1] if lengths is None else lengths.double().mean())
        for x, lengths in ((splits.train_x, splits.train_lengths), (splits.test_x, splits.test_lengths))
    )


def token_reference(cfg: DictConfig, splits: Splits, device: torch.device) -> Contender:
    """``TutorialTagger`` in the tutorial's loop (``DataLoader`` shuffling, Adam) at the config's width, batch, lr
    (with the configured character encoder, ``PlainCharacters``)."""
    torch.manual_seed(cfg.seed)
    resolve_embedding_dim(cfg.model, cfg.data)
    m = cfg.model
    classes = splits.num_classes
    chars = None
    if splits.characters is not None:
        chars = PlainCharacters(m.char_encoder, splits.characters, m.char_embedding_dim, m.char_channels, m.char_kernel)
    model = TutorialTagger(
        splits.vocab_size, m.embedding_dim, m.hidden_size, m.num_layers, classes, splits.per_step, chars
    )
    model = model.to(device)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    cpu = [t.cpu() for t in (splits.train_x, splits.train_y, splits.test_x, splits.test_y)]
    train_loader = DataLoader(TensorDataset(*cpu[:2]), batch_size=cfg.data.batch_size, shuffle=True)
    test_loader = DataLoader(TensorDataset(*cpu[2:]), batch_size=cfg.data.eval_batch_size)
    batches = cycle(lambda: iter(train_loader))

    def train_steps(n: int) -> None:
        model.train()
        for _ in range(n):
            x, y = next(batches)
            loss = criterion(model(x.to(device)).reshape(-1, classes), y.to(device).reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def eval_pass() -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in test_loader:
                y = y.to(device)
                valid = y != IGNORE
                correct += int((model(x.to(device)).argmax(-1) == y)[valid].sum())
                total += int(valid.sum())
        return correct / total

    steps = num_batches(len(splits.train_y), cfg.data.batch_size) * cfg.trainer.epochs
    steps = min(steps, cfg.trainer.max_steps or steps)  # birnn's budget: the same config
    return Contender(
        "reference", train_steps, eval_pass, cfg.data.batch_size, len(splits.test_y), device, steps, mean_tokens(splits)
    )


def reference(cfg: DictConfig, splits: Splits, device: torch.device) -> Contender:
    """The tutorial's loop on the same data and device (token data: ``token_reference``)."""
    if splits.vocab_size is not None:
        return token_reference(cfg, splits, device)
    torch.manual_seed(cfg.seed)
    train_set, test_set = reference_datasets(cfg, splits)
    rows, pixels = splits.train_x.shape[1:]
    model = TutorialBiRNN(pixels, 128, 2, splits.num_classes, device).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    train_loader = DataLoader(train_set, batch_size=100, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=100, shuffle=False)
    batches = cycle(lambda: iter(train_loader))
    step = 0

    def train_steps(n: int) -> None:
        nonlocal step
        for _ in range(n):
            images, labels = next(batches)
            images = images.reshape(-1, rows, pixels).to(device)
            labels = labels.to(device)
            outputs = model(images)
            loss = criterion(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 100 == 0:
                loss.item()  # the tutorial prints the loss every 100 steps

    def eval_pass() -> float:
        with torch.no_grad():
            correct = total = 0
            for images, labels in test_loader:
                images = images.reshape(-1, rows, pixels).to(device)
                labels = labels.to(device)
                predicted = model(images).argmax(1)
                total += labels.size(0)
                correct += (predicted == labels).sum().item()
        return correct / total

    return Contender(
        "reference", train_steps, eval_pass, 100, len(test_set), device, 2 * num_batches(len(train_set), 100)
    )


def birnn(cfg: DictConfig, device: torch.device) -> Contender:
    """birnn's step and evaluation pass for ``cfg``, as ``birnn.train`` builds them."""
    run = build(cfg, device)
    data = run.data
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = cycle(
        lambda: shuffled_batches(data.train_x, data.train_y, cfg.data.batch_size, generator, lengths=data.train_lengths)
    )

    def train_steps(n: int) -> None:
        for _ in range(n):
            batch = next(batches)
            run.stepper.step(batch.x, batch.y, batch.lengths, batch.labels)

    def eval_pass() -> float:
        return birnn_eval_pass(
            run.model,
            run.stepper.target,
            data.test_x,
            data.test_y,
            cfg.data.eval_batch_size,
            device,
            cfg.trainer.precision,
            lengths=data.test_lengths,
        ).accuracy

    return Contender(
        "birnn",
        train_steps,
        eval_pass,
        cfg.data.batch_size,
        len(data.test_y),
        device,
        run.total_steps,
        mean_tokens(data),
    )


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=overrides)
    apply_schemas(cfg)
    validate(cfg)
    return cfg


def build_contender(side: str, overrides: list[str]) -> Contender:
    """``reference`` or ``birnn``, built in the calling process; only birnn tunes the allocator."""
    cfg = compose_config(overrides)
    if side == "reference":
        cfg.device.tune_allocator = False  # the tutorial's process runs with glibc's defaults
    device = setup_device(cfg.device, cfg.trainer.precision)
    if side == "birnn":
        return birnn(cfg, device)
    return reference(
        cfg, load_data(cfg.data, device, characters=cfg.model.get("char_encoder", "none") != "none"), device
    )


def serve(conn, side: str, overrides: list[str]) -> None:
    """A contender's process: build it, then answer the driver's commands until ``stop``."""
    try:
        contender = build_contender(side, overrides)
        conn.send((True, None))
        while (message := conn.recv())[0] != "stop":
            command, *args = message
            if command == "reset":
                contender = build_contender(side, overrides)
                result = None
            elif command == "info":
                device = contender.device
                result = {
                    "batch_size": contender.batch_size,
                    "n_test": contender.n_test,
                    "total_steps": contender.total_steps,
                    "tokens_per_sample": contender.tokens_per_sample,
                    "device": str(device),
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "cpu_threads": torch.get_num_threads(),
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20
                    if device.type == "cuda"
                    else None,
                }
            elif command == "train":
                result = contender.timed(functools.partial(contender.train_steps, args[0]))[0]
            elif command == "eval":
                result = contender.timed(contender.eval_pass)[0]
            else:  # time_to_accuracy
                result = time_to_accuracy(contender, *args)
            conn.send((True, result))
    except BirnnError as e:
        conn.send((False, str(e)))


class Worker:
    """The driver's handle on one contender's spawned process (a fresh interpreter: no shared heap)."""

    def __init__(self, side: str, overrides: list[str]):
        ctx = multiprocessing.get_context("spawn")
        self.side = side
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, side, overrides), daemon=True)
        self.process.start()
        child.close()
        self.receive()

    def receive(self) -> object:
        try:
            ok, value = self.conn.recv()
        except EOFError:
            self.process.join()
            raise BirnnError(f"the {self.side} process died (exit code {self.process.exitcode})") from None
        if not ok:
            raise BirnnError(value)
        return value

    def call(self, *message: object) -> object:
        self.conn.send(message)
        return self.receive()

    def close(self) -> None:
        if self.process.is_alive():
            self.conn.send(("stop",))
        self.process.join(timeout=30)


def throughput(a: Worker, b: Worker, rounds: int, steps: int) -> dict:
    """Median train and eval samples/s of each, from alternating rounds after a warm-up."""
    seconds = {w.side: {"train": [], "eval": []} for w in (a, b)}
    for w in (a, b):
        w.call("train", 3)
        w.call("eval")
    for r in range(rounds):
        order = (a, b) if r % 2 == 0 else (b, a)
        for w in order:
            seconds[w.side]["train"].append(w.call("train", steps))
        for w in order:
            seconds[w.side]["eval"].append(w.call("eval"))
    speed = {}
    for w in (a, b):
        info, s = w.call("info"), seconds[w.side]
        speed[w.side] = {
            "train_samples_per_second": statistics.median(steps * info["batch_size"] / t for t in s["train"]),
            "eval_samples_per_second": statistics.median(info["n_test"] / t for t in s["eval"]),
            **tokens_per_second(info["tokens_per_sample"], s, steps * info["batch_size"], info["n_test"]),
            "train_seconds_per_round": s["train"],
            "eval_seconds_per_round": s["eval"],
            "peak_rss_mb": info["peak_rss_mb"],
            "peak_gpu_memory_mb": info["peak_gpu_memory_mb"],
        }
    return speed


def tokens_per_second(per_sample: list[float] | None, seconds: dict, train: int, test: int) -> dict:
    """Token data: median train and eval tokens/s, at each split's mean valid tokens per sample; else nothing."""
    if per_sample is None:
        return {}
    return {
        "train_tokens_per_second": statistics.median(train * per_sample[0] / t for t in seconds["train"]),
        "eval_tokens_per_second": statistics.median(test * per_sample[1] / t for t in seconds["eval"]),
    }


def time_to_accuracy(c: Contender, max_steps: int, every: int, target: float | None) -> dict:
    """Train from scratch, evaluating every ``every`` steps (off the clock), until ``target`` or ``max_steps``."""
    curve, clock, done = [], 0.0, 0
    while done < max_steps:
        n = min(every, max_steps - done)
        synchronize(c.device)
        t0 = time.perf_counter()
        c.train_steps(n)
        synchronize(c.device)
        clock += time.perf_counter() - t0
        done += n
        curve.append({"step": done, "train_seconds": clock, "test_accuracy": c.eval_pass()})
        if target is not None and curve[-1]["test_accuracy"] >= target:
            break
    return {"curve": curve, "final_accuracy": curve[-1]["test_accuracy"]}


def first_reaching(curve: list[dict], target: float) -> float | None:
    return next((p["train_seconds"] for p in curve if p["test_accuracy"] >= target), None)


def ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x and y else None


def with_default_data(overrides: list[str]) -> list[str]:
    """Fashion-MNIST unless an override names the data or a preset (``experiment=``), which brings its own."""
    named = any(o.startswith(("data=", "experiment=")) for o in overrides)
    return overrides if named else ["data=fashion_mnist", *overrides]


def machine(info: dict) -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    models = (
        [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if cpuinfo.exists()
        else []
    )
    return {
        "platform": platform.platform(),
        "processor": models[0] if models else platform.machine(),
        "cpu_cores": len(models) or None,
        "cpu_threads": info["cpu_threads"],
        "device": info["device"],
        "device_name": info["device_name"],
        "torch": str(torch.__version__),
    }


def run_benchmark(args: argparse.Namespace) -> dict:
    overrides = with_default_data(list(args.overrides))
    cfg = compose_config(overrides)  # a bad override fails here, before any process starts
    ref, ours = Worker("reference", overrides), Worker("birnn", overrides)
    try:
        speed = throughput(ref, ours, args.rounds, args.steps)
        info = ours.call("info")
        # Time to accuracy, both rebuilt from scratch in their own processes. The reference runs the
        # tutorial's 2 epochs unless a target is given.
        ref.call("reset")
        ours.call("reset")
        ref_run = ref.call("time_to_accuracy", ref.call("info")["total_steps"], args.eval_every, args.target)
        target = args.target if args.target is not None else ref_run["final_accuracy"]
        our_run = ours.call("time_to_accuracy", info["total_steps"], args.eval_every, target)
    finally:
        ref.close()
        ours.close()
    ref_tta, our_tta = first_reaching(ref_run["curve"], target), first_reaching(our_run["curve"], target)

    r, o = speed["reference"], speed["birnn"]
    return {
        "machine": machine(info),
        "command": " ".join(["python -m birnn.bench", *sys.argv[1:]]) if args.from_cli else None,
        "overrides": overrides,
        "config": to_plain(cfg),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "eval_every": args.eval_every,
        "throughput": speed,
        "process_peak_rss_mb": max(r["peak_rss_mb"], o["peak_rss_mb"]),
        "time_to_accuracy": {
            "target": target,
            "target_source": "given" if args.target is not None else "reference accuracy after its 2 epochs",
            "reference_seconds": ref_tta,
            "birnn_seconds": our_tta,
            "reference": ref_run,
            "birnn": our_run,
        },
        "ratios": {
            "train": ratio(o["train_samples_per_second"], r["train_samples_per_second"]),
            "eval": ratio(o["eval_samples_per_second"], r["eval_samples_per_second"]),
            "time_to_acc": ratio(ref_tta, our_tta),
        },
    }
