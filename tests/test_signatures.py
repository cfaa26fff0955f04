"""data.unknown=signature: words outside the vocabulary become their shape-and-suffix signature, not <unk>."""

import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from test_resume import interrupt_at, state_of

from birnn import predict
from birnn.data import tokenize
from birnn.data.tagged import load_tagged
from birnn.data.text import load_text
from birnn.schema.config import SIGNATURE_SUFFIXES
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import WALL_CLOCK, make_cfg

STEMS = ["".join(random.Random(i).choices("bcdfgkmnprtvz", k=4)) for i in range(60)]  # made-up, all distinct


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("the", "<unk>"),
        ("Running", "<unk-Cap-ing>"),
        ("USA", "<unk-Caps>"),
        ("I", "<unk-Cap>"),
        ("1960", "<unk-num>"),
        ("IBM-360S", "<unk-Caps-num-dash-s>"),
        ("well-known", "<unk-dash>"),
        ("quickly", "<unk-ly>"),
        ("happiness", "<unk-ness>"),  # the longest suffix: -ness, not -s or -es
        ("John's", "<unk-Cap-'s>"),
        ("ring", "<unk>"),  # a suffix counts on words at least two characters longer
        ("ÉTÉS", "<unk-Caps-s>"),
    ],
)
def test_signatures_read_the_surface_form(word, expected):
    assert tokenize.signature(word, SIGNATURE_SUFFIXES) == expected


def test_left_out_training_words_and_unseen_words_get_their_signature(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("The/at dog/nn barked/vbd loudly/rb ./.\nthe/at dog/nn ran/vbd ./.\nRex/np barked/vbd ./.\n")
    test = tmp_path / "test.txt"
    test.write_text("The/at Fido/np slowly/rb walked/vbd 42/cd ./.\n")
    splits = load_tagged(path=str(path), test_path=str(test), format="slash", min_freq=2, unknown="signature")
    tok = tokenize.from_json(splits.tokenizer)
    assert tok.vocab == ["<pad>", "<unk>", ".", "the", "dog", "barked", "<unk-ly>", "<unk-Cap>"]
    # loudly, ran and Rex are rare: in training they are their signatures (ran has none: <unk>), which get learned
    assert splits.train_x[0].tolist() == [3, 4, 5, 6, 2] and splits.train_x[1, 2] == 1 and splits.train_x[2, 0] == 7
    # unseen at test time: Fido -> <unk-Cap>, slowly -> <unk-ly>; walked's <unk-ed> never seen -> <unk>; 42 -> <unk>
    assert splits.test_x[0].tolist() == [3, 7, 6, 1, 1, 2]
    default = load_tagged(path=str(path), test_path=str(test), format="slash", min_freq=2)
    assert default.test_x[0].tolist() == [3, 1, 1, 1, 1, 2] and "unknown" not in json.loads(default.tokenizer)
    csv = tmp_path / "texts.csv"
    csv.write_text("text,label\nthe dog barked loudly,a\nThe dog ran,b\nRex barked,a\n")
    texts = load_text(path=str(csv), test_path=str(csv), min_freq=2, unknown="signature")
    tok = tokenize.from_json(texts.tokenizer)
    assert tok.vocab == ["<pad>", "<unk>", "the", "dog", "barked", "<unk-ly>", "<unk-Cap>"]
    assert tok.split("The Fido") == ["The", "Fido"] and tok.encode("The Fido slowly") == [2, 6, 5]


def test_tokenizers_without_the_fields_load_as_before_and_signatures_round_trip():
    old = json.dumps({"kind": "word", "lowercase": True, "vocab": ["<pad>", "<unk>", "the"], "bpe": None})
    tok = tokenize.from_json(old)
    assert tok.unknown == "unk" and tok.to_json() == old and tok.ids(["The", "Quickly"]) == [2, 1]
    fitted = tokenize.fit(["the cat quickly", "the cat"], min_freq=2, lowercase=True, unknown="signature")
    again = tokenize.from_json(fitted.to_json())
    assert again.suffixes == list(SIGNATURE_SUFFIXES) and again.ids(["The", "slowly"]) == [
        2,
        again.vocab.index("<unk-ly>"),
    ]


SIGNED = {"kind": "word", "lowercase": True, "vocab": ["<pad>", "<unk>"], "bpe": None, "unknown": "signature"}


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({**SIGNED, "unknown": "pickle"}, "unknown must be one of unk, signature; got 'pickle'"),
        ({**SIGNED, "suffixes": "ly"}, "signature_suffixes must be a list of at most 100 non-empty strings"),
        ({**SIGNED, "suffixes": ["ly", 3]}, "signature_suffixes must be a list"),
        ({**SIGNED, "suffixes": [""]}, "signature_suffixes must be a list"),
        ({**SIGNED, "suffixes": ["ly"] * 101}, "refused"),
        ({**SIGNED, "suffixes": ["x" * 5000]}, "refused"),
        ({**SIGNED, "kind": "char", "suffixes": []}, "unknown=signature needs a word tokenizer"),
    ],
)
def test_a_crafted_signature_field_is_refused_with_one_line(stored, message):
    with pytest.raises(BirnnError, match=message) as error:
        tokenize.from_json(json.dumps(stored))
    assert str(error.value).startswith("the stored tokenizer's ") and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "char", "unknown": "signature"}, "data.unknown=signature needs a word tokenizer, not 'char'"),
        ({"unknown": "sig"}, "data.unknown must be one of unk, signature; got 'sig'"),
        ({"unknown": "signature", "suffixes": ["ly", ""]}, "data.signature_suffixes must be a list"),
    ],
)
def test_bad_signature_settings_are_one_line(options, message):
    with pytest.raises(BirnnError, match=message):
        tokenize.fit(["a b"], **options)


def write_suffix_corpus(path: Path, seed: int, stems: list[str]) -> Path:
    """Sentences of made-up words whose tag is their suffix's (-ly RB, -ness NN, -ed VBD), each word used once:
    only the suffix tells the tag, and no word of one file is in the other."""
    rng, words = random.Random(seed), [s + e for s in stems for e in ("ly", "ness", "ed")]
    rng.shuffle(words)
    tags = {"ly": "RB", "ness": "NN", "ed": "VBD"}
    with open(path, "w") as f:
        for i in range(0, len(words), 3):
            f.write(" ".join(f"{w}/{tags[next(e for e in tags if w.endswith(e))]}" for w in words[i : i + 3]) + "\n")
    return path


def suffix_cfg(folder: Path, *extra: str):
    return make_cfg(
        "experiment=brown_pos",
        f"data.path={write_suffix_corpus(folder / 'train.txt', 0, STEMS[:40])}",
        f"data.test_path={write_suffix_corpus(folder / 'test.txt', 1, STEMS[40:])}",
        "data.batch_size=8",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=8",
        "model.embedding_dim=8",
        "model.char_encoder=none",  # the suffix is the signature's evidence alone: no vectors, no characters
        "data.vectors=null",
        "trainer.epochs=3",
        "trainer.log_every_n_steps=5",
        "trainer.checkpoint_every_n_steps=5",
        *extra,
    )


def test_the_tagger_learns_that_unseen_ly_words_are_adverbs_and_predict_tags_them(tmp_path, capsys):
    assert make_cfg("experiment=brown_pos").data.unknown == "signature"
    metrics = train(suffix_cfg(tmp_path, "optimizer.lr=0.05"), tmp_path / "run")
    assert metrics["test_accuracy"] == 1.0  # every test word is unseen: only its signature tells its tag
    unk = train(suffix_cfg(tmp_path, "optimizer.lr=0.05", "data.unknown=unk"), tmp_path / "unk")
    assert unk["test_accuracy"] < 0.5  # all <unk>: one guess for every word
    predict.main([str(tmp_path / "run" / "checkpoints" / "last.pt"), "--text", "bravely zorkness wandered", "--json"])
    (result,) = json.loads(capsys.readouterr().out)
    assert result["label"] == "bravely/RB zorkness/NN wandered/VBD"


def test_a_stopped_signature_run_resumes_bit_identically(tmp_path, monkeypatch):
    reference = train(suffix_cfg(tmp_path), tmp_path / "reference")
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        interrupt_at(monkeypatch, 7, lambda _: os.kill(os.getpid(), signal.SIGTERM))  # mid-epoch 2
        with pytest.raises(SystemExit):
            train(suffix_cfg(tmp_path), tmp_path / "stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    resumed = train(suffix_cfg(tmp_path), tmp_path / "stopped")
    assert {k: v for k, v in resumed.items() if k not in WALL_CLOCK} == {
        k: v for k, v in reference.items() if k not in WALL_CLOCK
    }
    for name, tensor in state_of(tmp_path / "stopped")["model"].items():
        assert torch.equal(tensor, state_of(tmp_path / "reference")["model"][name]), name
