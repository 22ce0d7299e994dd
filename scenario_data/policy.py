"""The ground-truth policy: a declarative, versioned YAML file that maps a feature row to one decision.

Rules are tried in order and the first that matches decides (`default` when none does). A rule is
either `when:` (every condition holds) or `at_least: K` with `of:` (at least K of the conditions
hold, as the industry's MFA definition counts signals). A condition is `feature: {op: value}`; a
missing feature value (null) never satisfies a condition.

A policy's identity is the SHA-256 of its canonical JSON form (name, version, rules, default);
descriptions and comments do not change it. Every label records that digest and the rule that fired.

    policy = load_policy("scenario_data/policies/v1.yaml")
    labels = policy.label(features)   # adds `expected`, `rule` and `policy_digest`
"""

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

DECISIONS = ("no_bid:mfa", "no_bid:unsafe", "bid:shade_low", "bid:shade_mid", "bid:shade_high")
NUMERIC = ("width", "height", "slots", "refresh_s", "floor", "schain_hops", "gdpr", "ad_density", "paid_traffic")
CATEGORICAL = (
    "inventory_type", "vertical", "domain", "domain_list", "device_type", "media", "size", "position", "video_placement",
)
BOOLEAN = ("sensitive", "interstitial", "rewarded", "templated")
POLICY_FEATURES = NUMERIC + CATEGORICAL + BOOLEAN
COMPARISONS = ("gt", "gte", "lt", "lte")
OPS = {
    **{f: ("eq", "ne", "in", "not_in", *COMPARISONS) for f in NUMERIC},
    **{f: ("eq", "ne", "in", "not_in") for f in CATEGORICAL},
    **{f: ("eq",) for f in BOOLEAN},
}
POLICIES_DIR = Path(__file__).parent / "policies"


class PolicyError(ValueError):
    """A malformed policy: the message names the file, the rule and the line."""


@dataclass(frozen=True)
class Condition:
    feature: str
    op: str
    value: Any

    def expr(self) -> pl.Expr:
        col = pl.col(self.feature)
        match self.op:
            case "eq":
                e = col == self.value
            case "ne":
                e = col != self.value
            case "in" | "not_in" if self.feature in NUMERIC:
                # As floats: a list mixing 1 and 2.5 (or an integer past int64) is one list to polars.
                hit = col.cast(pl.Float64).is_in([float(v) for v in self.value])
                e = hit if self.op == "in" else ~hit
            case "in":
                e = col.is_in(list(self.value))
            case "not_in":
                e = ~col.is_in(list(self.value))
            case "gt":
                e = col > self.value
            case "gte":
                e = col >= self.value
            case "lt":
                e = col < self.value
            case _:
                e = col <= self.value
        return (col.is_not_null() & e).fill_null(False)

    def canonical(self) -> list[Any]:
        value = sorted(self.value) if self.op in ("in", "not_in") else self.value
        return [self.feature, self.op, value]


@dataclass(frozen=True)
class Rule:
    name: str
    decision: str
    conditions: tuple[Condition, ...]
    at_least: int | None  # None: every condition must hold
    line: int

    def expr(self) -> pl.Expr:
        if not self.conditions:
            return pl.lit(True)
        parts = [c.expr() for c in self.conditions]
        if self.at_least is None:
            return pl.all_horizontal(parts)
        return pl.sum_horizontal(p.cast(pl.Int8) for p in parts) >= self.at_least

    def canonical(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "decision": self.decision,
            "at_least": self.at_least,
            "conditions": sorted(c.canonical() for c in self.conditions),
        }


@dataclass(frozen=True)
class Policy:
    name: str
    version: int
    rules: tuple[Rule, ...]
    default: str
    source: str = ""

    def canonical(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "rules": [r.canonical() for r in self.rules],
            "default": self.default,
        }

    @property
    def digest(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(sorted({c.feature for r in self.rules for c in r.conditions}))

    def decide(self) -> tuple[pl.Expr, pl.Expr]:
        """(decision, rule name) as polars expressions: the first matching rule wins."""
        decision: Any = pl
        rule: Any = pl
        for r in self.rules:
            decision = decision.when(r.expr()).then(pl.lit(r.decision))
            rule = rule.when(r.expr()).then(pl.lit(r.name))
        if not self.rules:
            return pl.lit(self.default), pl.lit("default")
        return decision.otherwise(pl.lit(self.default)), rule.otherwise(pl.lit("default"))

    def label(self, features: pl.DataFrame) -> pl.DataFrame:
        """`features` plus `expected` (the decision), `rule` (which fired) and `policy_digest`."""
        decision, rule = self.decide()
        return features.with_columns(
            decision.alias("expected"), rule.alias("rule"), pl.lit(self.digest).alias("policy_digest")
        )

    def decide_row(self, row: dict[str, Any]) -> tuple[str, str]:
        """The same decision for one feature row given as a dict (missing features are null)."""
        from scenario_data.features import FEATURE_SCHEMA

        frame = pl.DataFrame({f: [row.get(f)] for f in POLICY_FEATURES}, schema={f: FEATURE_SCHEMA[f] for f in POLICY_FEATURES})
        out = self.label(frame)
        return out["expected"][0], out["rule"][0]


def _err(source: str, line: int, rule: str | None, msg: str) -> PolicyError:
    where = f"{source}:{line}" if line else source
    return PolicyError(f"{where}: rule {rule!r}: {msg}" if rule else f"{where}: {msg}")


def _line_of(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 0


def _mapping_get(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    for k, v in node.value:
        if k.value == key:
            return v
    return None


def duplicate_key(root: yaml.Node | None) -> tuple[str, int, int] | None:
    """The first key (by line) that one mapping holds twice, as (key, line, line of the first one).

    YAML forbids duplicate keys, but PyYAML keeps the last silently, which would let a second
    `decision:` or `default:` override the first unseen (and line numbers point at the first)."""
    found: list[tuple[int, str, int]] = []
    stack, visited = [root], set()
    while stack:  # iterative, and each node once: aliases share nodes
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    line = k.start_mark.line + 1
                    if (k.tag, k.value) in first:
                        found.append((line, k.value, first[(k.tag, k.value)]))
                    first.setdefault((k.tag, k.value), line)
                stack += [k, v]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    if not found:
        return None
    line, key, first_line = min(found)
    return key, line, first_line


# libyaml's safe loader when PyYAML has it: the same documents and marks, and it refuses nesting past
# 1,000 levels at once, where the pure-Python parser takes seconds to reach a RecursionError.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """(node tree, document) of `text` with the safe loader. What PyYAML raises besides YAMLError becomes
    one: RecursionError (deep nesting, pure-Python parser) and ValueError from building a value (an
    integer past Python's 4,300-digit limit, a timestamp such as 2001-13-45)."""
    try:
        return yaml.compose(text, Loader=SAFE_LOADER), yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 (safe)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    except ValueError as e:
        raise yaml.YAMLError(f"a value cannot be read: {str(e)[:200]}") from None


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy; every error names the source, the rule and the line."""
    try:
        root, doc = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise _err(source, mark.line + 1 if mark else 0, None, f"not valid YAML: {e}") from None
    dup = duplicate_key(root)
    if dup:
        raise _err(source, dup[1], None, f"duplicate key {dup[0]!r} (first at line {dup[2]})")
    if not isinstance(doc, dict) or not isinstance(root, yaml.MappingNode):
        raise _err(source, 1, None, "a policy must be a mapping with name, version, rules and default")
    unknown = set(doc) - {"name", "version", "description", "rules", "default"}
    if unknown:
        raise _err(source, 1, None, f"unknown top-level keys {sorted(unknown)}")
    name, version, default = doc.get("name"), doc.get("version"), doc.get("default")
    if not isinstance(name, str) or not name:
        raise _err(source, _line_of(_mapping_get(root, "name")), None, "`name` must be a non-empty string")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _err(source, _line_of(_mapping_get(root, "version")), None, "`version` must be an integer")
    if default not in DECISIONS:
        raise _err(source, _line_of(_mapping_get(root, "default")), None, f"`default` must be one of {DECISIONS}")
    rules_node = _mapping_get(root, "rules")
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not isinstance(rules_node, yaml.SequenceNode):
        raise _err(source, _line_of(rules_node), None, "`rules` must be a list")
    rules = tuple(_parse_rule(r, n, source) for r, n in zip(raw_rules, rules_node.value, strict=True))
    _check_reachability(rules, source)
    return Policy(name=name, version=version, rules=rules, default=default, source=source)


def _parse_rule(raw: Any, node: yaml.Node, source: str) -> Rule:
    line = _line_of(node)
    if not isinstance(raw, dict):
        raise _err(source, line, None, "each rule must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _err(source, line, None, "rule without a `name`")
    unknown = set(raw) - {"name", "description", "when", "at_least", "of", "decision"}
    if unknown:
        raise _err(source, line, name, f"unknown keys {sorted(unknown)}")
    if raw.get("decision") not in DECISIONS:
        raise _err(source, line, name, f"`decision` must be one of {DECISIONS}, got {raw.get('decision')!r}")
    if "when" in raw and ("of" in raw or "at_least" in raw):
        raise _err(source, line, name, "use either `when` or `at_least` with `of`, not both")
    at_least = raw.get("at_least")
    block_key = "of" if "of" in raw or at_least is not None else "when"
    block = raw.get(block_key) or {}
    if not isinstance(block, dict):
        raise _err(source, line, name, f"`{block_key}` must map features to conditions")
    block_node = _mapping_get(node, block_key) if isinstance(node, yaml.MappingNode) else None
    conditions = []
    for feature, spec in block.items():
        fnode = _mapping_get(block_node, feature) if isinstance(block_node, yaml.MappingNode) else None
        conditions += _parse_conditions(feature, spec, source, _line_of(fnode) or line, name)
    if at_least is not None:
        if not isinstance(at_least, int) or isinstance(at_least, bool) or not 1 <= at_least <= len(conditions):
            raise _err(source, line, name, f"`at_least` must be an integer from 1 to {len(conditions)}, got {at_least!r}")
    return Rule(name=name, decision=raw["decision"], conditions=tuple(conditions), at_least=at_least, line=line)


def _parse_conditions(feature: Any, spec: Any, source: str, line: int, rule: str) -> list[Condition]:
    if feature not in OPS:
        raise _err(source, line, rule, f"unknown feature {feature!r}; known features: {', '.join(POLICY_FEATURES)}")
    if not isinstance(spec, dict) or not spec:
        raise _err(source, line, rule, f"{feature}: condition must be a mapping like {{eq: value}}")
    out = []
    for op, value in spec.items():
        if op not in OPS[feature]:
            raise _err(source, line, rule, f"{feature}: operator {op!r} not allowed; use one of {OPS[feature]}")
        _check_value(feature, op, value, source, line, rule)
        out.append(Condition(feature, op, tuple(value) if op in ("in", "not_in") else value))
    return out


def _check_value(feature: str, op: str, value: Any, source: str, line: int, rule: str) -> None:
    values = value if op in ("in", "not_in") else [value]
    if op in ("in", "not_in") and (not isinstance(value, list) or not value):
        raise _err(source, line, rule, f"{feature}.{op}: must be a non-empty list")
    for v in values:
        if feature in BOOLEAN:
            ok = isinstance(v, bool)
        elif feature in NUMERIC:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        else:
            ok = isinstance(v, str)
        if ok and feature in NUMERIC:
            try:
                ok = math.isfinite(float(v))  # not .nan or .inf: a threshold no value can meet (or miss)
            except OverflowError:
                ok = False  # an integer beyond float range
        if not ok:
            kind = "true/false" if feature in BOOLEAN else "a finite number" if feature in NUMERIC else "a string"
            raise _err(source, line, rule, f"{feature}.{op}: bad threshold {_short(v)}; must be {kind}")
        if feature in ("ad_density", "paid_traffic") and not 0.0 <= v <= 1.0:
            raise _err(source, line, rule, f"{feature}.{op}: bad threshold {v!r}; a share must be within [0, 1]")
        if feature in NUMERIC and v < 0:
            raise _err(source, line, rule, f"{feature}.{op}: bad threshold {v!r}; must be >= 0")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _check_reachability(rules: tuple[Rule, ...], source: str) -> None:
    seen: dict[str, int] = {}
    # Each rule's condition set once (quadratic in rules, not in rules x conditions x re-hashing).
    sets = [frozenset(tuple(map(_hashable, c.canonical())) for c in r.conditions) for r in rules]
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise _err(source, rule.line, rule.name, f"duplicate rule name (first at line {seen[rule.name]})")
        seen[rule.name] = rule.line
        mine = sets[i]
        for j, earlier in enumerate(rules[:i]):
            theirs = sets[j]
            if earlier.at_least is None and rule.at_least is None and theirs <= mine:
                what = "conflicting" if theirs == mine and earlier.decision != rule.decision else "unreachable"
                raise _err(
                    source,
                    rule.line,
                    rule.name,
                    f"{what}: every row it matches is already decided by rule {earlier.name!r} "
                    f"(line {earlier.line}) as {earlier.decision}",
                )
            if earlier.at_least is not None and (earlier.at_least, theirs) == (rule.at_least, mine):
                raise _err(source, rule.line, rule.name, f"conflicting: same conditions as rule {earlier.name!r}")


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path}: cannot read policy ({e})") from None
    return parse_policy(text, source=str(path))


def shipped_policy(version: int) -> Policy:
    """`policy v1` / `policy v2`, shipped with Modelsmith."""
    return load_policy(POLICIES_DIR / f"v{version}.yaml")
