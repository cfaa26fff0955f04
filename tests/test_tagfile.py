"""Tag a file (``birnn-predict CKPT FILE --out TAGGED``): CoNLL and slash files written back token by token with the
predicted tags, the input's lines kept, and what cannot be tagged refused with one line."""

import json
import os
import random
import re
from pathlib import Path

import pytest

from birnn import predict
from birnn.train import train
from conftest import make_cfg, run_cli

GOOD = ["good", "great", "fine", "superb"]
FILLER = ["the", "movie", "plot", "was", "a", "film"]


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> Path:
    """A tiny BiLSTM-CRF tagger of CoNLL files with three columns (word, POS, tag), data.max_length=8."""
    folder = tmp_path_factory.mktemp("tagger")
    rng = random.Random(0)
    with open(folder / "train.conll", "w") as f:
        for _ in range(60):
            for w in rng.choices(GOOD + FILLER, k=rng.randint(2, 6)):
                f.write(f"{w} NN {'ADJ' if w in GOOD else 'X'}\n")
            f.write("\n")
    cfg = make_cfg(
        "data=tagged",
        f"data.path={folder / 'train.conll'}",
        "data.max_length=8",
        "data.batch_size=8",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=8",
        "model.embedding_dim=8",
        "model.crf=true",
        "trainer.max_steps=12",
        "trainer.log_images=false",
    )
    train(cfg, folder / "run")
    return folder / "run" / "checkpoints" / "last.pt"


def json_tags(ckpt: Path, sentences: list[list[str]], capsys) -> list[list[str]]:
    """Each sentence's tags as ``birnn-predict --tokens ... --json`` gives them."""
    capsys.readouterr()
    predict.main([str(ckpt), "--json", *(a for s in sentences for a in ("--tokens", " ".join(s)))])
    return [r["tags"] for r in json.loads(capsys.readouterr().out)]


CONLL = (
    "-DOCSTART- -X- O\n"
    "\n"
    "# text = the good movie\n"
    "the\tDT\tX\n"
    "good\tJJ\tADJ \n"  # trailing white space: the tag follows the last column, not an empty one
    "Movie\tNN\tX\n"
    "\n"
    "\n"
    "a NN X\r\n"
    "superb JJ ADJ\r\n"
    "film NN X\r\n"
    "\n"
    "# SYM X\n"  # a token '#' (as many columns as the token lines), not a comment
    "fine JJ ADJ"  # no newline at the end
)


def test_a_conll_file_gets_a_last_column_of_the_tags_predict_gives(tagger, tmp_path, capsys):
    source = tmp_path / "test.conll"
    source.write_bytes(CONLL.encode())
    out = tmp_path / "tagged.conll"
    done = run_cli(str(tagger), str(source), "--out", str(out), cwd=tmp_path, module="birnn.predict")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"Wrote {out}: 3 sentences, 8 tokens tagged (conll)"
    sentences = [["the", "good", "Movie"], ["a", "superb", "film"], ["#", "fine"]]
    tags = json_tags(tagger, sentences, capsys)
    got = out.read_bytes().decode().split("\n")
    given = CONLL.split("\n")
    assert len(got) == len(given)
    assert got[:3] == ["-DOCSTART- -X- O O", "", "# text = the good movie"]  # -DOCSTART- keeps one column count
    assert got[3:6] == [f"the\tDT\tX\t{tags[0][0]}", f"good\tJJ\tADJ\t{tags[0][1]}", f"Movie\tNN\tX\t{tags[0][2]}"]
    assert got[6:8] == ["", ""]
    assert got[8:11] == [f"{line} {tag}\r" for line, tag in zip(["a NN X", "superb JJ ADJ", "film NN X"], tags[1])]
    assert got[11:] == ["", f"# SYM X {tags[2][0]}", f"fine JJ ADJ {tags[2][1]}"]
    # the file written is what data=tagged reads: the predictions are its last column, gold the one before
    predicted = [line.split()[-1] for line in got[3:] if line.strip()]
    assert predicted == [t for s in tags for t in s]


def test_a_conll_file_is_conll_to_a_tagger_trained_on_slash_files(tmp_path):
    """README's `birnn-predict CKPT test.conll --out tagged.conll` with experiment=brown_pos's tagger (slash files):
    the .conll file is read as CoNLL, not as word/TAG tokens."""
    (tmp_path / "train.txt").write_text("the/X good/ADJ movie/X\na/X superb/ADJ film/X\n" * 10)
    options = ["data.format=slash", "model.hidden_size=8", "trainer.max_steps=2", "tracker=none", "hydra.run.dir=run"]
    trained = run_cli("data=tagged", "data.path=train.txt", *options, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    (tmp_path / "test.conll").write_text("the\tDT\tX\ngood\tJJ\tADJ\n\n")
    done = run_cli("run/checkpoints/last.pt", "test.conll", "--out", "out.conll", cwd=tmp_path, module="birnn.predict")
    assert done.returncode == 0 and done.stdout.strip().endswith("2 tokens tagged (conll)"), done.stderr
    assert [len(line.split("\t")) for line in (tmp_path / "out.conll").read_text().splitlines()] == [4, 4, 1]


@pytest.mark.parametrize("gold", [True, False], ids=["word/tag", "words"])
def test_a_slash_file_gets_word_slash_tag_tokens(tagger, tmp_path, capsys, gold):
    sentences = [["the", "good", "and/or", "plot"], ["superb", "1/2"]]
    lines = [" ".join(f"{w}/xx" if gold else w for w in s) for s in sentences]
    source = tmp_path / "test.txt"
    source.write_text(f"{lines[0]}\n\n{lines[1].replace(' ', '  ')}\n")
    predict.main([str(tagger), str(source), "--out", str(tmp_path / "out.txt"), "--format", "slash", "--json"])
    assert json.loads(capsys.readouterr().out)["tokens"] == 6
    tags = json_tags(tagger, sentences, capsys)
    first, blank, second, end = (tmp_path / "out.txt").read_text().split("\n")
    assert first == " ".join(f"{w}/{t}" for w, t in zip(sentences[0], tags[0]))
    assert (blank, end) == ("", "") and second == "  ".join(f"{w}/{t}" for w, t in zip(sentences[1], tags[1]))


def test_a_txt_file_of_raw_text_is_tagged_line_by_line_as_text(tagger, tmp_path, capsys):
    (tmp_path / "raw.txt").write_text("the superb film\n\ngood plot\n")
    capsys.readouterr()
    predict.main([str(tagger), str(tmp_path / "raw.txt"), "--text", "the superb film", "--json"])
    given, first, second = json.loads(capsys.readouterr().out)
    assert first["tags"] == given["tags"] and len(first["tags"]) == 3 and len(second["tags"]) == 2


def test_standard_output_and_an_existing_output_file(tagger, tmp_path, capsys):
    source = tmp_path / "test.conll"
    source.write_text("the X\ngood ADJ\n")
    predict.main([str(tagger), str(source), "--out", "-"])
    written = capsys.readouterr().out
    assert written.startswith("the X ") and written.endswith("\n") and len(written.splitlines()) == 2
    out = tmp_path / "old.conll"
    out.write_text("an earlier result\n")  # replaced, as birnn-evaluate --out and birnn-export --out replace theirs
    predict.main([str(tagger), str(source), "--out", str(out)])
    assert out.read_text() == written


def error_line(capsys, *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        predict.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert stopped.value.code != 0 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("a X\n" * 9, [], r"test.conll:1: a sentence of 9 tokens, longer than the model's data.max_length=8"),
        ("a X\n\n\n# only a comment\n", ["--token-column", "2"], r"test.conll:1: 2 column\(s\), but the token is col"),
        ("\n\n-DOCSTART- X\n\n", [], r"test.conll holds no sentences to tag"),
    ],
)
def test_a_file_that_cannot_be_tagged_is_one_error_line_and_nothing_written(
    tagger, tmp_path, capsys, content, extra, message
):
    source = tmp_path / "test.conll"
    source.write_text(content)
    assert re.search(message, error_line(capsys, tagger, source, "--out", tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


def test_fifos_the_input_itself_and_wrong_combinations_are_refused(tagger, tmp_path, capsys):
    source, fifo = tmp_path / "test.conll", tmp_path / "fifo"
    source.write_text("the X\n")
    os.mkfifo(fifo)
    cases = [
        ([fifo, "--out", tmp_path / "out"], "a FIFO, not a regular file"),
        ([source, "--out", fifo], f"--out {fifo}: a FIFO, not a regular file: give a file to write, or - for"),
        ([source, "--out", tmp_path], "a directory, not a regular file"),
        ([source, "--out", source], "is the file to tag: write the tagged file elsewhere"),
        ([source, source, "--out", tmp_path / "out"], "--out tags one file: give exactly one PATH"),
        ([source, "--format", "slash"], "--format and --token-column describe the file that --out tags"),
    ]
    for args, message in cases:
        assert message in error_line(capsys, tagger, *args)
    assert source.read_text() == "the X\n" and not (tmp_path / "out").exists()
