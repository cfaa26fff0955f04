"""Per-step labels (tagging), token inputs and the CRF: loss masking, packed exactness, brute force, whole runs."""

import itertools
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_distributed import finished, torchrun
from test_resume import interrupt_at, kill_9_then_resume, state_of

from birnn.data.arrays import load_arrays
from birnn.data.pipeline import IGNORE
from birnn.data.targets import ClassPerStep, tag_scores
from birnn.models.crf import CRF
from birnn.models.rnn import RNNClassifier
from birnn.models.unpacked import Unpacked
from birnn.schema.errors import BirnnError
from birnn.schema.tags import span_scheme
from birnn.train import train
from conftest import WALL_CLOCK, make_cfg

LENGTHS = [5, 1, 3, 5, 2]
TAGS = 3
VOCAB = 11


def tagged_arrays(n: int, seed: int, steps: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Token IDs (0-padded) and per-step tags (-100 at padding); the tag follows the token, so it is learnable."""
    rng = np.random.default_rng(seed)
    x, y = np.zeros((n, steps), np.int64), np.full((n, steps), IGNORE, np.int64)
    for i in range(n):
        length = rng.integers(2, steps + 1)
        x[i, :length] = rng.integers(1, VOCAB, length)
        y[i, :length] = x[i, :length] % TAGS
    return x, y


CLASSES = ["O", "B-A", "I-A"]


@pytest.fixture
def tags_file(tmp_path: Path) -> Path:
    (x_train, y_train), (x_test, y_test) = tagged_arrays(120, 0), tagged_arrays(40, 1)
    path = tmp_path / "tags.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=np.array(CLASSES))
    return path


def write_conll(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """The sentences of ``tagged_arrays`` as a CoNLL file: token ID ``i`` is the word ``wi``."""
    path.write_text("".join("".join(f"w{i} {CLASSES[t]}\n" for i, t in zip(r, c) if i) + "\n" for r, c in zip(x, y)))
    return path


VARIANTS = ["softmax", "crf", "vectors"]  # a tagger of token IDs, with a CRF, and of words with pretrained vectors


def tagger_data(variant: str, tags_file: Path) -> list[str]:
    """The data and model overrides of a tagger ``variant`` of the sentences in ``tags_file``. ``vectors``: the same
    sentences as CoNLL files (``data=tagged``) with 8-dimensional GloVe vectors for half their words and two words
    they never hold, which training keeps as a frozen lookup (``birnn.models.embedding``)."""
    if variant != "vectors":
        crf = str(variant == "crf").lower()
        return ["data=arrays", f"data.path={tags_file}", "model.embedding_dim=8", f"model.crf={crf}"]
    folder, arrays = tags_file.parent, np.load(tags_file)
    rng = np.random.default_rng(0)
    glove = folder / "glove.txt"
    words = ["w1", "w3", "w5", "w7", "w11", "w12"]
    glove.write_text("".join(f"{w} {' '.join(f'{v:.4f}' for v in rng.normal(size=8))}\n" for w in words))
    return [
        "data=tagged",
        f"data.path={write_conll(folder / 'train.conll', arrays['x_train'], arrays['y_train'])}",
        f"data.test_path={write_conll(folder / 'test.conll', arrays['x_test'], arrays['y_test'])}",
        f"data.vectors={glove}",
        # without data=tagged's dropouts, as the arrays variants: each process draws its own (seed + rank)
        "model.embedding_dropout=0",
        "model.head_dropout=0",
    ]


def brute_force(crf: CRF, emissions: torch.Tensor, length: int) -> tuple[torch.Tensor, dict]:
    """log Z and every path's score of one sample's first ``length`` steps, by enumeration."""
    scores = {}
    for path in itertools.product(range(emissions.shape[-1]), repeat=length):
        s = crf.start[path[0]] + crf.end[path[-1]] + sum(emissions[t, path[t]] for t in range(length))
        s = s + sum(crf.transitions[path[t - 1], path[t]] for t in range(1, length))
        scores[path] = s
    return torch.logsumexp(torch.stack(list(scores.values())), 0), scores


def test_crf_loss_and_viterbi_match_brute_force_enumeration():
    torch.manual_seed(0)
    crf = CRF(TAGS)
    emissions = torch.randn(len(LENGTHS), max(LENGTHS), TAGS)
    lengths = torch.tensor(LENGTHS)
    tags = torch.randint(0, TAGS, (len(LENGTHS), max(LENGTHS)))
    nll = crf.nll(emissions, tags, lengths)
    decoded = crf.decode(emissions, lengths)
    for i, n in enumerate(LENGTHS):
        log_z, scores = brute_force(crf, emissions[i], n)
        gold = scores[tuple(tags[i, :n].tolist())]
        torch.testing.assert_close(nll[i], log_z - gold)
        best = max(scores, key=lambda p: scores[p].item())
        assert tuple(decoded[i, :n].tolist()) == best
        assert (decoded[i, n:] == IGNORE).all()


def test_per_step_loss_ignores_padding():
    torch.manual_seed(0)
    model = RNNClassifier(VOCAB, TAGS, hidden_size=4, vocab_size=VOCAB, per_step=True)
    logits = torch.randn(len(LENGTHS), max(LENGTHS), TAGS)
    lengths = torch.tensor(LENGTHS)
    y = torch.randint(0, TAGS, logits.shape[:2])
    padded = torch.arange(max(LENGTHS)) >= lengths[:, None]
    y[padded] = IGNORE
    expected = sum(
        torch.nn.functional.cross_entropy(logits[i, :n], y[i, :n], reduction="sum") for i, n in enumerate(LENGTHS)
    )
    tags = ClassPerStep([str(t) for t in range(TAGS)])
    torch.testing.assert_close(tags.loss_sum(model, logits, y, lengths), expected)
    junk = logits.clone()
    junk[padded] = 1e4 * torch.randn(int(padded.sum()), TAGS)
    torch.testing.assert_close(tags.loss_sum(model, junk, y, lengths), expected)  # padded logits never count
    pred = tags.predict(model, junk, lengths)
    assert (pred[padded] == IGNORE).all()
    assert tags.correct(pred, y) == ((pred == y) & ~padded).sum() <= lengths.sum()


@pytest.mark.parametrize("crf", [False, True])
@pytest.mark.parametrize("inputs", ["features", "tokens", "vectors"])
def test_per_step_outputs_of_a_padded_batch_equal_each_sample_alone(inputs, crf):
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    if inputs != "features":  # vectors: IDs 7 to 10 are pretrained words, a frozen lookup (birnn.models.embedding)
        frozen = {"frozen_words": 4} if inputs == "vectors" else {}
        model = RNNClassifier(
            VOCAB, TAGS, hidden_size=5, vocab_size=VOCAB, per_step=True, crf=crf, embedding_dim=4, **frozen
        )
        if frozen:
            model.pretrained.normal_(generator=g)
        x = torch.randint(1, VOCAB, (len(LENGTHS), max(LENGTHS)), generator=g)
    else:
        model = RNNClassifier(3, TAGS, hidden_size=5, per_step=True, crf=crf)
        x = torch.rand(len(LENGTHS), max(LENGTHS), 3, generator=g)
    lengths = torch.tensor(LENGTHS)
    x[torch.arange(max(LENGTHS)) >= lengths[:, None]] = 7  # junk in the padding
    model.eval()
    logits = model(x, lengths)
    assert logits.shape == (len(LENGTHS), max(LENGTHS), TAGS)
    for i, n in enumerate(LENGTHS):
        alone = model(x[i : i + 1, :n])
        assert (logits[i, :n] - alone[0]).abs().max() <= 1e-5
        assert (logits[i, n:] == model.fc.bias).all()  # padding: the head of zero outputs, never the junk
    tags = ClassPerStep([str(t) for t in range(TAGS)])
    path = tags.predict(model, logits, lengths)
    for i, n in enumerate(LENGTHS):
        assert torch.equal(path[i, :n], tags.predict(model, model(x[i : i + 1, :n]), None)[0])


def test_readout_set_with_per_step_labels_warns_once(caplog):
    RNNClassifier(3, TAGS, readout="mean", per_step=True)
    assert sum("do not apply to per-step labels" in r.message for r in caplog.records) == 1
    with pytest.raises(BirnnError, match="model.crf=true needs per-step labels"):
        RNNClassifier(3, TAGS, crf=True)


def test_token_arrays_load_with_lengths_and_padded_tags(tags_file):
    splits = load_arrays(path=str(tags_file))
    assert splits.vocab_size == VOCAB and splits.per_step and splits.train_x.dtype == torch.int64
    assert splits.train_lengths is not None
    assert ((splits.train_x != 0).sum(1) == splits.train_lengths).all()
    assert ((splits.train_y != IGNORE).sum(1) == splits.train_lengths).all()
    assert load_arrays(path=str(tags_file), vocab_size=50).vocab_size == 50


def test_tag_ids_beyond_the_vocabulary_and_empty_samples_are_one_line(tmp_path):
    x, y = tagged_arrays(10, 0)
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(BirnnError, match=r"holds token ID \d+, outside 0\.\.4 \(data.vocab_size\)"):
        load_arrays(path=str(tmp_path / "a.npz"), vocab_size=5)
    x[3] = 0
    np.savez(tmp_path / "b.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(BirnnError, match="sample 3 of x_train .* is empty"):
        load_arrays(path=str(tmp_path / "b.npz"))


def test_span_scores_follow_seqeval():
    assert span_scheme(["O", "B-PER", "I-PER"]) == "IOB2"
    assert span_scheme(["O", "B-X", "I-X", "E-X", "S-X"]) == "BIOES"
    assert span_scheme(["nn", "vb"]) is None
    classes = ["O", "B-A", "I-A"]
    y = torch.tensor([[1, 2, 0, IGNORE], [0, 1, 0, 1]])
    pred = torch.tensor([[1, 2, 0, IGNORE], [0, 1, 0, 0]])  # spans: 3 true, 2 found, both right
    scores = tag_scores(y, pred, classes)
    assert scores["span_precision"] == 1.0 and scores["span_recall"] == pytest.approx(2 / 3)
    assert "span_f1" not in tag_scores(y, pred, ["a", "b", "c"])


@pytest.mark.parametrize("crf", [False, True])
def test_a_tagging_run_scores_tokens_and_picks_best_by_the_monitor(tags_file, tmp_path, crf):
    cfg = make_cfg(
        "data=arrays",
        f"data.path={tags_file}",
        "data.batch_size=16",
        "data.val_size=20",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=8",
        "model.embedding_dim=8",
        f"model.crf={str(crf).lower()}",
        "trainer.epochs=3",
        "trainer.monitor=val_f1",
        "trainer.test_on=best",
    )
    metrics = train(cfg, tmp_path / "run")
    assert 0 <= metrics["test_accuracy"] <= 1 and {"test_f1", "test_span_f1", "best_val_f1"} <= metrics.keys()
    assert metrics["best_val_f1"] == max(e["val_f1"] for e in metrics["history"])
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["data"]["per_step"] and best["data"]["vocab_size"] == VOCAB
    assert ("crf.transitions" in best["model"]) == crf and "embedding.weight" in best["model"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["monitor"] == "val_f1"


def tagging_cfg(data: list[str], *extra: str):
    return make_cfg(
        *data,
        "data.batch_size=16",
        "data.val_size=20",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=8",
        "model.dropout=0.3",
        "model.num_layers=2",
        "trainer.checkpoint_every_n_steps=4",
        *extra,
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_stopped_tagging_run_resumes_bit_identically(tags_file, tmp_path, monkeypatch, variant):
    cfg = [*tagger_data(variant, tags_file), "trainer.epochs=3"]
    reference = train(tagging_cfg(cfg), tmp_path / "reference")
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        interrupt_at(monkeypatch, 9, lambda _: os.kill(os.getpid(), signal.SIGTERM))  # mid-epoch 2 (7 per epoch)
        with pytest.raises(SystemExit):
            train(tagging_cfg(cfg), tmp_path / "stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert state_of(tmp_path / "stopped")["progress"]["step_in_epoch"] == 2
    resumed = train(tagging_cfg(cfg), tmp_path / "stopped")
    assert {k: v for k, v in resumed.items() if k not in WALL_CLOCK} == {
        k: v for k, v in reference.items() if k not in WALL_CLOCK
    }
    for name, tensor in state_of(tmp_path / "stopped")["model"].items():
        assert torch.equal(tensor, state_of(tmp_path / "reference")["model"][name]), name


@pytest.mark.parametrize("variant", ["softmax", "crf", pytest.param("vectors", marks=pytest.mark.slow)])
def test_two_processes_tag_with_the_single_process_math(tags_file, tmp_path, variant):
    overrides = [
        *tagger_data(variant, tags_file),
        "data.batch_size=16",
        "data.val_size=21",  # 99 training sentences: the last batch (3) splits unevenly over 2 processes
        "device=cpu",
        "model.hidden_size=8",
        "trainer.epochs=2",
        "trainer.log_images=false",
    ]
    rc, _, err = finished(
        torchrun(
            *overrides,
            f"hydra.run.dir={tmp_path / 'ddp'}",
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    )
    assert rc == 0, err
    single = train(make_cfg(*overrides), tmp_path / "one")
    ddp, one = state_of(tmp_path / "ddp"), state_of(tmp_path / "one")
    assert ddp["world_size"] == 2
    for name, weight in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], weight, atol=1e-5, rtol=0, msg=name)
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == single["test_accuracy"] and metrics["val_f1"] == single["val_f1"]


@pytest.mark.parametrize(
    "options",
    [
        {"readout": "last"},
        {"readout": "final"},
        {"readout": "mean", "cell": "gru"},
        {"readout": "max"},
        {"per_step": True, "num_layers": 3},
        {"readout": "final", "bidirectional": False},
    ],
)
def test_the_unpacked_model_for_export_equals_the_packed_one(options):
    torch.manual_seed(2)
    model = RNNClassifier(VOCAB, TAGS, hidden_size=5, vocab_size=VOCAB, embedding_dim=4, **options).eval()
    lengths = torch.tensor(LENGTHS)
    x = torch.randint(1, VOCAB, (len(LENGTHS), max(LENGTHS)))
    x[torch.arange(max(LENGTHS)) >= lengths[:, None]] = 0
    packed, unpacked = model(x, lengths), Unpacked(model)(x, lengths)
    if model.per_step:
        valid = torch.arange(max(LENGTHS)) < lengths[:, None]
        packed, unpacked = packed[valid], unpacked[valid]
    assert (packed - unpacked).abs().max() <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["crf", "vectors"])
def test_kill_9_of_a_tagging_run_then_resume_is_bit_identical(tags_file, tmp_path, variant):
    args = [
        *tagger_data(variant, tags_file),
        "data.batch_size=8",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=8",
        "trainer.checkpoint_every_n_steps=3",
        "trainer.log_images=false",
    ]
    kill_9_then_resume(tmp_path, args)
