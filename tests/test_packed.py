"""Packs (birnn-pack, data=packed): training from memory maps equals the in-memory path, and every damaged or
incomplete pack is refused with one error line."""

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from test_distributed import finished, metrics_of, run_dirs, torchrun
from test_resume import interrupt_at, state_of
from test_studies import TINY_SPACE
from test_sweeps import read_csv
from test_text import FILLER, GOOD, write_reviews

from birnn import evaluate, predict
from birnn.data import normalize
from birnn.data.packed import MANIFEST, PackWriter, load_packed, verify
from birnn.data.pipeline import load_data
from birnn.pack import pack_config
from birnn.schema.errors import BirnnError
from birnn.train import train
from conftest import FAST, ROOT, make_cfg, peak_rss, run_cli

RUN = [*FAST, "trainer.epochs=1", "trainer.max_steps=12", "trainer.checkpoint_every_n_steps=5"]


@pytest.fixture(scope="module")
def digits_pack(tmp_path_factory):
    out = tmp_path_factory.mktemp("packs") / "digits"
    pack_config(out, ["data=digits"], overwrite=False)
    return out


def packed(pack, *overrides):
    return [*RUN, "data=packed", f"data.path={pack}", *overrides]


def weights(run_dir):
    return state_of(run_dir)["model"]


def test_manifest_records_shapes_checksums_and_training_statistics(digits_pack):
    manifest = json.loads((digits_pack / MANIFEST).read_text())
    memory = load_data(make_cfg("data=digits").data, torch.device("cpu"))
    x = manifest["splits"]["train"]["x"]
    assert x["shape"] == list(memory.train_x.shape) and x["dtype"] == "<f4"
    assert x["bytes"] == (digits_pack / "train_x.npy").stat().st_size
    assert np.array_equal(np.load(digits_pack / "train_x.npy", mmap_mode="r"), memory.train_x.numpy())
    expected = normalize.fit(memory.train_x)
    np.testing.assert_allclose(manifest["normalization"]["mean"], expected["mean"], rtol=1e-9)
    np.testing.assert_allclose(manifest["normalization"]["std"], expected["std"], rtol=1e-9)
    assert verify(digits_pack) == 4


@pytest.mark.parametrize("extra", [[], ["data.val_size=200", "data.normalize=true", "data.patch=3"]])
def test_training_on_a_pack_is_bit_identical_to_in_memory(digits_pack, tmp_path, extra):
    memory = train(make_cfg(*RUN, *extra), tmp_path / "memory")
    mapped = train(make_cfg(*packed(digits_pack, *extra)), tmp_path / "packed")
    assert mapped["test_accuracy"] == memory["test_accuracy"]
    assert mapped["history"] == memory["history"]
    ref = weights(tmp_path / "memory")
    for name, w in weights(tmp_path / "packed").items():
        assert torch.equal(w, ref[name]), name


def test_gathered_batches_stay_off_the_training_splits(digits_pack):
    data = load_data(make_cfg(*packed(digits_pack)).data, torch.device("cpu"))
    assert not isinstance(data.train_x, torch.Tensor)  # a memory map, read batch by batch
    memory = load_data(make_cfg("data=digits").data, torch.device("cpu"))
    idx = torch.tensor([5, 3, 1000, 3])
    assert torch.equal(data.train_x[idx], memory.train_x[idx])
    assert torch.equal(data.test_x[10:20], memory.test_x[10:20])


def test_resume_mid_epoch_on_a_pack_is_bit_identical(digits_pack, tmp_path, monkeypatch):
    reference = train(make_cfg(*packed(digits_pack)), tmp_path / "reference")
    run_dir = tmp_path / "killed"

    def die(_):
        raise KeyboardInterrupt  # dies like kill -9: nothing saved after the step-5 and step-10 checkpoints

    with monkeypatch.context() as m:
        interrupt_at(m, 11, die)
        with pytest.raises(KeyboardInterrupt):
            train(make_cfg(*packed(digits_pack)), run_dir)
    assert state_of(run_dir)["progress"]["step_in_epoch"] == 10
    resumed = train(make_cfg(*packed(digits_pack)), run_dir)
    assert resumed["history"] == reference["history"] and resumed["test_accuracy"] == reference["test_accuracy"]
    ref = weights(tmp_path / "reference")
    for name, w in weights(run_dir).items():
        assert torch.equal(w, ref[name]), name


def test_evaluate_predict_and_export_read_a_packed_run(digits_pack, tmp_path):
    train(make_cfg(*packed(digits_pack)), tmp_path)
    ckpt = str(tmp_path / "checkpoints" / "last.pt")
    proc = run_cli(ckpt, cwd=tmp_path, module="birnn.evaluate")
    assert proc.returncode == 0, proc.stderr
    scores = json.loads((tmp_path / "checkpoints" / "evaluation.json").read_text())
    assert scores["test_accuracy"] == json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"]
    np.save(tmp_path / "x.npy", np.zeros((8, 8), dtype="float32"))
    proc = run_cli(ckpt, str(tmp_path / "x.npy"), "--json", cwd=tmp_path, module="birnn.predict")
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["prediction"] in range(10), proc.stderr
    proc = run_cli(ckpt, "--out", str(tmp_path / "m.onnx"), cwd=tmp_path, module="birnn.export")
    assert proc.returncode == 0 and (tmp_path / "m.onnx").stat().st_size > 0, proc.stderr


def test_a_sweep_trains_from_a_pack(digits_pack, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *packed(digits_pack), "optimizer.lr=1e-3,3e-3", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(read_csv(sweep / "summary.csv")) == 2


@pytest.mark.slow
def test_a_search_trains_its_trials_from_a_pack(digits_pack, tmp_path):
    study = tmp_path / "study"
    args = packed(digits_pack, TINY_SPACE, "search.pruner=none", "search.n_trials=2", f"search.dir={study}")
    proc = run_cli(*args, cwd=tmp_path, module="birnn.search")
    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="birnn", storage=f"sqlite:///{study / 'study.db'}").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 and trials[0].params != trials[1].params
    assert all(0 <= t.value <= 1 for t in trials)  # validation scores of models trained from the pack


@pytest.mark.parametrize(("shape", "fewer", "changed"), [((8, 4), 0, "input_shape"), ((8, 8), 1, "samples")])
def test_a_pack_whose_shapes_differ_from_the_checkpoint_is_refused_at_resume(
    digits_pack, tmp_path, monkeypatch, shape, fewer, changed
):
    pack = copy_pack(digits_pack, tmp_path / "p")
    splits = load_packed(path=str(pack))
    n_train, n_test = len(splits.train_y) - fewer, len(splits.test_y)
    with monkeypatch.context() as m:
        interrupt_at(m, 7, lambda _: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train(make_cfg(*packed(pack)), tmp_path / "run")
    with PackWriter(pack, [str(i) for i in range(10)], kind="image", overwrite=True) as other:
        other.split("train").append(np.zeros((n_train, *shape), np.float32), np.arange(n_train) % 10)
        other.split("test").append(np.zeros((n_test, *shape), np.float32), np.arange(n_test) % 10)
    with pytest.raises(BirnnError, match=f"{changed} changed"):
        train(make_cfg(*packed(pack)), tmp_path / "run")


def test_the_writer_packs_variable_length_chunks(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 9, 2)).astype(np.float32)
    lengths = rng.integers(1, 10, 50)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    y = rng.integers(0, 3, 50)
    with PackWriter(tmp_path / "p", ["a", "b", "c"], variable=True) as pack:
        for i in range(0, 40, 16):  # chunks of 16, 16, 8
            pack.split("train").append(x[i : min(i + 16, 40)], y[i : min(i + 16, 40)], lengths[i : min(i + 16, 40)])
        pack.split("test").append(torch.from_numpy(x[40:]), torch.from_numpy(y[40:]), torch.from_numpy(lengths[40:]))
    splits = load_packed(path=str(tmp_path / "p"))
    assert torch.equal(splits.train_lengths, torch.from_numpy(lengths[:40]))
    assert torch.equal(splits.test_x[torch.arange(10)], torch.from_numpy(x[40:]))
    stats = json.loads((tmp_path / "p" / MANIFEST).read_text())["normalization"]
    expected = normalize.fit(torch.from_numpy(x[:40]), torch.from_numpy(lengths[:40]))
    np.testing.assert_allclose(stats["mean"], expected["mean"], rtol=1e-9)


def one_error_line(proc):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def copy_pack(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_pack_carries_the_training_settings_of_its_data_option(digits_pack, tmp_path):
    """Issue #38: data=digits sets trainer.epochs=15; a pack of it trains 15 epochs too, unless the command line
    says otherwise, and says so. A pack without the field (the previous release's) trains as before."""
    manifest = json.loads((digits_pack / MANIFEST).read_text())
    assert manifest["training"] == {"trainer.epochs": 15, "trainer.log_every_n_steps": 5}
    assert manifest["training_from"] == "data=digits"
    old = copy_pack(digits_pack, tmp_path / "old")
    (old / MANIFEST).write_text(json.dumps({k: v for k, v in manifest.items() if not k.startswith("training")}))
    for pack, epochs in ((digits_pack, 15), (old, 2)):
        args = [*FAST, "data=packed", f"data.path={pack}", "trainer.max_steps=2", "trainer.log_every_n_steps=1"]
        proc = run_cli(*args, f"hydra.run.dir={tmp_path / pack.name}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        trainer = state_of(tmp_path / pack.name)["config"]["trainer"]
        assert (trainer["epochs"], trainer["log_every_n_steps"]) == (epochs, 1)
        said = "data=packed: trainer.epochs=15 from the pack (what data=digits sets for training, recorded by "
        said += "birnn-pack); kept trainer.log_every_n_steps=1 as set here"
        assert (said in (tmp_path / pack.name / "train.log").read_text()) == (pack == digits_pack)


def test_a_pack_without_manifest_is_refused(digits_pack, tmp_path):
    pack = copy_pack(digits_pack, tmp_path / "p")
    (pack / MANIFEST).unlink()
    line = one_error_line(run_cli(*packed(pack), "hydra.run.dir=run", cwd=tmp_path))
    assert "no manifest.json" in line and "did not finish" in line


def test_a_manifest_that_is_no_file_is_refused_without_blocking(digits_pack, tmp_path):
    pack = copy_pack(digits_pack, tmp_path / "p")
    (pack / MANIFEST).unlink()
    os.mkfifo(pack / MANIFEST)  # reading it would wait for a writer forever
    with pytest.raises(BirnnError, match="manifest.json is unreadable: manifest.json: a FIFO, not a regular file"):
        load_packed(path=str(pack))


def test_a_truncated_file_is_refused_on_open(digits_pack, tmp_path):
    pack = copy_pack(digits_pack, tmp_path / "p")
    with (pack / "train_x.npy").open("r+b") as f:
        f.truncate(1000)
    line = one_error_line(run_cli(*packed(pack), "hydra.run.dir=run", cwd=tmp_path))
    assert "train_x.npy has 1000 bytes" in line


def test_verify_finds_a_changed_byte(digits_pack, tmp_path):
    pack = copy_pack(digits_pack, tmp_path / "p")
    proc = run_cli(str(pack), "--verify", cwd=tmp_path, module="birnn.pack")
    assert proc.returncode == 0 and "4 files match" in proc.stdout
    with (pack / "test_x.npy").open("r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    assert "test_x.npy: SHA-256 differs" in one_error_line(
        run_cli(str(pack), "--verify", cwd=tmp_path, module="birnn.pack")
    )


def test_packing_over_a_pack_needs_overwrite(digits_pack, tmp_path):
    pack = copy_pack(digits_pack, tmp_path / "p")
    line = one_error_line(run_cli(str(pack), "data=digits", cwd=tmp_path, module="birnn.pack"))
    assert "already holds a pack" in line and "--overwrite" in line
    proc = run_cli(str(pack), "data=digits", "--overwrite", cwd=tmp_path, module="birnn.pack")
    assert proc.returncode == 0, proc.stderr
    assert verify(pack) == 4


def test_a_full_disk_leaves_no_manifest_and_says_so(tmp_path):
    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run(
        [sys.executable, "-m", "birnn.pack", str(tmp_path / "p"), "data=digits"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        preexec_fn=small_disk,
        timeout=120,
    )
    line = one_error_line(proc)
    assert "disk full" in line and "No manifest was written" in line
    assert not (tmp_path / "p" / MANIFEST).exists()
    line = one_error_line(run_cli(*packed(tmp_path / "p"), "hydra.run.dir=run", cwd=tmp_path))
    assert "did not finish" in line


@pytest.mark.slow
def test_two_processes_on_a_pack_equal_one(digits_pack, tmp_path):
    run = [*packed(digits_pack, "data.val_size=1", "trainer.max_steps=30")]
    rc, _, err = finished(torchrun(*run, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    assert rc == 0, err
    (ddp_dir,) = run_dirs(tmp_path)
    single = train(make_cfg(*run), tmp_path / "single")
    ddp = metrics_of(ddp_dir)
    assert ddp["world_size"] == 2 and ddp["test_accuracy"] == single["test_accuracy"]
    one = weights(tmp_path / "single")
    for name, w in weights(ddp_dir).items():
        torch.testing.assert_close(w, one[name], atol=1e-5, rtol=0, msg=name)


def write_tables(tmp_path, rows=20):
    """A CSV pair with one column per step, and a Parquet pair with a list column per channel and lengths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    header = "label,s0,s1,s2\n"
    body = "".join(f"{i % 2},{i},{i + 0.5},{-i}\n" for i in range(rows))
    (tmp_path / "train.csv").write_text(header + body)
    (tmp_path / "test.csv").write_text(header + body[: body.index("\n", 40) + 1])
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 9)):
        lengths = rng.integers(1, 6, n)
        table = pa.table(
            {
                "a": [rng.normal(size=k).tolist() for k in lengths],
                "b": [rng.normal(size=k).tolist() for k in lengths],
                "label": rng.integers(0, 3, n),
                "steps": lengths,
            }
        )
        pq.write_table(table, tmp_path / f"{split}.parquet", row_group_size=7)


def test_parquet_and_csv_files_pack_block_by_block(tmp_path):
    import pyarrow.parquet as pq

    write_tables(tmp_path)
    proc = run_cli("csv", "--train", "train.csv", "--test", "test.csv", cwd=tmp_path, module="birnn.pack")
    assert proc.returncode == 0, proc.stderr
    splits = load_packed(path=str(tmp_path / "csv"))
    assert splits.train_x.shape == (20, 3, 1) and splits.classes == ["0", "1"]
    assert splits.train_x[torch.tensor([3])].flatten().tolist() == [3, 3.5, -3]
    proc = run_cli(
        "pq",
        "--train",
        "train.parquet",
        "--test",
        "test.parquet",
        "--length",
        "steps",
        cwd=tmp_path,
        module="birnn.pack",
    )
    assert proc.returncode == 0, proc.stderr
    splits = load_packed(path=str(tmp_path / "pq"))
    rows = pq.read_table(tmp_path / "train.parquet").to_pylist()
    assert splits.train_lengths.tolist() == [r["steps"] for r in rows]
    x = splits.train_x[torch.arange(30)]
    for i, r in enumerate(rows):
        expected = torch.tensor([r["a"], r["b"]], dtype=torch.float32).T
        assert torch.equal(x[i, : r["steps"]], expected) and not x[i, r["steps"] :].any()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("label,", "y,"), "train.csv: no column 'label' (it has y, s0, s1, s2)"),
        (lambda t: t.replace("\n0,4,4.5,", "\n0,4,abc,"), "train.csv row 5 column s1: 'abc' is not a number"),
        (
            lambda t: t.replace("\n1,3,3.5,-3\n", "\n1,3,3.5\n"),
            "train.csv: CSV parse error: Row #5: Expected 4 columns, got 3",
        ),
    ],
)
def test_bad_table_rows_name_the_file_row_and_column(tmp_path, edit, message):
    write_tables(tmp_path)
    path = tmp_path / "train.csv"
    path.write_text(edit(path.read_text()))
    line = one_error_line(
        run_cli("out", "--train", "train.csv", "--test", "test.csv", cwd=tmp_path, module="birnn.pack")
    )
    assert message in line
    assert not (tmp_path / "out" / MANIFEST).exists()


def write_tagged(path, n: int, seed: int):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            for w in rng.choices(GOOD + FILLER, k=rng.randint(2, 7)):
                f.write(f"{w} {'ADJ' if w in GOOD else 'X'}\n")
            f.write("\n")
    return path


TOKENS = ["device=cpu", "device.num_threads=1", "model.hidden_size=8", "model.embedding_dim=8", "data.batch_size=16"]
TOKENS += ["trainer.epochs=2", "trainer.checkpoint_every_n_steps=5", "data.val_size=20"]


def write_vectors(path, dim: int = 8):
    """GloVe text vectors for half the words of ``write_tagged`` and a word it never writes (``zanzibar``)."""
    rng = np.random.default_rng(0)
    words = [*GOOD[::2], *FILLER[::2], "zanzibar"]
    path.write_text("".join(f"{w} {' '.join(f'{v:.4f}' for v in rng.normal(size=dim))}\n" for w in words))
    return path


@pytest.fixture(scope="module", params=["text", "tagged", "vectors"])
def token_data(request, tmp_path_factory):
    """A text (one label per review), tagged (one tag per word, BiLSTM-CRF) or tagged with pretrained word vectors
    run's overrides: the data config's, the model's, and its pack."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "text":
        data = ["data=text", f"data.path={write_reviews(folder / 'train.csv', 120, 0)}", "data.test_fraction=0.25"]
        data += ["data.max_length=5"]
        model = ["model.readout=final"]
    else:
        data, model = ["data=tagged", f"data.path={write_tagged(folder / 'train.conll', 100, 0)}"], ["model.crf=true"]
    if request.param == "vectors":
        pytest.importorskip("gensim")
        data.append(f"data.vectors={write_vectors(folder / 'glove.txt')}")
    # train() takes no pack settings (birnn-train applies them): both runs set the data option's model keys
    model += ["model.embedding_dropout=0.3", "model.head_dropout=0.3"]
    pack_config(folder / "pack", data, overwrite=False)
    return data, model, folder / "pack"


def test_text_and_tags_pack_as_token_ids_and_train_bit_identically(token_data, tmp_path):
    data, model, pack = token_data
    manifest = json.loads((pack / MANIFEST).read_text())
    memory = load_data(make_cfg(*data).data, torch.device("cpu"))
    x, y = manifest["splits"]["train"]["x"], manifest["splits"]["train"]["y"]
    assert x["dtype"] == "<i4" and x["shape"] == list(memory.train_x.shape)  # token IDs (N, steps), as int32
    assert y["shape"] == list(memory.train_y.shape) and manifest["normalization"] is None
    assert manifest["vocab_size"] == memory.vocab_size and manifest["tokenizer"] == memory.tokenizer
    mapped = load_data(make_cfg("data=packed", f"data.path={pack}").data, torch.device("cpu"))
    assert not isinstance(mapped.train_x, torch.Tensor) and mapped.per_step == memory.per_step
    assert mapped.trained_vocab == memory.trained_vocab
    assert (mapped.word_vectors is None) == (memory.word_vectors is None)
    if memory.word_vectors is not None:  # the pretrained rows training starts from, NaN where a word has none
        assert manifest["version"] == 2 and memory.trained_vocab == memory.vocab_size - 1  # zanzibar: vectors only
        torch.testing.assert_close(mapped.word_vectors, memory.word_vectors, rtol=0, atol=0, equal_nan=True)
    idx = torch.tensor([7, 2, 50, 2])
    assert torch.equal(mapped.train_x[idx], memory.train_x[idx]) and mapped.train_x[idx].dtype == torch.int64

    reference = train(make_cfg(*TOKENS, *model, *data), tmp_path / "memory")
    run = train(make_cfg(*TOKENS, *model, "data=packed", f"data.path={pack}"), tmp_path / "packed")
    assert run["history"] == reference["history"] and run["test_accuracy"] == reference["test_accuracy"]
    ref = weights(tmp_path / "memory")
    for name, w in weights(tmp_path / "packed").items():
        assert torch.equal(w, ref[name]), name

    ckpt = tmp_path / "packed" / "checkpoints" / "last.pt"
    assert evaluate.evaluate_checkpoint(ckpt)["test_accuracy"] == run["test_accuracy"]
    proc = run_cli(str(ckpt), "--text", "a great movie", "--json", cwd=tmp_path, module="birnn.predict")
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)
    assert result["label"] in ("pos", "neg") if "data=text" in data else result["tags"][1] in ("ADJ", "X")
    if "data=text" in data:  # the pack's tokenizer keeps data.max_length=5: a longer new text is cut the same way
        five = "a great movie , dull"
        short, long = predict.predict_texts(ckpt, [], [five, five + " awful" * 30])
        assert long["probability"] == short["probability"] and json.loads(manifest["tokenizer"])["max_length"] == 5


def test_a_pack_is_refused_with_a_checkpoint_of_another_tokenizer(token_data, tmp_path):
    _, model, pack = token_data
    train(make_cfg(*TOKENS, *model, "data=packed", f"data.path={pack}", "trainer.max_steps=2"), tmp_path / "run")
    other = tmp_path / "other"
    copy_pack(pack, other)
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["tokenizer"] = json.dumps({**json.loads(manifest["tokenizer"]), "lowercase": False})
    (other / MANIFEST).write_text(json.dumps(manifest))
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    line = one_error_line(run_cli(ckpt, f"data.path={other}", cwd=tmp_path, module="birnn.evaluate"))
    assert "another tokenizer than the checkpoint's" in line
    manifest["tokenizer"] = json.dumps({"kind": "word", "lowercase": True, "vocab": ["<pad>", "<unk>", "y" * 5000]})
    (other / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BirnnError, match="refused"):  # a crafted tokenizer in a pack is data, checked and refused
        load_packed(path=str(other))


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.array([[1, 2], [3, 9]]), np.array([0, 1]), "token ID 9 is outside 0..4"),
        (np.ones((2, 2, 1)), np.array([0, 1]), "token IDs must be integers shaped (n, steps)"),
        (
            np.array([[1, 2], [3, 0]]),
            np.array([[0, 1], [1, -100], [0, 0]]),
            "shaped (2, 2) (one per step); got int64 (3, 2)",
        ),
        (np.array([[1, 2], [3, 0]]), np.array([[0, 1], [2, -100]]), "label 2 is outside 0..1"),
    ],
)
def test_the_writer_checks_token_ids_and_per_step_labels(tmp_path, x, y, message):
    with pytest.raises(BirnnError, match=re.escape(message)):
        with PackWriter(tmp_path / "p", ["a", "b"], "text", True, vocab_size=5) as pack:
            pack.split("train").append(x, y, np.array([2, 1]))
    assert not (tmp_path / "p" / MANIFEST).exists()


def tag_pack(out, tokenizer=None, **vectors):
    """A tiny tagged pack (vocab 6, one tag per step, -100 at padding) written with PackWriter (``vectors``: its
    ``vectors`` and ``trained_vocab``)."""
    ids, y, lengths = np.array([[1, 2, 0], [3, 4, 5]]), np.array([[0, 1, -100], [1, 1, 0]]), np.array([2, 3])
    with PackWriter(out, ["a", "b"], "tagged", True, vocab_size=6, tokenizer=tokenizer, **vectors) as pack:
        pack.split("train").append(np.tile(ids, (4, 1)), np.tile(y, (4, 1)), np.tile(lengths, 4))
        pack.split("test").append(ids, y, lengths)
    return out


def resave(pack, name, array):
    """Replace ``pack``'s file ``name`` by ``array`` and make the manifest agree (all but the checksum)."""
    np.save(pack / f"{name}.npy", array)
    manifest = json.loads((pack / MANIFEST).read_text())
    split, kind = name.split("_")
    manifest["splits"][split][kind].update(
        shape=list(array.shape), dtype=array.dtype.str, bytes=(pack / f"{name}.npy").stat().st_size
    )
    (pack / MANIFEST).write_text(json.dumps(manifest))


def tokenizer_of(size):
    return json.dumps({"kind": "word", "lowercase": False, "vocab": ["<pad>", "<unk>", *"cdefgh"[: size - 2]]})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: resave(p, "train_y", np.full((8, 3), 0)), "sample 0 has label 0 at step 2, beyond its length 2"),
        (lambda p: resave(p, "train_y", np.array([[-100, 1, -100]] * 8)), "sample 0 has no label at step 0"),
        (lambda p: resave(p, "train_y", np.array([[0, 5, -100]] * 8)), "train_y holds label 5, outside 0..1"),
        (lambda p: resave(p, "train_y", np.zeros(8)), "train_y holds float64 [8]; expected integer labels"),
        (lambda p: resave(p, "test_y", np.zeros((1, 3), np.int64)), "test_y holds int64 [1, 3]; expected integer"),
        (lambda p: resave(p, "test_y", np.array([0, 1])), "splits differ in features per step, or in labels per"),
        (lambda p: resave(p, "train_lengths", np.array([2, 4] * 4)), "train_lengths must be 8 integers in 1..3"),
        (lambda p: resave(p, "train_lengths", np.array([0, 3] * 4)), "train_lengths must be 8 integers in 1..3"),
        (lambda p: resave(p, "train_x", np.ones((8, 3), np.float32)), "train_x holds float32 [8, 3]; expected"),
        (lambda p: edit_manifest(p, vocab_size=4), "vocab_size 4 is not its tokenizer's 6 token IDs"),
        (lambda p: edit_manifest(p, tokenizer=tokenizer_of(3)), "vocab_size 6 is not its tokenizer's 3 token IDs"),
        (lambda p: edit_manifest(p, vocab_size=2**40), "vocab_size 1099511627776 is not a number of token IDs"),
        (lambda p: edit_manifest(p, classes="ab"), "manifest.json is damaged"),
        (lambda p: edit_manifest(p, splits={"train": {}}), "manifest.json is damaged"),
    ],
)
def test_a_damaged_token_pack_is_refused_when_opened(tmp_path, edit, message):
    pack = tag_pack(tmp_path / "p", tokenizer_of(6))
    load_packed(path=str(pack))
    edit(pack)
    with pytest.raises(BirnnError, match=re.escape(message)):
        load_packed(path=str(pack))


def vectors_pack(out):
    """``tag_pack`` with 3-dimensional pretrained vectors: IDs 4 and 5 are words only the vectors know."""
    vectors = np.full((6, 3), np.nan, np.float32)
    vectors[[2, 4, 5]] = np.arange(9, dtype=np.float32).reshape(3, 3)
    tokenizer = json.dumps({**json.loads(tokenizer_of(6)), "trained": 4})
    return tag_pack(out, tokenizer, vectors=vectors, trained_vocab=4)


def resave_vectors(pack, array):
    np.save(pack / "vectors.npy", array)
    manifest = json.loads((pack / MANIFEST).read_text())
    manifest["vectors"].update(
        shape=list(array.shape), dtype=array.dtype.str, bytes=(pack / "vectors.npy").stat().st_size
    )
    (pack / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: resave_vectors(p, np.full((6, 3), np.inf, np.float32)), "the vectors hold infinity, or NaN in a"),
        (lambda p: resave_vectors(p, np.full((6, 3), np.nan, np.float32)), "NaN in a frozen word's row (ID 4 on)"),
        (lambda p: resave_vectors(p, np.zeros((5, 3), np.float32)), "must be float32 (6, dim), one row per token ID"),
        (lambda p: resave_vectors(p, np.zeros((6, 3))), "must be float32 (6, dim), one row per token ID"),
        (lambda p: edit_manifest(p, trained_vocab=5), "trained_vocab 5 is not its tokenizer's (4)"),
        (lambda p: edit_manifest(p, trained_vocab=7), "trained_vocab 7 is outside 2..6 (vocab_size)"),
        (lambda p: edit_manifest(p, version=1), "manifest.json is damaged"),  # an older birnn reads no vectors
        (lambda p: edit_manifest(p, vectors=None), "manifest.json is damaged"),
    ],
)
def test_a_pack_with_damaged_vectors_is_refused_when_opened(tmp_path, edit, message):
    pack = vectors_pack(tmp_path / "p")
    assert json.loads((pack / MANIFEST).read_text())["version"] == 2 and verify(pack) == 7
    assert load_packed(path=str(pack)).word_vectors[4:].tolist() == [[3, 4, 5], [6, 7, 8]]
    edit(pack)
    with pytest.raises(BirnnError, match=re.escape(message)):
        load_packed(path=str(pack))


def test_the_embedding_follows_a_packs_vectors(tmp_path):
    pack = vectors_pack(tmp_path / "p")
    run = ["device=cpu", "device.num_threads=1", "model.hidden_size=4", "trainer.max_steps=2", "data=packed"]
    cfg = make_cfg(*run, f"data.path={pack}", "trainer.log_images=false")
    train(cfg, tmp_path / "run")
    assert cfg.model.embedding_dim == 3
    with pytest.raises(BirnnError, match=f"model.embedding_dim=8 but the pack {pack} holds vectors of 3 dimensions"):
        train(make_cfg(*run, f"data.path={pack}", "model.embedding_dim=8"), tmp_path / "other")


def edit_manifest(pack, **changes):
    manifest = json.loads((pack / MANIFEST).read_text())
    (pack / MANIFEST).write_text(json.dumps({**manifest, **changes}))


def test_a_token_id_beyond_the_vocabulary_stops_training_with_one_line(tmp_path):
    pack = tag_pack(tmp_path / "p")
    x = np.load(pack / "train_x.npy")
    x[5, 1] = 6
    resave(pack, "train_x", x)
    run = ["device=cpu", "device.num_threads=1", "model.hidden_size=8", "trainer.max_steps=3", "hydra.run.dir=run"]
    line = one_error_line(run_cli("data=packed", f"data.path={pack}", *run, cwd=tmp_path))
    assert "train_x.npy row 5 holds a token ID outside 0..5" in line


@pytest.mark.parametrize(
    ("kwargs", "y_test", "message"),
    [
        ({}, np.array([[0, 1, 0], [1, 1, 0]]), "sample 0 has label 0 at step 2, beyond its length 2 (-100 there)"),
        ({}, np.array([0, 1]), "the splits differ in features per step, or in labels per sample or per step"),
        ({"vocab_size": 2**40}, None, "vocab_size 1099511627776 is not a number of token IDs"),
        ({"tokenizer": tokenizer_of(4)}, None, "vocab_size 6 is not its tokenizer's 4 token IDs"),
        ({"vocab_size": None, "tokenizer": tokenizer_of(6)}, None, "a tokenizer comes with token data"),
    ],
)
def test_the_writer_refuses_inconsistent_token_data(tmp_path, kwargs, y_test, message):
    ids, lengths = np.array([[1, 2, 0], [3, 4, 5]]), np.array([2, 3])
    with pytest.raises(BirnnError, match=re.escape(message)):
        with PackWriter(tmp_path / "p", ["a", "b"], "tagged", True, **{"vocab_size": 6, **kwargs}) as pack:
            pack.split("train").append(ids, np.array([[0, 1, -100], [1, 1, 0]]), lengths)
            pack.split("test").append(ids, y_test, lengths)
    assert not (tmp_path / "p" / MANIFEST).exists()


def test_a_pack_of_another_vocabulary_is_refused_by_evaluate(tmp_path):
    """Token IDs without a tokenizer: the checkpoint's vocabulary size is all that says what they mean."""
    run = ["device=cpu", "device.num_threads=1", "model.hidden_size=8", "trainer.max_steps=2"]
    train(make_cfg(*run, "data=packed", f"data.path={tag_pack(tmp_path / 'p')}"), tmp_path / "run")
    other = tag_pack(tmp_path / "q")
    edit_manifest(other, vocab_size=9)
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    line = one_error_line(run_cli(ckpt, f"data.path={other}", cwd=tmp_path, module="birnn.evaluate"))
    assert "gives vocab_size 9 (the model's: 6): not what the model reads" in line


def test_a_ragged_list_row_names_its_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"a": [[1.0, 2.0], [1.0, 2.0], [3.0]], "label": [0, 1, 0]})
    pq.write_table(table, tmp_path / "train.parquet")
    pq.write_table(table.slice(0, 2), tmp_path / "test.parquet")
    cmd = ["out", "--train", "train.parquet", "--test", "test.parquet"]
    line = one_error_line(run_cli(*cmd, cwd=tmp_path, module="birnn.pack"))
    assert "train.parquet row 3 column a: 1 values; expected 2" in line


def peak_rss_of_training_on(tmp_path, megabytes: int) -> int:
    """VmHWM (bytes) of a training + test pass on a pack of about ``megabytes`` (64 x 64 float32 samples)."""
    rows = megabytes * 2**20 // (64 * 64 * 4)
    pack, rng = tmp_path / f"pack{megabytes}", np.random.default_rng(0)
    with PackWriter(pack, [str(i) for i in range(10)]) as writer:
        for split, n in (("train", rows * 3 // 4), ("test", rows // 4)):
            for i in range(0, n, 1024):
                k = min(1024, n - i)
                writer.split(split).append(rng.random((k, 64, 64), np.float32), rng.integers(0, 10, k))
    return peak_rss(tmp_path, f"run{megabytes}", *packed(pack, "trainer.max_steps=20", "data.eval_batch_size=200"))


@pytest.mark.slow
def test_training_on_a_256_mb_pack_peaks_within_64_mb_of_a_16_mb_one(tmp_path):
    small, large = peak_rss_of_training_on(tmp_path, 16), peak_rss_of_training_on(tmp_path, 256)
    assert large - small <= 64 * 2**20, (small, large)


def test_pack_says_what_it_wrote(tmp_path):
    """Samples per split, classes, files and bytes: not only the manifest's path (issue #38)."""
    proc = run_cli("out", "data=digits", cwd=tmp_path, module="birnn.pack")
    assert proc.returncode == 0, proc.stderr
    size = sum(p.stat().st_size for p in (tmp_path / "out").iterdir())
    assert proc.stdout.splitlines() == [
        f"Wrote out: 1,438 train, 359 test samples, 10 classes, 5 files, {size:,} bytes ({size / 2**20:.1f} MiB); "
        "manifest out/manifest.json"
    ]
