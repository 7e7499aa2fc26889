"""Search space: Hydra sweep overrides as Optuna distributions, and trials back as overrides.

The syntax is Hydra's override grammar, as users of the old hydra-optuna-sweeper wrote it:

    choice(a, b, c), a,b,c, glob(...)   -> CategoricalDistribution
    range(start, stop[, step])          -> IntDistribution / FloatDistribution with that step;
                                           `stop` is excluded, as in Hydra's basic sweeper
    interval(low, high)                 -> FloatDistribution (Hydra parses bounds as floats)
    tag(log, interval(low, high))       -> the same on a log scale
    tag(int, interval(low, high))       -> IntDistribution (`tag(int, log, ...)` for both)

Anything else is a fixed override passed unchanged to every trial.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException


@dataclass(frozen=True)
class SearchSpace:
    distributions: dict[str, Any]  # override key (as written, e.g. `train.lr0`, `model`) -> distribution
    fixed: tuple[str, ...]  # overrides every trial gets as they are


def parse_space(
    config_params: Mapping[str, str], arguments: Sequence[str], parser: OverridesParser
) -> SearchSpace:
    """Merge `hydra.sweeper.params` with the command line (the command line wins per key)."""
    lines = [f"{key}={value}" for key, value in config_params.items()]
    overrides: dict[str, Override] = {}
    for override in parser.parse_overrides([*lines, *arguments]):
        overrides[override.get_key_element()] = override
    distributions = {key: to_distribution(o) for key, o in overrides.items() if o.is_sweep_override()}
    fixed = tuple(o.input_line for o in overrides.values() if not o.is_sweep_override())
    return SearchSpace(distributions, fixed)


def to_distribution(override: Override) -> Any:
    """Hydra has three kinds of sweep: choice (also `a,b` and `glob(...)` over a group), range
    and interval."""
    from optuna.distributions import CategoricalDistribution

    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        return range_distribution(override, override.value())
    return interval_distribution(override.value())


def range_distribution(override: Override, sweep: RangeSweep) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    values = list(override.sweep_iterator(transformer=Transformer.identity))
    if not values:
        raise HydraException(f"{override.input_line!r} is an empty range")
    if sweep.shuffle:  # shuffle(range(...)) is an unordered set of values
        return CategoricalDistribution(values)
    if all(isinstance(v, int) for v in values) and isinstance(sweep.step, int):
        return IntDistribution(int(values[0]), int(values[-1]), step=int(sweep.step))
    low, step = Decimal(str(values[0])), Decimal(str(sweep.step))
    high = low + step * (len(values) - 1)  # in decimal: Hydra's float steps accumulate rounding error
    return FloatDistribution(float(low), float(high), step=float(step))


def interval_distribution(sweep: IntervalSweep) -> Any:
    from optuna.distributions import FloatDistribution, IntDistribution

    log = "log" in sweep.tags
    if "int" in sweep.tags:
        return IntDistribution(int(sweep.start), int(sweep.end), log=log)
    return FloatDistribution(float(sweep.start), float(sweep.end), log=log)


def grid_space(distributions: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The grid sampler's value lists; a continuous interval has no grid."""
    from optuna.distributions import CategoricalDistribution

    grid = {}
    for key, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif getattr(dist, "step", None) is not None:
            count = round((dist.high - dist.low) / dist.step) + 1
            grid[key] = [type(dist.low)(dist.low + i * dist.step) for i in range(count)]
        else:
            raise HydraException(
                f"the grid sampler needs discrete values, but {key} is continuous ({dist}); "
                f"use choice(...) or range(...) for {key}, or another sampler"
            )
    return grid


def render(value: Any) -> str:
    """A trial's value as the right-hand side of a Hydra override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def trial_overrides(fixed: Iterable[str], params: Mapping[str, Any]) -> list[str]:
    return [*fixed, *(f"{key}={render(value)}" for key, value in params.items())]
