"""Bounds for the plain config dataclasses, checked in their `__post_init__` (as peft's `LoraConfig` does).

The Dagster resources repeat these bounds as pydantic `Field`s so the Launchpad shows them; these
checks are what the CLI, the benchmarks and the tests get, and the message names the class and the
field. Written here rather than with pydantic dataclasses so the configs stay plain, frozen
dataclasses whose `asdict` (and so every build key and adapter card) is unchanged.
"""

import math


def check_range(owner: object, field: str, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ValueError naming `Class.field` unless lo <= value <= hi (open ends with lo_open/hi_open)."""
    value = getattr(owner, field)
    if isinstance(value, bool) or not isinstance(value, int | float) or (isinstance(value, float)
                                                                        and not math.isfinite(value)):
        raise ValueError(f"{type(owner).__name__}.{field} must be a finite number, got {value!r}")
    low_ok = lo is None or (value > lo if lo_open else value >= lo)
    high_ok = hi is None or (value < hi if hi_open else value <= hi)
    if not (low_ok and high_ok):
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ValueError(f"{type(owner).__name__}.{field} must be in {span}, got {value!r}")


def check_int(owner: object, field: str, lo: int, hi: int | None = None) -> None:
    """Raise ValueError naming `Class.field` unless it is an int in [lo, hi]."""
    value = getattr(owner, field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{type(owner).__name__}.{field} must be a whole number, got {value!r}")
    check_range(owner, field, lo, hi)


def check_choice(owner: object, field: str, allowed: tuple) -> None:
    value = getattr(owner, field)
    if value not in allowed:
        raise ValueError(f"{type(owner).__name__}.{field} must be one of {list(allowed)}, got {value!r}")
