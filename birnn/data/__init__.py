"""Data: every source (torchvision IDX, digits, arrays, UCR/UEA, packs, text, tagged text), normalization,
patches, splits and batches, and the kind of target the labels are (``targets.py``: a class per sequence or per
step, and everything that differs between them).

A new source is a loader ``(root, download, **kwargs) -> Splits`` in a module here, named by ``data._target_``;
what happens to every source's splits (hold-out, standardization, patches, batching) is in ``pipeline.py``.
Imports ``birnn.schema`` and ``birnn.system`` only. The names below are the public ones
(``birnn.data.load_digits``, ``from birnn.data import Splits``).
"""

from birnn.data.arrays import load_arrays
from birnn.data.packed import load_packed
from birnn.data.pipeline import Splits, load_data, load_digits, load_fashion_mnist, load_mnist
from birnn.data.tagged import load_tagged
from birnn.data.text import load_text
from birnn.data.uea import load_uea

__all__ = [
    "Splits",
    "load_arrays",
    "load_data",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_tagged",
    "load_text",
    "load_packed",
    "load_uea",
]
