"""Pin files: which segments a model is held to, and how hard.

    version: 1
    defaults: {accuracy_floor: 0.95, latency_p99_ms: 10, max_drop: 0.02}
    regression: {test: mcnemar, alpha: 0.05}
    pins:
      - name: Video Gaming/app
        where: {vertical: Video Gaming, inventory_type: app}
      - name: rewarded above the fold
        where: {rewarded: true, position: atf}
        accuracy_floor: 0.9

A pin names a segment (`where`: conditions over feature columns in the policy grammar, where a
bare value means `eq`; `{}` is every row), an accuracy floor, a p99 latency budget (ms per
decision) and the largest accuracy drop against its reference it tolerates (its non-inferiority
margin). `alpha` is the family-wise error rate of one run, across every pin (Holm; see
`modelsmith.evaluate`): noise does not open repair cycles, and neither does a real drop that
stays inside its margin. `modelsmith pins init`
writes one pin per vertical x inventory type with enough rows, which is what the shipped default is.
"""

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from scenario_data.policy import (Condition, PolicyError, _line_of, _mapping_get, _parse_conditions, duplicate_key,
                                  load_yaml)
from modelsmith.stats import TESTS

DEFAULT_PINS = Path(__file__).parent / "defaults" / "pins.yaml"
THRESHOLDS = {"accuracy_floor": (0.0, 1.0), "latency_p99_ms": (0.0, None), "max_drop": (0.0, 1.0)}
BUILTIN_DEFAULTS = {"accuracy_floor": 0.95, "latency_p99_ms": 10.0, "max_drop": 0.02}
DEFAULT_ALPHA = 0.05  # the family-wise error rate of one run (Holm across its pins)


class PinError(ValueError):
    """A malformed pin file: the message names the file, the pin, the field and the line."""


@dataclass(frozen=True)
class Pin:
    name: str
    where: tuple[Condition, ...]
    accuracy_floor: float
    latency_p99_ms: float
    max_drop: float
    min_rows: int = 1

    @property
    def check_name(self) -> str:
        """The Dagster asset check name: lower-case letters, digits and underscores."""
        return "pin_" + re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")

    def mask(self, df: pl.DataFrame) -> pl.Series:
        if not self.where:
            return pl.Series([True] * df.height, dtype=pl.Boolean)
        expr = pl.all_horizontal([c.expr() for c in self.where]).fill_null(False)
        return df.select(expr.alias("m"))["m"]

    def describe(self) -> str:
        if not self.where:
            return "every row"
        return " and ".join(f"{c.feature} {c.op} {c.value!r}" for c in self.where)


@dataclass(frozen=True)
class PinSet:
    pins: tuple[Pin, ...]
    test: str = "mcnemar"
    alpha: float = DEFAULT_ALPHA
    source: str = ""
    digest: str = ""  # SHA-256 of the pin file's text: which pins a run was judged by

    def by_check(self) -> dict[str, Pin]:
        return {p.check_name: p for p in self.pins}


def _err(source: str, line: int, pin: str | None, fld: str | None, msg: str) -> PinError:
    where = f"{source}:{line}" if line else source
    who = f" pin {pin!r}" if pin else ""
    what = f" field {fld!r}" if fld else ""
    return PinError(f"{where}:{who}{what}: {msg}")


def parse_pins(text: str, source: str = "<pins>") -> PinSet:
    try:
        root, doc = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise _err(source, mark.line + 1 if mark else 0, None, None, f"not valid YAML: {e}") from None
    dup = duplicate_key(root)
    if dup:
        raise _err(source, dup[1], None, dup[0], f"duplicate key (first at line {dup[2]})")
    if not isinstance(doc, dict) or not isinstance(root, yaml.MappingNode):
        raise _err(source, 1, None, None, "a pin file must be a mapping with `pins`")
    unknown = set(doc) - {"version", "description", "defaults", "regression", "pins"}
    if unknown:
        raise _err(source, 1, None, None, f"unknown top-level keys {sorted(unknown)}")
    defaults = dict(BUILTIN_DEFAULTS)
    given = doc.get("defaults") or {}
    if not isinstance(given, dict):
        raise _err(source, _line_of(_mapping_get(root, "defaults")), None, "defaults", "must be a mapping")
    for key, value in given.items():
        defaults[key] = _threshold(key, value, source, _line_of(_mapping_get(root, "defaults")), None)
    regression = doc.get("regression") or {}
    rline = _line_of(_mapping_get(root, "regression"))
    if not isinstance(regression, dict) or set(regression) - {"test", "alpha"}:
        raise _err(source, rline, None, "regression", "must be a mapping with `test` and `alpha`")
    test = regression.get("test", "mcnemar")
    if test not in TESTS:
        raise _err(source, rline, None, "regression.test", f"must be one of {TESTS}, got {test!r}")
    alpha = regression.get("alpha", DEFAULT_ALPHA)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise _err(source, rline, None, "regression.alpha", f"must be a number in (0, 1), got {alpha!r}")
    pins_node = _mapping_get(root, "pins")
    raw = doc.get("pins")
    if not isinstance(raw, list) or not raw or not isinstance(pins_node, yaml.SequenceNode):
        raise _err(source, _line_of(pins_node), None, "pins", "must be a non-empty list")
    pins = [_parse_pin(r, n, defaults, source) for r, n in zip(raw, pins_node.value, strict=True)]
    seen: dict[str, str] = {}
    for pin, node in zip(pins, pins_node.value, strict=True):
        if pin.check_name in seen:
            raise _err(source, _line_of(node), pin.name, "name",
                       f"collides with pin {seen[pin.check_name]!r} (both are check {pin.check_name})")
        seen[pin.check_name] = pin.name
    return PinSet(tuple(pins), test, float(alpha), source, hashlib.sha256(text.encode()).hexdigest())


def _threshold(key: str, value: Any, source: str, line: int, pin: str | None) -> float:
    if key not in THRESHOLDS:
        raise _err(source, line, pin, key, f"unknown field; known: {sorted(THRESHOLDS)}")
    lo, hi = THRESHOLDS[key]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        finite = number and math.isfinite(float(value))  # .nan compares false both ways: it would disable the pin
    except OverflowError:
        finite = False
    if not finite or value < lo or (hi is not None and value > hi):
        bound = f"within [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise _err(source, line, pin, key, f"must be a finite number {bound}, got {value!r}"[:200])
    return float(value)


def _parse_pin(raw: Any, node: yaml.Node, defaults: dict[str, float], source: str) -> Pin:
    line = _line_of(node)
    if not isinstance(raw, dict):
        raise _err(source, line, None, None, "each pin must be a mapping with `name` and `where`")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _err(source, line, None, "name", "a pin needs a non-empty name")
    unknown = set(raw) - {"name", "description", "where", "min_rows", *THRESHOLDS}
    if unknown:
        raise _err(source, line, name, sorted(unknown)[0], f"unknown field; known: name, where, min_rows, {', '.join(THRESHOLDS)}")
    where = raw.get("where", {})
    if where is None:
        where = {}
    if not isinstance(where, dict):
        raise _err(source, line, name, "where", "must map feature columns to values or conditions")
    wnode = _mapping_get(node, "where") if isinstance(node, yaml.MappingNode) else None
    conditions: list[Condition] = []
    for feature, spec in where.items():
        fnode = _mapping_get(wnode, feature) if isinstance(wnode, yaml.MappingNode) else None
        spec = spec if isinstance(spec, dict) else {"eq": spec}
        try:
            conditions += _parse_conditions(feature, spec, source, _line_of(fnode) or line, name)
        except PolicyError as e:
            msg = str(e).split(": ", 2)[-1]
            raise _err(source, _line_of(fnode) or line, name, f"where.{feature}", msg) from None
    values = {k: _threshold(k, raw[k], source, line, name) if k in raw else defaults[k] for k in THRESHOLDS}
    min_rows = raw.get("min_rows", 1)
    if not isinstance(min_rows, int) or isinstance(min_rows, bool) or min_rows < 1:
        raise _err(source, line, name, "min_rows", f"must be a positive integer, got {min_rows!r}")
    return Pin(name.strip(), tuple(conditions), min_rows=min_rows, **values)


def pins_file(path: str | Path | None = None) -> Path:
    """The pin file a code location uses: `path`, else `MODELSMITH_PINS`, else the shipped pins."""
    return Path(path or os.environ.get("MODELSMITH_PINS") or DEFAULT_PINS)


def load_pins(path: str | Path | None = None) -> PinSet:
    path = Path(path) if path else DEFAULT_PINS
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PinError(f"{path}: cannot read pin file ({e})") from None
    return parse_pins(text, str(path))


def too_small(rows: int, pins: int, alpha: float, max_drop: float) -> float | None:
    """The smallest detectable drop of a `rows`-row segment in a run of `pins` pins, when it exceeds `max_drop`."""
    from modelsmith.stats import min_detectable_drop

    from modelsmith.evaluate import bonferroni_level

    mdd = min_detectable_drop(rows, bonferroni_level(alpha, pins))
    return mdd if mdd > max_drop else None


def segment_pins_yaml(df: pl.DataFrame, by: tuple[str, ...] = ("vertical", "inventory_type"), min_support: int = 100,
                      defaults: dict[str, float] | None = None, everything: bool = True) -> tuple[str, list[str]]:
    """A pin file with one pin per segment (`by`) holding at least `min_support` rows, plus `all`.

    Also returns the segments too small for this pack to detect their `max_drop` (their pins will
    be inconclusive); the file says so in each such pin's description.
    """
    counts = df.group_by(*by).len().filter(pl.col("len") >= min_support).sort(["len", *by], descending=[True] + [False] * len(by))
    values = {**BUILTIN_DEFAULTS, **(defaults or {})}
    alpha = DEFAULT_ALPHA
    doc: dict[str, Any] = {"version": 1, "defaults": values, "regression": {"test": "mcnemar", "alpha": alpha},
                           "pins": []}
    sized = ([("all", {}, df.height)] if everything else []) + [
        ("/".join(str(row[k]) for k in by), {k: row[k] for k in by}, row["len"]) for row in counts.iter_rows(named=True)]
    small: list[str] = []
    for name, where, rows in sized:
        entry: dict[str, Any] = {"name": name, "where": where}
        mdd = too_small(rows, len(sized), alpha, values["max_drop"])
        if mdd is not None:
            small.append(f"{name} ({rows} rows: smallest detectable drop {mdd:.3f})")
            entry["description"] = (f"inconclusive with this pack: {rows} rows detect drops of {mdd:.3f} or more, "
                                    f"not max_drop {values['max_drop']}")
        doc["pins"].append(entry)
    header = (f"# Modelsmith pins: one per {' x '.join(by)} segment with >= {min_support} rows in the scenarios,\n"
              "# written by `modelsmith pins init`. Edit freely; see modelsmith/pins.py for the format.\n"
              f"# {len(small)} of {len(sized)} pins are too small for this pack to detect their max_drop "
              "(inconclusive: see each description); a larger pack or coarser segments fix that.\n")
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120), small
