"""data=text and data=tagged: tokenizers fitted on the training split, stored as JSON, raw text at predict time."""

import csv
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from birnn import evaluate, export, predict
from birnn.data import tokenize
from birnn.data.pipeline import IGNORE, load_data
from birnn.data.tagged import load_tagged
from birnn.data.text import load_text
from birnn.engine.restore import restore
from birnn.schema.config import validate
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import make_cfg, run_cli

GOOD, BAD = "great lovely fine superb".split(), "awful terrible poor sad".split()
FILLER = "the a movie was plot and it".split()


def write_reviews(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            words = rng.choices(FILLER, k=rng.randint(1, 6)) + rng.choices(GOOD if label == "pos" else BAD, k=2)
            rng.shuffle(words)
            writer.writerow([label, " ".join(words)])
    return path


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_tokenizers_fit_on_training_texts_and_round_trip_through_json(kind):
    if kind == "bpe":
        pytest.importorskip("tokenizers")
    tok = tokenize.fit(["The cat sat.", "the dog sat"], kind, vocab_size=30 if kind == "bpe" else None, lowercase=True)
    again = tokenize.from_json(tok.to_json())
    assert again.size == tok.size and again.encode("the cat, sat!") == tok.encode("the cat, sat!")
    assert tok.encode("") == [1]  # an empty text: one <unk>
    if kind == "word":
        assert tok.vocab[:2] == ["<pad>", "<unk>"] and tok.split("The cat.") == ["the", "cat", "."]
        assert tok.encode("the zebra") == [tok.vocab.index("the"), 1]  # unseen in training: <unk>
    if kind == "char":
        assert tok.encode("tac") == [tok.vocab.index(c) for c in "tac"]


def test_vocab_size_and_min_freq_keep_the_frequent_tokens():
    tok = tokenize.fit(["a a a b b c", "a b d"], "word", vocab_size=4, min_freq=1)
    assert tok.vocab == ["<pad>", "<unk>", "a", "b"]
    assert tokenize.fit(["a a b"], "word", min_freq=2).vocab == ["<pad>", "<unk>", "a"]


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"kind": "word", "lowercase": True, "vocab": ["<pad>", "<unk>", "x" * 10_000], "bpe": None}, "refused"),
        ({"kind": "pickle", "lowercase": True, "vocab": ["<pad>", "<unk>"], "bpe": None}, "lacks its kind"),
        ({"kind": "word", "lowercase": True, "vocab": [1, 2], "bpe": None}, "list of strings"),
        ({"kind": "bpe", "lowercase": True, "vocab": ["<pad>", "<unk>"], "bpe": "{not json"}, "cannot be read"),
        ({"kind": "char", "lowercase": True, "vocab": ["<pad>", "<unk>"], "max_length": -2}, "positive integer"),
        ({"kind": "char", "lowercase": True, "vocab": ["<pad>", "<unk>"], "max_length": True}, "positive integer"),
    ],
)
def test_crafted_tokenizers_are_refused_with_one_line(stored, message):
    with pytest.raises(BirnnError, match=message):
        tokenize.from_json(json.dumps(stored))


def test_an_absurdly_large_stored_tokenizer_is_refused_before_parsing(monkeypatch):
    monkeypatch.setattr(tokenize, "MAX_JSON_CHARS", 100)
    with pytest.raises(BirnnError, match="characters long .* refused"):
        tokenize.from_json(" " * 101)


def test_text_splits_keep_lengths_and_truncate_with_one_warning(tmp_path, caplog):
    path = write_reviews(tmp_path / "train.csv", 60, 0)
    splits = load_text(path=str(path), test_fraction=0.25, max_length=4)
    assert splits.vocab_size == len(json.loads(splits.tokenizer)["vocab"]) and splits.classes == ["neg", "pos"]
    assert len(splits.test_y) == 15 and splits.train_x.shape[1] == 4 and int(splits.train_lengths.min()) >= 3
    assert ((splits.train_x != 0).sum(1) == splits.train_lengths).all()
    assert sum("longer than data.max_length=4" in r.message for r in caplog.records) == 1
    assert tokenize.from_json(splits.tokenizer).max_length == 4  # kept with the tokenizer, for predict --text
    with pytest.raises(BirnnError, match="data.max_length must be a positive number"):
        load_text(path=str(path), test_fraction=0.25, max_length=-1)
    # the tokenizer sees the training split only: a word only in the test split is <unk> there
    test_only = tmp_path / "test.csv"
    test_only.write_text("label,text\npos,zebra great\n")
    splits = load_text(path=str(path), test_path=str(test_only))
    assert splits.test_x[0, 0] == 1


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("words,label\nhi,pos\n", ".csv", ":1: no column 'text'"),
        ('{"text": "hi", "label": "a"}\n[1]\n', ".jsonl", ":2: not a JSON object"),
        ("hi", ".txt", "expected a .csv, .tsv or .jsonl"),
    ],
)
def test_bad_text_files_get_one_line_with_file_and_line(tmp_path, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(BirnnError, match=message):
        load_text(path=str(path), test_path=str(path))


def test_class_folders_of_txt_files(tmp_path):
    for label, words in (("neg", BAD), ("pos", GOOD)):
        (tmp_path / label).mkdir()
        for i, w in enumerate(words):
            (tmp_path / label / f"{i}.txt").write_text(f"the {w} movie")
    splits = load_text(path=str(tmp_path), test_path=str(tmp_path), tokenizer="char")
    assert splits.classes == ["neg", "pos"] and len(splits.train_y) == 8


def test_conll_and_slash_files_give_tags_per_token(tmp_path):
    conll = tmp_path / "a.conll"
    conll.write_text("-DOCSTART- O\n\nJohn NNP B-PER\nruns VBZ O\n\nMary NNP B-PER\n")
    splits = load_tagged(path=str(conll), test_path=str(conll), tag_column=2)
    assert splits.classes == ["B-PER", "O"] and splits.train_y.tolist() == [[0, 1], [0, IGNORE]]
    assert splits.train_lengths.tolist() == [2, 1]
    slash = tmp_path / "b.txt"
    slash.write_text("The/at dog/nn ./.\nA/at cat/nn\n")
    splits = load_tagged(path=str(slash), test_path=str(slash), format="slash")
    assert splits.classes == [".", "at", "nn"] and splits.train_x.shape == (2, 3)
    slash.write_text("The/at dog/nn\nA/at cat\n")
    with pytest.raises(BirnnError, match=r"b\.txt:2: 'cat' is not word/tag"):
        load_tagged(path=str(slash), test_path=str(slash), format="slash")
    conll.write_text("John NNP B-PER\nruns\n")
    with pytest.raises(BirnnError, match=r"a\.conll:2: 1 column"):
        load_tagged(path=str(conll), test_path=str(conll))
    conll.write_text("a X\nb X\nc X\n")
    with pytest.raises(BirnnError, match=r"a\.conll:1: a sentence of 3 tokens, longer than data.max_length=2"):
        load_tagged(path=str(conll), test_path=str(conll), max_length=2)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    train_csv, test_csv = write_reviews(folder / "train.csv", 120, 0), write_reviews(folder / "test.csv", 40, 1)
    cfg = make_cfg(
        "data=text",
        f"data.path={train_csv}",
        f"data.test_path={test_csv}",
        "data.max_length=6",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=16",
        "model.embedding_dim=16",
        "model.readout=final",
        "trainer.epochs=6",
    )
    metrics = train(cfg, folder / "run")
    assert metrics["test_accuracy"] > 0.8
    return folder / "run" / "checkpoints" / "last.pt"


def test_token_throughput_counts_every_valid_token_trained_on(text_run):
    stored = torch.load(text_run, weights_only=True)
    cfg = OmegaConf.create(stored["config"])
    splits = load_data(cfg.data, torch.device("cpu"), tokenizer=stored["data"]["tokenizer"])
    lengths = splits.train_lengths
    per_epoch = int(lengths.sum()) if lengths is not None else splits.train_x.numel()
    metrics, progress = stored["metrics"], stored["progress"]
    assert progress["tokens"] == cfg.trainer.epochs * per_epoch > 0  # every valid token of every epoch, no padding
    assert metrics["train_tokens_per_second"] == pytest.approx(progress["tokens"] / metrics["train_seconds"])


def test_evaluate_rereads_raw_text_with_the_stored_tokenizer(text_run, capsys):
    stored = torch.load(text_run, weights_only=True)
    assert isinstance(stored["data"]["tokenizer"], str)  # plain JSON, never a pickle
    scores = evaluate.evaluate_checkpoint(text_run)
    assert scores["test_accuracy"] == pytest.approx(stored["metrics"]["test_accuracy"])


def test_evaluate_on_a_test_file_does_not_read_the_training_file(text_run, tmp_path):
    """Issue #38: from another directory the run's relative data.path is missing; the test file is all it needs."""
    from conftest import run_cli

    stored = torch.load(text_run, weights_only=True)
    test_csv = Path(stored["config"]["data"]["test_path"])
    out = tmp_path / "scores.json"
    args = (str(text_run), "data.path=train.csv", "data.val_size=5", f"data.test_path={test_csv}", "--out", str(out))
    proc = run_cli(*args, cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["test_accuracy"] == pytest.approx(stored["metrics"]["test_accuracy"])


def test_predict_classifies_raw_text_and_lines_of_files(text_run, tmp_path, capsys):
    lines = tmp_path / "reviews.txt"
    lines.write_text("a great and lovely movie\n\nawful terrible plot\n")
    predict.main([str(text_run), "--text", "superb fine movie", str(lines), "--json"])
    results = json.loads(capsys.readouterr().out)
    assert [(r["file"], r["index"], r["label"]) for r in results] == [
        ("--text", 0, "pos"),
        (str(lines), 0, "pos"),
        (str(lines), 2, "neg"),
    ]


def test_a_crafted_tokenizer_in_a_checkpoint_is_one_error_line(text_run, tmp_path, capsys):
    state = torch.load(text_run, weights_only=True)
    state["data"]["tokenizer"] = json.dumps(
        {"kind": "word", "lowercase": True, "vocab": ["<pad>", "<unk>", "y" * 5000]}
    )
    state.pop("checksum")
    torch.save(state, tmp_path / "crafted.pt")
    with pytest.raises(SystemExit) as exit_:
        predict.main([str(tmp_path / "crafted.pt"), "--allow-unverified", "--text", "hello"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and "refused" in err and "Traceback" not in err


def test_a_bpe_checkpoint_without_the_text_extra_names_the_extra(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tokenizers")
    data = write_reviews(tmp_path / "train.csv", 60, 0)
    bpe = ["data=text", f"data.path={data}", "data.tokenizer=bpe", "data.vocab_size=60", "model.hidden_size=8"]
    cfg = make_cfg(*bpe, "device=cpu", "device.num_threads=1", "trainer.max_steps=1")
    train(cfg, tmp_path / "run")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as on an install without birnn[text]
    with pytest.raises(SystemExit) as exit_:
        predict.main([str(tmp_path / "run" / "checkpoints" / "last.pt"), "--text", "a fine movie"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: this BPE tokenizer needs Hugging Face tokenizers, which is not installed: pip install 'birnn[text]'"
    ]


def test_a_tagging_run_from_conll_files_and_predict_tags_raw_text(tmp_path, capsys):
    rng = random.Random(0)
    with open(tmp_path / "train.conll", "w") as f:
        for _ in range(80):
            for w in rng.choices(GOOD + FILLER, k=rng.randint(2, 6)):
                f.write(f"{w} {'ADJ' if w in GOOD else 'X'}\n")
            f.write("\n")
    cfg = make_cfg(
        "data=tagged",
        f"data.path={tmp_path / 'train.conll'}",
        "data.batch_size=8",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=16",
        "model.crf=true",
        "trainer.epochs=4",
    )
    metrics = train(cfg, tmp_path / "run")
    assert metrics["test_accuracy"] > 0.9 and "test_f1" in metrics
    assert metrics["test_baseline"] == "always 'X', the training split's most frequent tag overall"
    assert 0.5 < metrics["test_baseline_accuracy"] < metrics["test_accuracy"]
    predict.main([str(tmp_path / "run" / "checkpoints" / "last.pt"), "--text", "the great movie", "--json"])
    (result,) = json.loads(capsys.readouterr().out)
    assert result["tags"] == ["X", "ADJ", "X"] and result["label"] == "the/X great/ADJ movie/X"
    # --text splits off punctuation (3 tokens); --tokens splits on whitespace only, like the CoNLL file (2 tokens)
    run_ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    predict.main([run_ckpt, "--text", "movie's great", "--tokens", "movie's  great", "--json"])
    split, pretokenized = json.loads(capsys.readouterr().out)
    assert len(split["tags"]) == 4 and [w.rsplit("/", 1)[0] for w in pretokenized["label"].split()] == [
        "movie's",
        "great",
    ]
    scores = evaluate.evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    (tmp_path / "test.conll").write_text("the X\ngreat ADJ\nmovie X\n\n")
    gone = ["data.path=gone.conll", f"data.test_path={tmp_path / 'test.conll'}"]  # the training file is not read
    alone = evaluate.evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", gone)
    assert alone["classes"] == scores["classes"] and alone["test_tokens"] == 3 and alone["test_accuracy"] == 1.0
    assert scores["test_samples"] == scores["test_tokens"] == sum(c["support"] for c in scores["per_class"])
    assert f"on {scores['test_tokens']} tokens" in evaluate.as_text(scores)  # scored per token, not per sentence
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    export.main([str(ckpt), "--out", str(tmp_path / "tagger.onnx")])  # checks logits and Viterbi tags itself
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "tagger.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "tags"]
    model = restore(ckpt).model
    steps = session.get_inputs()[0].shape[1]
    x, lengths = torch.randint(1, model.embedding.num_embeddings, (3, steps)), torch.tensor([steps, 2, 1])
    x[torch.arange(steps) >= lengths[:, None]] = 0
    logits, tags = session.run(None, {"inputs": x.numpy(), "lengths": lengths.numpy()})
    assert torch.equal(torch.from_numpy(tags), model.crf.decode(model(x, lengths), lengths))
    assert (tags[1, 2:] == IGNORE).all() and (tags[1, :2] != IGNORE).all()


def test_export_takes_token_ids_and_lengths(text_run, tmp_path, capsys):
    export.main([str(text_run), "--format", "pt2", "--out", str(tmp_path / "model.pt2")])
    out = capsys.readouterr().out
    assert "token IDs int64 (N, 6), 0-padded, and lengths int64 (N,)" in out
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    restored = restore(text_run)
    x = torch.tensor([[5, 3, 0, 0, 0, 0], [2, 4, 6, 7, 2, 3], [9, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([2, 6, 1])
    torch.testing.assert_close(program(x, lengths), restored.model(x, lengths))
    torch.testing.assert_close(program(x[:1], lengths[:1]), restored.model(x[:1, :2]))  # = the sample alone


def test_onnx_export_of_a_text_model_prints_no_warning(text_run, tmp_path):
    """torch's UserWarning that x and lengths share the batch axis (they do, by design) stays out of the output."""
    pytest.importorskip("onnxruntime")
    proc = run_cli(str(text_run), "--out", str(tmp_path / "m.onnx"), cwd=tmp_path, module="birnn.export")
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("preset", "data"), [("brown_pos", "load_tagged"), ("spam", "load_text"), ("names", "load_text")]
)
def test_text_presets_compose_and_validate(preset, data):
    cfg = make_cfg(f"experiment={preset}")
    validate(cfg)
    assert cfg.data._target_ == f"birnn.data.{data}" and cfg.trainer.grad_clip == 1.0 and cfg.data.val_fraction > 0


def test_too_little_data_is_one_error_line_and_no_run_dir(tmp_path):
    """Issue #38: one sentence cannot give a test split and a training split; 2 sentences no validation split."""
    from conftest import run_cli

    (tmp_path / "one.conll").write_text("The\tat\njury\tnn\n\n")
    (tmp_path / "two.conll").write_text("The\tat\njury\tnn\n\nA\tat\n\n")
    for data, message in (
        (["data.path=one.conll"], "one.conll: 1 sentence(s), too few to hold out a test split"),
        (["data.path=two.conll", "data.test_path=two.conll", "data.val_fraction=0.1"], "too little data for a val"),
    ):
        proc = run_cli("data=tagged", *data, "hydra.run.dir=run", "tracker=none", cwd=tmp_path, module="birnn.train")
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
        assert not (tmp_path / "run").exists()
