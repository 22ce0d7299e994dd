"""The diagnosis: what a critic concludes from a cycle's failure traces, as a typed, validated record.

Every critic (statistical, Claude) returns a `Diagnosis`. Whatever a critic says is checked by
`validate_diagnosis` against the features and segments that exist and against the recipe bounds,
so no critic can widen the synthesis or the training beyond them. `DIAGNOSIS_SCHEMA` is the JSON
schema of the record a critic fills in (the Claude critic's tool input).
"""

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from scenario_data.policy import OPS, POLICY_FEATURES, PolicyError, _parse_conditions

STAGES = ("sft", "grpo")
RECIPES = (("sft",), ("sft", "grpo"))
ROWS_BOUNDS = (50, 5_000)  # targeted synthetic rows a diagnosis may ask for
REPLAY_BOUNDS = (0.0, 4.0)  # replay rows (other segments) per targeted row
CONTRAST_BOUNDS = (0.0, 0.5)  # share of the replay rows that are near misses


class DiagnosisError(ValueError):
    """A diagnosis that names something that does not exist or leaves the bounds; the message names the field."""


@dataclass(frozen=True)
class FeatureFinding:
    """One implicated feature: the values (or buckets) where errors concentrate, and how much."""

    feature: str  # a policy feature column, e.g. "rewarded", "position"
    values: tuple[str, ...]  # implicated values as text, e.g. ("True",), ("atf",), ("0.3-0.4",)
    error_lift: float  # error rate in these values / error rate in the segment (1.0 = no signal)
    attribution: float = 0.0  # mean attribution of the feature on the failing rows (traces)


@dataclass(frozen=True)
class SynthesisSpec:
    """Which rows to synthesise: targeted rows matching `filters`, plus a replay buffer of other segments."""

    filters: dict[str, dict[str, Any]]  # policy grammar: {"vertical": {"eq": "Video Gaming"}, ...}
    rows: int = 1_000
    replay_ratio: float = 1.0
    # Share of the replay rows drawn from outside the segment *with* the implicated feature values:
    # the near misses that teach the model the change is specific to the segment.
    contrast_share: float = 0.0
    # The regressed segment's own filter, when `filters` narrow it to a cause (segment AND cause): that
    # share of `rows` (`contrast_share`) are in-segment near misses, segment AND NOT filters, labelled
    # by the policy, which teach that the change needs the cause and not the segment alone. Empty: none.
    segment: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingRecipe:
    stages: tuple[str, ...] = ("sft",)


@dataclass(frozen=True)
class Provenance:
    critic: str  # "statistical" or "claude"
    model: str  # the critic's model ("duckdb slice analysis" or e.g. "claude-sonnet-4-5")
    prompt_digest: str  # SHA-256 of the exact prompt (or query text) the critic ran
    input_digest: str  # SHA-256 of the traces it read
    fallback: str = ""  # why another critic answered instead, when one did


@dataclass(frozen=True)
class Diagnosis:
    cycle: str
    segments: tuple[str, ...]  # the failing pins' names
    features: tuple[FeatureFinding, ...]
    hypothesis: str
    confidence: float
    synthesis: SynthesisSpec
    recipe: TrainingRecipe
    provenance: Provenance
    extra: dict[str, Any] = field(default_factory=dict)  # critic-specific evidence (tables), shown in the UI

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True, default=str).encode()).hexdigest()


DIAGNOSIS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["segments", "features", "hypothesis", "confidence", "synthesis", "recipe"],
    "properties": {
        "segments": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                     "description": "Names of the failing pins, exactly as given"},
        "features": {
            "type": "array", "minItems": 1,
            "items": {"type": "object", "additionalProperties": False, "required": ["feature", "values", "error_lift"],
                      "properties": {"feature": {"type": "string", "enum": list(POLICY_FEATURES)},
                                     "values": {"type": "array", "items": {"type": "string"}},
                                     "error_lift": {"type": "number", "minimum": 0},
                                     "attribution": {"type": "number"}}},
        },
        "hypothesis": {"type": "string", "maxLength": 600, "description": "Root cause in one or two sentences"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "synthesis": {
            "type": "object", "additionalProperties": False, "required": ["filters", "rows", "replay_ratio"],
            "properties": {
                "filters": {"type": "object", "description": "feature -> {op: value} in the policy grammar"},
                "rows": {"type": "integer", "minimum": ROWS_BOUNDS[0], "maximum": ROWS_BOUNDS[1]},
                "replay_ratio": {"type": "number", "minimum": REPLAY_BOUNDS[0], "maximum": REPLAY_BOUNDS[1]},
                "contrast_share": {"type": "number", "minimum": CONTRAST_BOUNDS[0], "maximum": CONTRAST_BOUNDS[1],
                                   "description": "Share of replay rows outside the segment that have the implicated values"},
                "segment": {"type": "object", "description": "Optional: the regressed segment's own filter when "
                            "`filters` narrow it to a cause; contrast_share * rows in-segment near misses are drawn from it"},
            },
        },
        "recipe": {"type": "object", "additionalProperties": False, "required": ["stages"],
                   "properties": {"stages": {"type": "array", "items": {"type": "string", "enum": list(STAGES)}}}},
    },
}


def _fail(fld: str, msg: str) -> DiagnosisError:
    return DiagnosisError(f"diagnosis field {fld!r}: {msg}")


def _finite(x: Any) -> bool:
    """A JSON number that is a real number: not a bool, NaN, an infinity or an integer beyond float range."""
    if not isinstance(x, int | float) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def validate_diagnosis(raw: Any, *, cycle: str, known_segments: set[str], provenance: Provenance) -> Diagnosis:
    """Turn a critic's raw answer into a `Diagnosis`, refusing anything outside what exists and the bounds."""
    if not isinstance(raw, dict):
        raise _fail("(root)", f"must be an object, got {type(raw).__name__}")
    unknown = set(raw) - set(DIAGNOSIS_SCHEMA["properties"])
    if unknown:
        raise _fail("(root)", f"unknown keys {sorted(unknown)}")
    for key in DIAGNOSIS_SCHEMA["required"]:
        if key not in raw:
            raise _fail(key, "missing")
    segments = raw["segments"]
    if not isinstance(segments, list) or not segments or not all(isinstance(s, str) for s in segments):
        raise _fail("segments", "must be a non-empty list of pin names")
    for s in segments:
        if s not in known_segments:
            raise _fail("segments", f"{s!r} is not a failing pin; failing pins: {sorted(known_segments)}")
    findings = []
    if not isinstance(raw["features"], list) or not raw["features"]:
        raise _fail("features", "must be a non-empty list")
    for i, f in enumerate(raw["features"]):
        if not isinstance(f, dict) or f.get("feature") not in POLICY_FEATURES:
            raise _fail(f"features[{i}].feature", f"must be one of the feature columns {list(POLICY_FEATURES)}")
        extra = set(f) - set(DIAGNOSIS_SCHEMA["properties"]["features"]["items"]["properties"])
        if extra:
            raise _fail(f"features[{i}]", f"unknown keys {sorted(extra)[:5]}")
        values = f.get("values", [])
        if not isinstance(values, list) or not all(isinstance(v, str | int | float | bool) for v in values):
            raise _fail(f"features[{i}].values", "must be a list of values")
        lift = f.get("error_lift")
        if not _finite(lift) or lift < 0:
            raise _fail(f"features[{i}].error_lift", f"must be a finite number >= 0, got {lift!r}")
        attribution = f.get("attribution", 0.0)
        if not _finite(attribution):
            raise _fail(f"features[{i}].attribution", f"must be a finite number, got {attribution!r}")
        findings.append(FeatureFinding(f["feature"], tuple(str(v) for v in values), float(lift), float(attribution)))
    hypothesis = raw["hypothesis"]
    if not isinstance(hypothesis, str) or not hypothesis.strip() or len(hypothesis) > 600:
        raise _fail("hypothesis", "must be one or two sentences (1-600 characters)")
    confidence = raw["confidence"]
    if not isinstance(confidence, int | float) or isinstance(confidence, bool) or not 0 <= confidence <= 1:
        raise _fail("confidence", f"must be a number in [0, 1], got {confidence!r}")
    synthesis = _synthesis(raw["synthesis"])
    recipe = raw["recipe"]
    if isinstance(recipe, dict) and set(recipe) - {"stages"}:  # e.g. epochs or a learning rate: not the critic's
        raise _fail("recipe", f"unknown keys {sorted(set(recipe) - {'stages'})[:5]}; a recipe names its stages only")
    listed = recipe.get("stages") if isinstance(recipe, dict) else None
    stages = tuple(listed) if isinstance(listed, list) else ()
    if stages not in RECIPES:
        given = recipe.get("stages") if isinstance(recipe, dict) else recipe
        raise _fail("recipe.stages", f"must be one of {[list(r) for r in RECIPES]}, got {given!r}"[:300])
    return Diagnosis(cycle, tuple(segments), tuple(findings), hypothesis.strip(), float(confidence), synthesis,
                     TrainingRecipe(stages), provenance)


def _synthesis(raw: Any) -> SynthesisSpec:
    if not isinstance(raw, dict):
        raise _fail("synthesis", "must be an object")
    filters = raw.get("filters")
    if not isinstance(filters, dict) or not filters:
        raise _fail("synthesis.filters", "must map feature columns to conditions")
    clean = _filters(filters, "synthesis.filters")
    segment = raw.get("segment", {})
    if not isinstance(segment, dict):
        raise _fail("synthesis.segment", "must map feature columns to conditions (or be left out)")
    segment = _filters(segment, "synthesis.segment")
    if segment and any(clean.get(f) != c for f, c in segment.items()):
        # the near misses are segment AND NOT filters: the filters must be the segment narrowed, not another one
        raise _fail("synthesis.segment", "every condition of the segment must be one of the filters' (filters narrow it)")
    if segment == clean:
        segment = {}  # nothing narrowed: no row is in the segment and outside the filters
    rows = raw.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or not ROWS_BOUNDS[0] <= rows <= ROWS_BOUNDS[1]:
        raise _fail("synthesis.rows", f"must be an integer in {list(ROWS_BOUNDS)}, got {rows!r}")
    ratio = raw.get("replay_ratio")
    if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not REPLAY_BOUNDS[0] <= ratio <= REPLAY_BOUNDS[1]:
        raise _fail("synthesis.replay_ratio", f"must be a number in {list(REPLAY_BOUNDS)}, got {ratio!r}")
    contrast = raw.get("contrast_share", 0.0)
    if not isinstance(contrast, int | float) or isinstance(contrast, bool) or not CONTRAST_BOUNDS[0] <= contrast <= CONTRAST_BOUNDS[1]:
        raise _fail("synthesis.contrast_share", f"must be a number in {list(CONTRAST_BOUNDS)}, got {contrast!r}")
    unknown = set(raw) - {"filters", "rows", "replay_ratio", "contrast_share", "segment"}
    if unknown:
        raise _fail("synthesis", f"unknown keys {sorted(unknown)}")
    return SynthesisSpec(clean, rows, float(ratio), float(contrast), segment)


def _filters(filters: dict, fld: str) -> dict[str, dict[str, Any]]:
    """Conditions in the policy grammar, each feature, operator and value checked as synthesis will read them."""
    clean: dict[str, dict[str, Any]] = {}
    for feature, cond in filters.items():
        if feature not in POLICY_FEATURES:
            raise _fail(f"{fld}.{feature}", f"unknown feature; known: {list(POLICY_FEATURES)}")
        cond = cond if isinstance(cond, dict) else {"eq": cond}
        for op in cond:
            if op not in OPS[feature]:
                raise _fail(f"{fld}.{feature}", f"operator {op!r} not allowed; allowed: {list(OPS[feature])}")
        try:  # the values too, as synthesis will read them: a wrong type or a non-finite threshold is refused here
            _parse_conditions(feature, cond, "<diagnosis>", 0, fld)
        except PolicyError as e:
            raise _fail(f"{fld}.{feature}", str(e).split(": ", 2)[-1]) from None
        clean[feature] = dict(cond)
    return clean


def diagnosis_from_dict(d: dict[str, Any]) -> Diagnosis:
    """Read back a stored diagnosis (`Diagnosis.as_dict()` JSON)."""
    return Diagnosis(
        d["cycle"], tuple(d["segments"]), tuple(FeatureFinding(f["feature"], tuple(f["values"]), f["error_lift"],
                                                               f.get("attribution", 0.0)) for f in d["features"]),
        d["hypothesis"], d["confidence"], SynthesisSpec(d["synthesis"]["filters"], d["synthesis"]["rows"],
                                                        d["synthesis"]["replay_ratio"],
                                                        d["synthesis"].get("contrast_share", 0.0),
                                                        d["synthesis"].get("segment", {})),
        TrainingRecipe(tuple(d["recipe"]["stages"])), Provenance(**d["provenance"]), d.get("extra", {}))
