"""Training never writes a tokenizer that loading refuses (issue #35, item 7): the vocabulary limits are one constant
each (``birnn.data.tokenize.MAX_VOCAB``, ``MAX_TOKEN_CHARS``), checked by ``fit`` when training starts and by
``from_json`` when evaluate, predict or birnn-pack read it back."""

from __future__ import annotations

import pytest

from birnn.data import tokenize
from birnn.schema.errors import BirnnError
from conftest import FAST, run_cli


def test_a_word_too_long_to_load_is_refused_before_the_run_dir_is_made(tmp_path):
    rows = [f"word{i} {'x' * 1001 if i == 3 else 'plain'} text,{'ab'[i % 2]}" for i in range(20)]
    (tmp_path / "t.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    proc = run_cli(*FAST[1:], "data=text", "data.path=t.csv", "trainer.max_steps=2", "hydra.run.dir=run", cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and "a token of 1001 characters" in errors[0], proc.stderr
    assert f"({tokenize.MAX_TOKEN_CHARS})" in errors[0]
    assert not (tmp_path / "run").exists()


def test_what_fit_accepts_from_json_loads_and_no_more(monkeypatch):
    monkeypatch.setattr(tokenize, "MAX_VOCAB", 10)
    words = [" ".join(f"w{i}" for i in range(8))]
    fitted = tokenize.fit(words)
    assert fitted.size == 10 and tokenize.from_json(fitted.to_json()).vocab == fitted.vocab
    with pytest.raises(BirnnError, match=r"the vocabulary holds 11 tokens .* more than a tokenizer holds \(10\)"):
        tokenize.fit([" ".join(f"w{i}" for i in range(9))])
    with pytest.raises(BirnnError, match=r"data.vocab_size must be in 3..10"):
        tokenize.fit(words, vocab_size=11)
    longest = tokenize.fit(["y" * tokenize.MAX_TOKEN_CHARS])
    assert tokenize.from_json(longest.to_json()).vocab == longest.vocab
    with pytest.raises(BirnnError, match="a token of 1001 characters"):
        tokenize.fit(["y" * (tokenize.MAX_TOKEN_CHARS + 1)])
