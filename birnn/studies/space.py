"""A search space in Hydra's sweep syntax (``choice``, ``range``, ``interval``, ``tag(log, ...)``) as Optuna
distributions, and sampled values back as command-line overrides."""

from __future__ import annotations

import math
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from birnn.schema.errors import BirnnError, first_line


def distribution(key: str, spec: str) -> BaseDistribution:
    """``optimizer.lr`` + ``tag(log, interval(1e-4, 3e-2))`` -> ``FloatDistribution(1e-4, 3e-2, log=True)``."""
    try:
        override: Override = OverridesParser.create().parse_override(f"{key}={spec}")
    except Exception as e:  # Hydra's grammar errors
        raise BirnnError(f"search.params.{key}: cannot parse {spec!r}: {first_line(e)}") from None
    value, log = override.value(), "log" in override.value().tags if override.is_sweep_override() else False
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(value.list)
    if isinstance(value, RangeSweep):
        start, step = value.start, value.step
        last = start + step * (math.ceil((value.stop - start) / step) - 1)  # range()'s last value
        if all(isinstance(v, int) for v in (start, value.stop, step)):
            return IntDistribution(start, int(last), step=step, log=log)
        return FloatDistribution(start, last, step=step, log=log)
    if isinstance(value, IntervalSweep):
        if all(isinstance(v, int) for v in (value.start, value.end)):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(value.start, value.end, log=log)
    raise BirnnError(
        f"search.params.{key}: {spec!r} is not a search range; use choice(...), range(...) or "
        "interval(...), with tag(log, ...) for a log scale"
    )


def suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
    """Sample ``key`` from ``dist`` (a retried trial gets its original value back)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def as_override(key: str, value: Any) -> str:
    """A sampled value as an override Hydra parses back to the same value (floats round-trip via repr)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, str):
        return f"{key}={value}"
    return f"{key}={value!r}"
