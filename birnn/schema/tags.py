"""Tag names: which span scheme (BIO or BIOES) a tag set follows, read alike by span scoring and CRF decoding."""

from __future__ import annotations

from collections.abc import Sequence


def span_scheme(classes: Sequence[str]) -> str | None:
    """``BIOES`` or ``IOB2`` when every tag name is ``O`` or ``B-``/``I-`` (/``E-``/``S-``) plus a type, else None."""
    prefixes = {c.split("-", 1)[0] for c in classes if c != "O"}
    if not prefixes or any("-" not in c for c in classes if c != "O") or "B" not in prefixes:
        return None
    if prefixes <= {"B", "I"}:
        return "IOB2"
    return "BIOES" if prefixes <= {"B", "I", "E", "S"} else None
