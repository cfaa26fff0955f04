"""Character features of each word (model.char_encoder: cnn, lstm): the character vocabulary, padding that changes
nothing, and the runner features a tagger with characters goes through (evaluate, predict, export, packs, resume,
torchrun)."""

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch

from birnn.data import tokenize
from birnn.data.pipeline import load_data
from birnn.engine.restore import restore
from birnn.models.characters import CharacterEncoder
from birnn.models.rnn import RNNClassifier
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import WALL_CLOCK, make_cfg, run_cli

TAGS = {"The": "DT", "cat": "NN", "dogs": "NNS", "running": "VBG", "Paris": "NNP", "1984": "CD", "jumped": "VBD"}


def write_sentences(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            for word in rng.choices(list(TAGS), k=rng.randint(2, 7)):
                f.write(f"{word}\t{TAGS[word]}\n")
            f.write("\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("chars")
    test = folder / "test.conll"
    test.write_text("The\tDT\nwalking\tVBG\nLondon\tNNP\n\nslowly\tRB\ncats\tNNS\nÉtienne\tNNP\n\n")
    return write_sentences(folder / "train.conll", 60), test


def tagger(corpus, *more: str) -> list[str]:
    train_file, test_file = corpus
    return [
        "data=tagged",
        f"data.path={train_file}",
        f"data.test_path={test_file}",
        "data.batch_size=8",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=8",
        "model.char_encoder=cnn",
        "trainer.log_images=false",
        *more,
    ]


@pytest.mark.parametrize("encoder", ["cnn", "lstm"])
def test_a_words_features_ignore_padding_of_words_and_characters(encoder):
    torch.manual_seed(0)
    chars = CharacterEncoder(encoder, 20, 6, 5, 3).eval()
    word = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, 0, 0, 0, 0], [7, 0, 0, 0, 0, 0, 0], [0] * 7])
    alone = chars(word)
    together = chars(padded)
    torch.testing.assert_close(together[0], alone[0], rtol=0, atol=1e-6)
    assert torch.equal(together[2], torch.zeros(chars.width))  # a padding step: no characters, zero features
    assert chars.width == (5 if encoder == "cnn" else 10)


@pytest.mark.parametrize("encoder", ["cnn", "lstm"])
def test_a_padded_batch_gives_each_sentence_what_it_gives_alone(encoder):
    torch.manual_seed(0)
    model = RNNClassifier(1, 4, 8, vocab_size=30, per_step=True, char_encoder=encoder, characters=20).eval()
    first = torch.tensor([[[5, 3, 4, 0], [6, 7, 0, 0]]])  # 2 tokens, words of 2 and 1 characters
    second = torch.tensor([[[9, 2, 3, 4], [2, 5, 0, 0], [8, 9, 9, 9]]])  # 3 tokens, up to 3 characters
    batch = torch.zeros(2, 5, 6, dtype=torch.int64)  # longer than both, in steps and in characters
    batch[0, :2, :4], batch[1, :3, :4] = first[0], second[0]
    out = model(batch, torch.tensor([2, 3]))
    torch.testing.assert_close(out[0, :2], model(first, torch.tensor([2]))[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1, :3], model(second, torch.tensor([3]))[0], rtol=0, atol=1e-6)


def test_embedding_dropout_applies_in_training_only():
    torch.manual_seed(0)
    model = RNNClassifier(1, 4, 8, vocab_size=30, per_step=True, char_encoder="cnn", characters=20)
    model.embedding_dropout = 0.5
    model.characters.dropout = 0.5
    x, lengths = torch.tensor([[[5, 3, 4], [6, 7, 0]]]), torch.tensor([2])
    assert not torch.equal(model.train()(x, lengths), model(x, lengths))  # two draws differ
    model.eval()
    assert torch.equal(model(x, lengths), model(x, lengths))


def test_characters_come_from_the_spelling_before_lowercasing_and_fit_on_the_training_split(corpus):
    splits = load_data(make_cfg(*tagger(corpus)).data, torch.device("cpu"), characters=True)
    tok = tokenize.from_json(splits.tokenizer)
    assert tok.lowercase and "T" in tok.characters and "P" in tok.characters and "É" not in tok.characters
    assert splits.characters == len(tok.characters) + 2
    assert splits.train_x.shape[2] == 1 + len("running")  # the longest word's characters
    x = splits.test_x[1]  # slowly cats Étienne: unknown characters (w, É) are ID 1
    assert tok.vocab[x[2, 0]] == "<unk>" and x[2, 1] == 1 and x[2, 2] == tok.characters.index("t") + 2
    assert x[0, 1:].tolist() == [tok.characters.index(c) + 2 if c in tok.characters else 1 for c in "slowly"] + [0]
    short = load_data(make_cfg(*tagger(corpus), "data.max_word_length=3").data, torch.device("cpu"), characters=True)
    assert short.train_x.shape[2] == 4 and tokenize.from_json(short.tokenizer).max_word_length == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"characters": ["a", "a"]}, "characters must be at most .* distinct single characters"),
        ({"characters": ["ab"]}, "characters must be at most"),
        ({"characters": ["a"] * 0 + [chr(i) for i in range(70_000)]}, "characters must be at most"),
        ({"max_word_length": 0}, "max_word_length must be in 1..1000"),
        ({"max_word_length": None}, "max_word_length must be in 1..1000"),
    ],
)
def test_crafted_characters_in_a_stored_tokenizer_are_refused(change, message):
    stored = json.loads(tokenize.Tokenizer("word", characters=["a", "b"], max_word_length=20).to_json())
    with pytest.raises(BirnnError, match=message):
        tokenize.from_json(json.dumps(stored | change))


@pytest.fixture(scope="module")
def tagger_run(corpus, tmp_path_factory) -> Path:
    """A tagger with a character CNN trained by the command line; its last checkpoint."""
    run_dir = tmp_path_factory.mktemp("tagger") / "run"
    done = run_cli(*tagger(corpus, "trainer.max_steps=4", f"hydra.run.dir={run_dir}"), cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr
    return run_dir / "checkpoints" / "last.pt"


def test_a_tagger_with_characters_trains_evaluates_and_predicts(tagger_run, tmp_path):
    ckpt = str(tagger_run)
    state = torch.load(ckpt, weights_only=True)
    assert state["data"]["characters"] == tokenize.from_json(state["data"]["tokenizer"]).character_ids
    assert "characters.conv.1.weight" in state["model"]
    evaluated = run_cli(ckpt, cwd=tmp_path, module="birnn.evaluate")
    assert evaluated.returncode == 0, evaluated.stderr
    (tmp_path / "in.txt").write_text("The dogs jumped\nParis 1984\n")
    predicted = run_cli(
        ckpt, "--text", "The cat", str(tmp_path / "in.txt"), "--json", cwd=tmp_path, module="birnn.predict"
    )
    assert predicted.returncode == 0, predicted.stderr
    results = json.loads(predicted.stdout)
    assert [len(r["tags"]) for r in results] == [2, 3, 2]
    restored = restore(Path(ckpt))  # predict's answer is the model's on the token and character IDs
    tok = tokenize.from_json(restored.tokenizer)
    x = torch.tensor(
        [[[i, *c, *[0] * (7 - len(c))] for i, c in zip(tok.ids(["Paris", "1984"]), tok.spelled(["Paris", "1984"]))]]
    )
    tags = restored.model(x).argmax(-1)[0].tolist()
    assert results[2]["tags"] == [restored.classes[t] for t in tags]


@pytest.mark.slow
def test_a_tagger_with_characters_exports_token_and_character_ids_and_lengths(tagger_run, tmp_path):
    pytest.importorskip("onnxruntime")
    ckpt = str(tagger_run)
    for fmt in ("onnx", "pt2"):  # each checks its graph against PyTorch on random token and character IDs
        exported = run_cli(
            ckpt, "--format", fmt, "--out", str(tmp_path / f"m.{fmt}"), cwd=tmp_path, module="birnn.export"
        )
        assert exported.returncode == 0, exported.stderr
        assert "characters int64 (N, 3, 20)" in exported.stdout and "Warning" not in exported.stderr
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["inputs", "characters", "lengths"]


def test_the_lstm_encoder_and_text_classification_with_the_word_tokenizer(tmp_path):
    rows = ["text,label"] + [
        f"{w} is {'Great' if i % 2 else 'bad'},{i % 2}" for i, w in enumerate(["Movie", "film"] * 10)
    ]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    common = [
        "data=text",
        f"data.path={tmp_path / 'reviews.csv'}",
        "device=cpu",
        "model.hidden_size=8",
        "model.char_encoder=lstm",
        "model.embedding_dropout=0.3",
        "trainer.max_steps=2",
        "trainer.log_images=false",
    ]
    metrics = train(make_cfg(*common), tmp_path / "run")
    assert "test_accuracy" in metrics
    model = restore(tmp_path / "run" / "checkpoints" / "last.pt").model
    assert model.characters.width == 50 and model.embedding_dropout == 0.3
    from birnn.predict import predict_texts

    answers = predict_texts(tmp_path / "run" / "checkpoints" / "last.pt", [], ["", "Movie is GREAT"])
    assert [a["label"] in ("0", "1") for a in answers] == [True, True]
    with pytest.raises(BirnnError, match="needs data.tokenizer=word, not char"):
        train(make_cfg(*common, "data.tokenizer=char"), tmp_path / "char")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=lstm_fcn"], "error: model.char_encoder is not a config key (character features belong to birnn's"),
        (
            ["model.char_encoder=rnn"],
            "error: Invalid config: model.char_encoder must be one of none, cnn, lstm; got 'rnn'",
        ),
        (
            ["data.tokenizer=bpe"],
            "error: model.char_encoder reads the characters of words: it needs data.tokenizer=word",
        ),
        (["data=digits"], "error: model.char_encoder reads the characters of words, which birnn.data.load_digits"),
    ],
)
def test_what_cannot_have_characters_is_one_error_line(corpus, tmp_path, overrides, message):
    args = tagger(corpus) if overrides[0] != "data=digits" else ["device=cpu", "model.char_encoder=cnn"]
    if overrides[0] == "data.tokenizer=bpe":
        (tmp_path / "t.csv").write_text("text,label\n" + "a b,0\nc d,1\n" * 10)
        args = ["data=text", f"data.path={tmp_path / 't.csv'}", "device=cpu", "model.char_encoder=cnn"]
    done = run_cli(*args, *overrides, "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_pack_stores_the_characters_and_a_pack_without_them_still_trains(corpus, tmp_path):
    train_file, test_file = corpus
    source = ["data=tagged", f"data.path={train_file}", f"data.test_path={test_file}"]
    for name, more in (("chars", ["model.char_encoder=cnn"]), ("plain", [])):
        packed = run_cli(str(tmp_path / name), *source, *more, cwd=tmp_path, module="birnn.pack")
        assert packed.returncode == 0, packed.stderr
    from_pack = [
        "data=packed",
        "data.batch_size=8",
        "device=cpu",
        "model.hidden_size=8",
        "trainer.max_steps=2",
        "trainer.log_images=false",
        # train() applies no pack settings (birnn-train does): data=tagged's model defaults, as the files' run has
        "model.embedding_dropout=0.3",
        "model.head_dropout=0.3",
    ]
    metrics = train(make_cfg(*from_pack, f"data.path={tmp_path / 'chars'}", "model.char_encoder=cnn"), tmp_path / "a")
    files = train(make_cfg(*tagger(corpus, "trainer.max_steps=2")), tmp_path / "b")  # the same data from the files
    assert {k: v for k, v in metrics.items() if k not in WALL_CLOCK} == {
        k: v for k, v in files.items() if k not in WALL_CLOCK
    }
    ckpt = str(tmp_path / "a" / "checkpoints" / "last.pt")
    for args, module in (([], "birnn.evaluate"), (["--text", "The cat"], "birnn.predict")):
        done = run_cli(ckpt, *args, cwd=tmp_path, module=module)
        assert done.returncode == 0, done.stderr
    assert "test_accuracy" in train(make_cfg(*from_pack, f"data.path={tmp_path / 'plain'}"), tmp_path / "c")
    with pytest.raises(BirnnError, match="model.char_encoder=none with character IDs in the data"):
        train(make_cfg(*from_pack, f"data.path={tmp_path / 'chars'}"), tmp_path / "d")
    with pytest.raises(BirnnError, match="which birnn.data.load_packed does not give"):
        train(make_cfg(*from_pack, f"data.path={tmp_path / 'plain'}", "model.char_encoder=cnn"), tmp_path / "e")


def test_a_pack_whose_splits_have_other_longest_words_trains_as_the_files(corpus, tmp_path):
    """Each split's characters are padded to its own longest word (as in memory): a test split whose longest word is
    shorter than the training split's still packs, and the pack trains as the files do."""
    train_file, _ = corpus
    short = tmp_path / "short.conll"
    short.write_text("The\tDT\ncat\tNN\n\n")  # 3 characters at most; the training split has 'running'
    source = ["data=tagged", f"data.path={train_file}", f"data.test_path={short}", "model.char_encoder=cnn"]
    packed = run_cli(str(tmp_path / "pack"), *source, cwd=tmp_path, module="birnn.pack")
    assert packed.returncode == 0, packed.stderr
    common = ["data.batch_size=8", "device=cpu", "model.hidden_size=8", "trainer.max_steps=2", "model.char_encoder=cnn"]
    common += ["trainer.log_images=false", "model.embedding_dropout=0.3", "model.head_dropout=0.3"]
    metrics = train(make_cfg("data=packed", f"data.path={tmp_path / 'pack'}", *common), tmp_path / "a")
    files = train(make_cfg(*source, *common), tmp_path / "b")
    assert {k: v for k, v in metrics.items() if k not in WALL_CLOCK} == {
        k: v for k, v in files.items() if k not in WALL_CLOCK
    }


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical_with_characters(tmp_path):
    from test_resume import kill_9_then_resume

    corpus = write_sentences(tmp_path / "train.conll", 300), write_sentences(tmp_path / "test.conll", 20, seed=1)
    run = [
        *tagger(corpus, "data.batch_size=20", "model.embedding_dropout=0.5"),
        "trainer.checkpoint_every_n_steps=7",
        "trainer.log_every_n_steps=4",
    ]
    kill_9_then_resume(tmp_path, run)


@pytest.mark.slow
def test_two_processes_do_the_single_process_math_with_characters(tmp_path):
    from test_distributed import finished, torchrun

    corpus = write_sentences(tmp_path / "train.conll", 75), write_sentences(tmp_path / "test.conll", 20, seed=1)
    run = [*tagger(corpus, "data.batch_size=10", "trainer.epochs=2"), "model.char_encoder=lstm"]
    run += ["model.embedding_dropout=0", "model.head_dropout=0"]  # dropout draws are per process (seed + rank)
    rc, _, err = finished(torchrun(*run, f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path, stderr=subprocess.PIPE))
    assert rc == 0, err
    single = train(make_cfg(*run), tmp_path / "one")
    ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)
    assert ddp["world_size"] == 2
    for name, weight in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], weight, atol=1e-5, rtol=0, msg=name)
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == single["test_accuracy"]


def test_the_benchmark_measures_a_character_tagger_against_its_plain_reference(corpus, tmp_path, capsys):
    from birnn.bench import main

    train_file, _ = corpus
    data = ["data=tagged", f"data.path={train_file}", "data.batch_size=8", "device=cpu", "device.num_threads=1"]
    quick = ["--rounds", "1", "--steps", "2", "--eval-every", "5", "--out", str(tmp_path / "b.json")]
    result = main([*quick, *data, "model.hidden_size=8", "model.char_encoder=cnn", "trainer.max_steps=6"])
    for side in ("reference", "birnn"):
        assert result["throughput"][side]["train_tokens_per_second"] > 0
        assert result["throughput"][side]["eval_tokens_per_second"] > 0
    assert "train tokens/s" in capsys.readouterr().out
