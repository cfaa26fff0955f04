"""The CRF's fast forward algorithm and Viterbi against enumeration, and its BIO/BIOES decoding constraints
(``model.crf_constraints``): the rules, constrained Viterbi, auto detection, old checkpoints, export."""

import itertools
import json
import logging
import random

import pytest
import torch

from birnn import export, predict
from birnn.engine import checkpoint
from birnn.engine.restore import restore
from birnn.engine.run import build
from birnn.models.crf import CRF, allowed_transitions, broken_sequences, configure
from birnn.models.rnn import RNNClassifier
from birnn.models.unpacked import Unpacked
from birnn.schema.errors import BirnnError
from birnn.schema.tags import span_scheme
from birnn.train import train
from conftest import make_cfg

BIO = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
BIOES = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
PAD = -100


def valid(path: list[str], classes: list[str]) -> bool:
    """Whether a tag sequence is valid IOB2 / BIOES, spelled out independently of ``allowed_transitions``."""
    bioes = any(c[0] in "ES" for c in classes)
    previous = "O"
    for tag in path:
        kind, _, type_ = tag.partition("-")
        if kind in ("I", "E"):
            if previous[0] not in ("B", "I") or previous[2:] != type_:
                return False
        elif bioes and previous[0] in ("B", "I"):  # an entity left open before O, B- or S-
            return False
        previous = tag
    return not (bioes and previous[0] in ("B", "I"))


def paths(crf: CRF, emissions: torch.Tensor, length: int) -> dict[tuple, float]:
    """Every path's score over one sample's first ``length`` steps."""
    every = torch.tensor(list(itertools.product(range(emissions.shape[-1]), repeat=length)))
    with torch.no_grad():
        scores = crf.start[every[:, 0]] + crf.end[every[:, -1]] + emissions[torch.arange(length), every].sum(1)
        scores += crf.transitions[every[:, :-1], every[:, 1:]].sum(1)
    return dict(zip(map(tuple, every.tolist()), scores.tolist()))


def log_partition_by_logsumexp(crf: CRF, emissions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The textbook forward algorithm (a log-sum-exp over (batch, tags, tags) per step), in float64."""
    emissions, transitions = emissions.double(), crf.transitions.double()
    alpha = crf.start.double() + emissions[:, 0]
    for t in range(1, emissions.shape[1]):
        following = torch.logsumexp(alpha.unsqueeze(2) + transitions + emissions[:, t].unsqueeze(1), dim=1)
        alpha = torch.where((t < lengths)[:, None], following, alpha)
    return torch.logsumexp(alpha + crf.end.double(), dim=1)


def test_gradients_of_the_loss_match_enumeration():
    torch.manual_seed(0)
    crf, lengths = CRF(3), torch.tensor([4, 1, 3])
    emissions = torch.randn(3, 4, 3, requires_grad=True)
    tags = torch.randint(0, 3, (3, 4))
    crf.nll(emissions, tags, lengths).sum().backward()
    fast = [emissions.grad, *(p.grad for p in crf.parameters())]
    emissions.grad = None
    crf.zero_grad()
    total = 0
    for i, n in enumerate(lengths.tolist()):
        scores = {}
        for path in itertools.product(range(3), repeat=n):
            s = crf.start[path[0]] + crf.end[path[-1]] + sum(emissions[i, t, path[t]] for t in range(n))
            scores[path] = s + sum(crf.transitions[path[t - 1], path[t]] for t in range(1, n))
        total = total + torch.logsumexp(torch.stack(list(scores.values())), 0) - scores[tuple(tags[i, :n].tolist())]
    total.backward()
    for got, expected in zip(fast, [emissions.grad, *(p.grad for p in crf.parameters())]):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_the_forward_algorithm_equals_logsumexp_at_every_scale(scale):
    """One matrix product per step, shifted: as exact as the log-sum-exp at large scores too, gradient included."""
    torch.manual_seed(1)
    crf = CRF(20)
    with torch.no_grad():
        crf.transitions.mul_(scale * 10)  # uniform in (-scale, scale)
    lengths = torch.tensor([30, 17, 1, 29, 30, 5])
    emissions = (torch.randn(6, 30, 20) * scale).requires_grad_()
    expected = log_partition_by_logsumexp(crf, emissions, lengths)
    got = crf._log_partition(emissions, torch.arange(30) < lengths[:, None])
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-4 * scale)
    (grad,) = torch.autograd.grad(got.sum(), emissions)
    (reference,) = torch.autograd.grad(expected.sum(), emissions)
    torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-4)  # the marginals


def test_the_rules_of_bio_and_bioes():
    start, end, allowed = allowed_transitions(BIO)
    index = {c: i for i, c in enumerate(BIO)}
    assert start.tolist() == [True, True, False, True, False] and end.all()
    assert not allowed[index["O"], index["I-PER"]] and allowed[index["B-PER"], index["I-PER"]]
    assert not allowed[index["B-LOC"], index["I-PER"]] and allowed[index["I-LOC"], index["B-PER"]]
    start, end, allowed = allowed_transitions(BIOES)
    index = {c: i for i, c in enumerate(BIOES)}
    assert [BIOES[i] for i in start.nonzero()[:, 0]] == ["O", "B-PER", "S-PER", "B-LOC", "S-LOC"]
    assert [BIOES[i] for i in end.nonzero()[:, 0]] == ["O", "E-PER", "S-PER", "E-LOC", "S-LOC"]
    assert [BIOES[i] for i in allowed[index["B-PER"]].nonzero()[:, 0]] == ["I-PER", "E-PER"]
    assert [BIOES[i] for i in allowed[index["E-PER"]].nonzero()[:, 0]] == ["O", "B-PER", "S-PER", "B-LOC", "S-LOC"]
    for classes in (BIO, BIOES):  # the masks accept exactly the valid sequences
        start, end, allowed = allowed_transitions(classes)
        for path in itertools.product(range(len(classes)), repeat=3):
            ok = start[path[0]] and end[path[-1]] and all(allowed[a, b] for a, b in itertools.pairwise(path))
            assert bool(ok) == valid([classes[i] for i in path], classes)
    for classes in (BIO, BIOES, ["NN", "VB"], ["O", "I-PER"], ["B-PER", "X"], ["O", "B-A", "U-A"]):
        # decoding is constrained exactly where span F1 reads the names as a scheme
        assert (allowed_transitions(classes) is None) == (span_scheme(classes) is None)
    assert allowed_transitions(["NN", "VB", "DT"]) is None


@pytest.mark.parametrize("classes", [BIO, BIOES], ids=["BIO", "BIOES"])
def test_constrained_viterbi_is_the_best_valid_path(classes):
    torch.manual_seed(2)
    crf = CRF(len(classes))
    crf.constrain(*allowed_transitions(classes))
    with torch.no_grad():  # scores that prefer invalid paths: I- and E- tags after O, and first
        crf.transitions.normal_(0, 2)
        crf.start.normal_(0, 2)
        for i, c in enumerate(classes):
            if c[0] in "IE":
                crf.transitions[0, i] += 4
                crf.start[i] += 4
    lengths = torch.tensor([4, 1, 3, 4, 2, 4, 3, 4])
    emissions = torch.randn(len(lengths), 4, len(classes)) * 2
    decoded = crf.decode(emissions, lengths)
    unconstrained = CRF(len(classes))
    unconstrained.load_state_dict({k: v for k, v in crf.state_dict().items() if not k.startswith("allowed")}, False)
    free = unconstrained.decode(emissions, lengths)
    invalid = 0
    for i, n in enumerate(lengths.tolist()):
        scores = paths(crf, emissions[i], n)
        allowed = {p: s for p, s in scores.items() if valid([classes[t] for t in p], classes)}
        assert tuple(decoded[i, :n].tolist()) == max(allowed, key=allowed.get)
        assert (decoded[i, n:] == PAD).all()
        assert tuple(free[i, :n].tolist()) == max(scores, key=scores.get)
        invalid += not valid([classes[t] for t in free[i, :n].tolist()], classes)
    assert invalid >= 3  # without the constraints these scores decode invalid sequences


def test_auto_constraints_follow_the_gold_sequences(caplog):
    index = {c: i for i, c in enumerate(BIO)}
    iob2 = torch.tensor([[index[t] for t in s] for s in (["B-PER", "I-PER", "O"], ["O", "B-LOC", "O"])])
    iob1 = torch.tensor([[index.get(t, PAD) for t in s] for s in (["I-PER", "I-PER", "O"], ["O", "B-LOC", "pad"])])
    assert broken_sequences(iob2, *allowed_transitions(BIO)) == 0
    assert broken_sequences(iob1, *allowed_transitions(BIO)) == 1
    caplog.set_level(logging.INFO, "birnn")
    on, off, forced, none = CRF(5), CRF(5), CRF(5), CRF(2)
    configure(on, "auto", BIO, iob2)
    assert not on.allowed.all() and "CRF constraints: on (IOB2 tags)" in caplog.text
    configure(off, "auto", BIO, iob1)
    assert off.allowed.all() and "CRF constraints: off (1 of 2 training sequences break IOB2" in caplog.text
    configure(forced, True, BIO, iob1)
    assert torch.equal(forced.allowed, on.allowed) and "1 of 2 training sequences break them" in caplog.text
    configure(none, "auto", ["NN", "VB"], torch.zeros(2, 3, dtype=torch.int64))
    assert none.allowed.all() and "off (the tag names are not BIO/BIOES: O, and B-X among" in caplog.text
    with pytest.raises(BirnnError, match="model.crf_constraints=true needs BIO or BIOES tag names"):
        configure(none, True, ["NN", "VB"], torch.zeros(2, 3, dtype=torch.int64))
    for bad in ("yes", 1):
        with pytest.raises(BirnnError, match="model.crf_constraints must be auto, true or false"):
            RNNClassifier(3, 5, per_step=True, crf=True, crf_constraints=bad)
    with pytest.raises(BirnnError, match="model.crf_constraints=true needs model.crf=true"):
        RNNClassifier(3, 5, per_step=True, crf_constraints=True)


ENTITIES = {"PER": ["alice", "bob smith"], "LOC": ["paris", "new york"]}
FILLER = "the man went to saw and".split()


def write_entities(path, n: int, iob1: bool = False, seed: int = 0):
    """CoNLL sentences of filler words and entities, tagged IOB2 (or IOB1: every entity starts with I-)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            for _ in range(rng.randint(1, 4)):
                if rng.random() < 0.5:
                    f.write(f"{rng.choice(FILLER)} O\n")
                    continue
                kind = rng.choice(list(ENTITIES))
                for j, word in enumerate(rng.choice(ENTITIES[kind]).split()):
                    f.write(f"{word} {'I' if j or iob1 else 'B'}-{kind}\n")
            f.write("\n")
    return path


def tagger_cfg(path, *more: str):
    return make_cfg(
        "data=tagged",
        f"data.path={path}",
        "data.batch_size=16",
        "device=cpu",
        "device.num_threads=1",
        "model.hidden_size=8",
        "model.embedding_dim=8",
        "model.crf=true",
        *more,
    )


RUNS = [(False, "auto", True), (True, "auto", False), (False, "false", False)]


@pytest.mark.parametrize(("iob1", "setting", "on"), RUNS)
def test_a_training_run_sets_the_constraints_from_its_tags(tmp_path, caplog, iob1, setting, on):
    caplog.set_level(logging.INFO, "birnn")
    cfg = tagger_cfg(write_entities(tmp_path / "train.conll", 40, iob1), f"model.crf_constraints={setting}")
    model = build(cfg, torch.device("cpu")).model
    assert (not model.crf.allowed.all()) == on
    assert ("CRF constraints: on (IOB2 tags)" in caplog.text) == on


@pytest.fixture(scope="module")
def constrained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("entities")
    train(tagger_cfg(write_entities(folder / "train.conll", 60), "trainer.epochs=1"), folder / "run")
    return folder / "run" / "checkpoints" / "last.pt"


def test_an_old_checkpoint_without_constraints_loads_and_predicts(constrained_run, tmp_path, capsys):
    state = checkpoint.load(constrained_run)
    assert state["model"]["crf.allowed"].dtype == torch.bool and not state["model"]["crf.allowed"].all()
    for name in ("allowed_start", "allowed_end", "allowed"):
        del state["model"][f"crf.{name}"]
    del state["config"]["model"]["crf_constraints"]
    old = checkpoint.save(state, tmp_path, "old.pt")
    model = restore(old).model
    assert model.crf.allowed.all() and model.crf.allowed_start.all() and model.crf.allowed_end.all()
    predict.main([str(old), "--text", "alice went to paris", "--json"])
    (result,) = json.loads(capsys.readouterr().out)
    assert len(result["tags"]) == 4 and set(result["tags"]) <= set(BIO)


@pytest.mark.parametrize("fmt", ["pt2", pytest.param("onnx", marks=pytest.mark.slow)])
def test_the_exported_graph_decodes_with_the_constraints(constrained_run, tmp_path, fmt):
    """Transitions crafted to prefer I- after O: the exported tags are eager PyTorch's, valid, and differ from
    what the same scores decode to without the constraints."""
    state = checkpoint.load(constrained_run)
    classes = state["data"]["classes"]
    for i, c in enumerate(classes):
        if c.startswith("I-"):
            state["model"]["crf.transitions"][classes.index("O"), i] += 50
            state["model"]["crf.start"][i] += 50
    crafted = checkpoint.save(state, tmp_path, "crafted.pt")
    out = tmp_path / f"tagger.{fmt}"
    export.main([str(crafted), "--format", fmt, "--out", str(out)])  # checks its tags against crf.decode itself
    model = restore(crafted).model
    steps = state["data"]["input_shape"][0]
    g = torch.Generator().manual_seed(0)
    x, lengths = torch.randint(1, model.embedding.num_embeddings, (6, steps), generator=g), torch.tensor([steps] * 6)
    lengths[1:] = torch.randint(1, steps + 1, (5,), generator=g)
    x[torch.arange(steps) >= lengths[:, None]] = 0
    if fmt == "pt2":
        tags = torch.export.load(str(out)).module()(x, lengths)[1]
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        tags = torch.from_numpy(session.run(None, {"inputs": x.numpy(), "lengths": lengths.numpy()})[1])
    with torch.no_grad():
        scores = model(x, lengths)
        assert torch.equal(tags, model.crf.decode(scores, lengths))
        assert torch.equal(tags, Unpacked(model).eval()(x, lengths)[1])
        for i, n in enumerate(lengths.tolist()):
            assert valid([classes[t] for t in tags[i, :n].tolist()], classes)
        for mask in (model.crf.allowed_start, model.crf.allowed_end, model.crf.allowed):
            mask.fill_(True)
        assert not torch.equal(tags, model.crf.decode(scores, lengths))
