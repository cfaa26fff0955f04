"""Every file birnn reads is a regular file read with a size bound (FIFOs and devices refused, never waited on), text
as UTF-8 with an optional BOM split at ``\\n`` only, JSON nested at most 100 deep; stored tokenizers are what birnn
writes (issue #35, items 8, 9, 12, 14, 15, 17, 19, 20, 21, 22)."""

import json
import os
import resource
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from birnn import report
from birnn.data import text, tokenize
from birnn.data.packed import MANIFEST, PackWriter, load_packed
from birnn.data.tagged import read_sentences
from birnn.data.text import load_text, read_texts
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import ROOT, make_cfg, run_cli, write_checkpoint

DEEP = "[" * 100_000  # nested JSON that overflows a recursive parser


@contextmanager
def within(seconds: int = 20):
    """Fail (TimeoutError) instead of blocking for ever: SIGALRM interrupts a blocked open or read."""

    def expired(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def limited(code: str, cwd: Path, gib: int = 4) -> subprocess.CompletedProcess:
    """``python -c code`` with at most ``gib`` GiB of address space and a timeout: a reader without bounds dies of
    MemoryError instead of exhausting the machine."""

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (gib * 2**30, gib * 2**30))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, preexec_fn=cap
    )


def one_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines and lines[-1].startswith("error: "), proc.stderr[-2000:]
    return lines[-1]


# --- item 9 and 21: FIFOs and devices -------------------------------------------------------------------------


def class_folders(root: Path) -> Path:
    for label in ("pos", "neg"):
        (root / label).mkdir(parents=True)
        (root / label / "a.txt").write_text(f"a {label} text")
    return root


def test_a_fifo_in_a_class_folder_is_refused_not_waited_on(tmp_path):
    folder = class_folders(tmp_path / "texts")
    os.mkfifo(folder / "pos" / "pipe.txt")
    with within(), pytest.raises(BirnnError, match=r"pipe\.txt: a FIFO, not a regular file"):
        read_texts(folder)


def test_a_txt_link_to_dev_zero_is_refused_not_read_until_memory_runs_out(tmp_path):
    folder = class_folders(tmp_path / "texts")
    (folder / "neg" / "zero.txt").symlink_to("/dev/zero")
    proc = limited(
        "from pathlib import Path\nfrom birnn.data.text import read_texts\nfrom birnn.schema.errors import BirnnError\n"
        f"try:\n    read_texts(Path({str(folder)!r}))\nexcept BirnnError as e:\n    print(e)\n",
        tmp_path,
    )
    assert proc.returncode == 0 and "zero.txt: a character device, not a regular file" in proc.stdout, proc.stderr


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".conll"])
def test_a_fifo_or_device_as_data_path_says_what_it_is(tmp_path, suffix):
    fifo = tmp_path / f"pipe{suffix}"
    os.mkfifo(fifo)
    with within(), pytest.raises(BirnnError, match=rf"pipe\{suffix}: a FIFO, not a regular file"):
        read_sentences(fifo) if suffix == ".conll" else read_texts(fifo)
    with within(), pytest.raises(BirnnError, match="/dev/null: a character device, not a regular file"):
        read_sentences(Path("/dev/null")) if suffix == ".conll" else read_texts(Path("/dev/null"))
    with pytest.raises(BirnnError, match=rf"absent{suffix}: no such file or folder"):
        read_sentences(tmp_path / f"absent{suffix}") if suffix == ".conll" else read_texts(tmp_path / f"absent{suffix}")


def test_a_study_storage_that_is_a_fifo_is_refused(tmp_path):
    from omegaconf import OmegaConf

    from birnn.studies.storage import open_storage

    fifo = tmp_path / "journal.log"
    os.mkfifo(fifo)
    cfg = OmegaConf.create({"storage": str(fifo), "heartbeat_interval_s": 60, "heartbeat_grace_s": 120})
    with within(), pytest.raises(BirnnError, match=r"search.storage=.*journal.log: a FIFO, not a regular file"):
        open_storage(cfg, tmp_path)
    cfg.storage = f"sqlite:///{fifo}"
    with within(), pytest.raises(BirnnError, match="a FIFO, not a regular file"):
        open_storage(cfg, tmp_path)


def fake_run(run: Path, metrics: str | None = None) -> Path:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.1\n")
    if metrics is not None:
        (run / "metrics.json").write_text(metrics)
    return run


def test_report_refuses_a_record_that_is_a_fifo(tmp_path):
    fake_run(tmp_path / "sweep" / "0", '{"test_accuracy": 0.5}')
    run = fake_run(tmp_path / "sweep" / "1", '{"test_accuracy": 0.6}')
    (run / ".hydra" / "overrides.yaml").unlink()
    os.mkfifo(run / ".hydra" / "overrides.yaml")
    proc = run_cli(str(tmp_path / "sweep"), cwd=tmp_path, module="birnn.report", timeout=60)
    assert "overrides.yaml: a FIFO, not a regular file" in one_error(proc)


# --- item 14: deeply nested JSON ------------------------------------------------------------------------------


def test_deeply_nested_json_is_one_error_everywhere(tmp_path, capsys):
    with pytest.raises(BirnnError, match="not valid JSON .*nested too deeply"):
        tokenize.from_json(DEEP)
    stored = {"kind": "bpe", "lowercase": False, "vocab": ["<pad>", "<unk>"], "bpe": DEEP}
    with pytest.raises(BirnnError, match="BPE tokenizer cannot be read: not valid JSON .*nested too deeply"):
        tokenize.from_json(json.dumps(stored))
    lines = tmp_path / "a.jsonl"
    lines.write_text('{"text": "fine", "label": "x"}\n' + DEEP + "\n")
    with pytest.raises(BirnnError, match=r"a\.jsonl:2: not a JSON object \(nested too deeply"):
        read_texts(lines)
    run = fake_run(tmp_path / "sweep" / "0", DEEP)
    assert report.main([str(run.parent)]) == 2
    assert "metrics.json: not valid JSON (nested too deeply" in capsys.readouterr().err


def series_pack(out: Path) -> Path:
    rng = np.random.default_rng(0)
    with PackWriter(out, ["a", "b"]) as pack:
        for split in ("train", "test"):
            pack.split(split).append(rng.random((4, 3, 2), dtype=np.float32), np.array([0, 1, 0, 1]))
    return out


def rewrite_manifest(pack: Path, change) -> None:
    manifest = json.loads((pack / MANIFEST).read_text())
    change(manifest)
    (pack / MANIFEST).write_text(json.dumps(manifest))


def test_a_deeply_nested_manifest_or_manifest_tokenizer_is_refused(tmp_path):
    pack = series_pack(tmp_path / "p")
    (pack / MANIFEST).write_text(DEEP)
    with pytest.raises(BirnnError, match="manifest.json is unreadable: .*nested too deeply"):
        load_packed(path=str(pack))
    pack = series_pack(tmp_path / "q")
    rewrite_manifest(pack, lambda m: m.update(vocab_size=5, tokenizer=DEEP, normalization=None))
    with pytest.raises(BirnnError, match="tokenizer is not valid JSON .*nested too deeply"):
        load_packed(path=str(pack))


# --- item 17: a pack's arrays and statistics ------------------------------------------------------------------


def test_an_object_array_in_a_pack_is_refused(tmp_path):
    pack = series_pack(tmp_path / "p")
    x = pack / "train_x.npy"
    np.save(x, np.array([[[1]] * 3] * 4, dtype=object), allow_pickle=True)

    def describe(m):
        m["splits"]["train"]["x"].update(bytes=x.stat().st_size, dtype="|O", shape=[4, 3, 1])

    rewrite_manifest(pack, describe)
    with pytest.raises(BirnnError, match=r"train_x.npy holds object values; a pack holds numbers only"):
        load_packed(path=str(pack))


@pytest.mark.parametrize("stats", ["x", {"mean": [0.0], "std": "y"}, {"mean": [0.0] * 3, "std": [1.0] * 3}])
def test_a_manifest_normalization_of_the_wrong_type_or_length_is_refused(tmp_path, stats):
    pack = series_pack(tmp_path / "p")
    rewrite_manifest(pack, lambda m: m.update(normalization=stats))
    with pytest.raises(BirnnError, match="damaged|normalization has 3 features; train_x has 2"):
        load_packed(path=str(pack))


# --- item 12: bounded sizes ---------------------------------------------------------------------------------------


def test_padding_beyond_the_bound_asks_for_data_max_length(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "MAX_PADDED", 1000)
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "".join(f"{'x' * (600 if i == 0 else 3)},{i % 2}\n" for i in range(4)))
    with pytest.raises(BirnnError, match=r"padding 4 samples to the longest \(600 tokens\).*set data.max_length"):
        load_text(path=str(csv), test_path=str(csv), tokenizer="char")
    assert load_text(path=str(csv), test_path=str(csv), tokenizer="char", max_length=100).train_x.shape == (4, 100)


def test_a_billion_as_a_table_label_is_refused_not_a_billion_class_names(tmp_path):
    pytest.importorskip("pyarrow")
    table = tmp_path / "t.csv"
    table.write_text("label,a,b\n1000000000,1,2\n0,3,4\n")
    proc = limited(
        f"import sys\nfrom birnn.pack import main\nsys.argv = ['birnn-pack', 'out', '--train', {str(table)!r}, "
        f"'--test', {str(table)!r}]\nmain()\n",
        tmp_path,
    )
    assert "label 1000000000" in one_error(proc) and "at most 100000 without --classes" in proc.stderr


# --- items 19, 20, 22: what a text file says ------------------------------------------------------------------


def test_a_byte_order_mark_is_not_part_of_the_first_column_or_token(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("\ufefftext,label\nfine,a\n", encoding="utf-8")
    assert read_texts(csv) == (["fine"], ["a"])
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('\ufeff{"text": "fine", "label": "a"}\n', encoding="utf-8")
    assert read_texts(jsonl) == (["fine"], ["a"])
    conll = tmp_path / "t.conll"
    conll.write_text("\ufeffslow ADJ\nword NN\n", encoding="utf-8")
    assert read_sentences(conll)[0].tokens == ["slow", "word"]


def test_line_separators_inside_a_conll_line_keep_it_one_line(tmp_path):
    conll = tmp_path / "t.conll"
    conll.write_text("a\u2028b X\nc\x85d Y\n\nlonely\n", encoding="utf-8")
    with pytest.raises(BirnnError, match=r"t\.conll:4: 1 column"):
        read_sentences(conll)
    conll.write_text("a\u2028b X\nc\x85d Y\r\n\ne\x0cf Z\n", encoding="utf-8")
    first, second = read_sentences(conll)
    assert first.tokens == ["a\u2028b", "c\x85d"] and first.tags == ["X", "Y"] and second.where.endswith(":4")


def test_a_duplicate_csv_column_is_refused(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("text,label,text\nfirst,a,second\n")
    with pytest.raises(BirnnError, match=r"t\.csv:1: column 'text' appears twice in the header"):
        read_texts(csv)


# --- items 8 and 15: stored tokenizers are what birnn writes --------------------------------------------------


def bpe_stored(**change) -> str:
    pytest.importorskip("tokenizers")
    tok = tokenize.fit(["hello world foo bar", "hello there"], "bpe", vocab_size=40)
    hf = {**json.loads(tok.bpe), **change}
    return json.dumps({"kind": "bpe", "lowercase": False, "vocab": ["<pad>", "<unk>"], "bpe": json.dumps(hf)})


def bpe_model(**change) -> dict:
    tok = tokenize.fit(["hello world foo bar", "hello there"], "bpe", vocab_size=40)
    model = json.loads(tok.bpe)["model"]
    return {**model, **change}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"padding": {"strategy": {"Fixed": 600000}, "pad_id": 0, "pad_token": "<pad>"}}, "padding"),
        ({"padding": {"strategy": "BatchLongest", "pad_id": 7777, "pad_token": "<pad>"}}, "padding"),
        ({"truncation": {"max_length": 1, "strategy": "LongestFirst", "stride": 0}}, "truncation"),
        ({"normalizer": {"type": "Lowercase"}}, "normalizer"),
        ({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated"}}, "pre_tokenizer"),
    ],
)
def test_a_bpe_tokenizer_with_settings_birnn_never_writes_is_refused(change, named):
    with pytest.raises(BirnnError, match=f"sets {named}.*refused"):
        tokenize.from_json(bpe_stored(**change))


def test_bpe_ids_beyond_the_vocabulary_and_other_models_are_refused():
    pytest.importorskip("tokenizers")
    model = bpe_model()
    with pytest.raises(BirnnError, match=r"model.vocab \(IDs 0..n-1"):
        tokenize.from_json(bpe_stored(model={**model, "vocab": {**model["vocab"], "far": 100_000}}))
    with pytest.raises(BirnnError, match="no BPE model"):
        unigram = {"type": "Unigram", "unk_id": 1, "vocab": [["<pad>", 0.0], ["<unk>", 0.0]]}
        tokenize.from_json(bpe_stored(model=unigram))
    with pytest.raises(BirnnError, match=r"model.type"):
        tokenize.from_json(bpe_stored(model={**model, "type": "WordPiece"}))
    tokenize.from_json(bpe_stored())  # as birnn writes it


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    csv = folder / "t.csv"
    csv.write_text("text,label\n" + "".join(f"{w} movie,{w}\n" for w in ["good", "bad"] * 10))
    cfg = make_cfg(
        "data=text",
        f"data.path={csv}",
        f"data.test_path={csv}",
        "device.num_threads=1",
        "model.hidden_size=8",
        "model.embedding_dim=8",
        "trainer.max_steps=2",
    )
    train(cfg, folder / "run")
    return folder / "run" / "checkpoints" / "last.pt"


def test_predict_refuses_a_fifo_txt_file(text_checkpoint, tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    proc = run_cli(str(text_checkpoint), str(fifo), cwd=tmp_path, module="birnn.predict", timeout=90)
    assert "pipe.txt: a FIFO, not a regular file" in proc.stderr and proc.returncode != 0, proc.stderr[-2000:]


def test_predict_refuses_a_stored_vocabulary_larger_than_the_model(text_checkpoint, tmp_path):
    state = torch.load(text_checkpoint, weights_only=True)
    stored = json.loads(state["data"]["tokenizer"])
    stored["vocab"] += [f"extra{i}" for i in range(50)]
    state["data"]["tokenizer"] = json.dumps(stored)
    crafted = write_checkpoint(state, tmp_path / "crafted.pt")
    proc = run_cli(str(crafted), "--text", "extra49 movie", cwd=tmp_path, module="birnn.predict", timeout=90)
    assert "token IDs" in one_error(proc)
