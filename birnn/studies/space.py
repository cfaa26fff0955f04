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
        value = override.value()
    except Exception as e:  # Hydra's grammar errors
        raise BirnnError(f"search.params.{key}: cannot parse {spec!r}: {first_line(e)}") from None
    log = "log" in value.tags if override.is_sweep_override() else False
    try:
        if isinstance(value, ChoiceSweep):
            return CategoricalDistribution(value.list)
        if isinstance(value, RangeSweep):
            return _range(value, log)
        if isinstance(value, IntervalSweep):
            return _numbers(_finite(value.start, value.end), log)
    except ValueError as e:  # Optuna's checks (low <= high, low > 0 on a log scale, ...) and ours
        raise BirnnError(f"search.params.{key}={spec}: {first_line(e)}") from None
    raise BirnnError(
        f"search.params.{key}: {spec!r} is not a search range; use choice(...), range(...) or "
        "interval(...), with tag(log, ...) for a log scale"
    )


def _finite(*bounds: float) -> tuple[float, ...]:
    if not all(math.isfinite(b) for b in bounds):
        raise ValueError(f"the bounds must be finite numbers, got {', '.join(map(str, bounds))}")
    return bounds


def _range(value: RangeSweep, log: bool) -> BaseDistribution:
    """``range(start, stop, step)``'s values (``stop`` excluded, ``step`` may be negative) as a distribution."""
    start, stop, step = _finite(value.start, value.stop, value.step)
    if step == 0:
        raise ValueError("the step must not be 0")
    count = math.ceil((stop - start) / step)
    if count <= 0:
        raise ValueError(f"the range holds no values (from {start} to {stop} by {step})")
    return _numbers((*sorted((start, start + step * (count - 1))), abs(step)), log)


def _numbers(bounds: tuple, log: bool) -> BaseDistribution:
    """``(low, high)`` or ``(low, high, step)``: integers if all are, else floats."""
    low, high, *step = bounds
    if all(isinstance(v, int) for v in bounds):
        return IntDistribution(low, high, step=step[0] if step else 1, log=log)
    return FloatDistribution(low, high, step=step[0] if step else None, log=log)


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
