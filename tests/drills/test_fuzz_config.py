"""Bad-input drill: the configuration readers, fuzzed from the shipped files.

- the policy YAML (`scenario_data.policy.parse_policy` / `load_policy`), seeded from policies v1 and v2;
- the pin YAML (`modelsmith.pins.parse_pins` / `load_pins`), seeded from the shipped default pins;
- Dagster run config: `PromotionConfig` (the gate's Launchpad) and every resource's settings.

Mutations: one scalar of the YAML replaced by a nasty value (.nan, .inf, 1e400, a 5,000-digit integer,
10,000 nested lists, a 1 MB string, tags such as !!binary or !!python/name, an undefined alias, an
impossible date), a key line duplicated, raw bytes (non-UTF-8) inserted, the file cut, anchors and
aliases (a "billion laughs" document). A policy or pin file is either accepted, and then labels (or
masks) real rows without an error, or refused with a PolicyError / PinError that starts with the file
and names the line, rule, pin or field. Run config is refused by Dagster naming the config path (a
wrong type, an unknown key, a decision outside the enum), or, for a value of the right type outside
its bounds (epochs -5, a NaN learning rate), by the resource's validation naming the field, when the
run starts and before any asset code runs.
"""

import math
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pydantic
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modelsmith.pins import DEFAULT_PINS, PinError, load_pins
from scenario_data.ingest import ingest_paths
from scenario_data.policy import DECISIONS, POLICIES_DIR, PolicyError, load_policy, parse_policy, shipped_policy
from tests.drills.input_support import DEEP

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SOURCES = {"v1": (POLICIES_DIR / "v1.yaml").read_text(), "v2": (POLICIES_DIR / "v2.yaml").read_text(),
           "pins": DEFAULT_PINS.read_text()}

NASTY_YAML = [
    ".nan", ".inf", "-.inf", ".NaN", "1e400", "-1e400", "9" * 5_000, "0x" + "f" * 5_000, "1_000", "0o17", "-0",
    "[" * DEEP + "]" * DEEP, "{a: " * 3_000 + "1" + "}" * 3_000, "- " * 3_000 + "x",
    "x" * 1_000_000, "''", '"\\x00"', '"\\ud800"', '"\\u2028"', "~", "null", "[]", "{}", "[[]]", "[1, 2.5]",
    "[1, 2.5, 99999999999999999999999999999]", "[a, 1, true]", "!!binary AAAA", "!!set {a, b}",
    "!!omap [a: 1]", "!!python/name:os.system", "!!python/object/apply:os.system [ls]", "*undefined",
    "2001-13-45", "2001-12-14t21:59:43.10-05:00", "yes", "No", "true", "-1", "1.5", "0", "1", "99",
    "Video Gaming", "site", "bid:shade_high", "no_bid:mfa",
]
VALUES = st.one_of(st.sampled_from(NASTY_YAML), st.integers(-(2**70), 2**70).map(str),
                   st.floats().map(lambda f: repr(f).replace("inf", ".inf").replace("nan", ".nan")),
                   st.text(max_size=10).map(lambda t: yaml.safe_dump(t).removesuffix("\n...\n").strip()))
MUTATIONS = st.one_of(
    st.tuples(st.just("scalar"), st.integers(0, 10**6), VALUES),
    st.tuples(st.just("dup_line"), st.integers(0, 10**6), st.just("")),
    st.tuples(st.just("bytes"), st.floats(0, 1), st.binary(min_size=1, max_size=6).map(lambda b: b.hex())),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just("")),
)


def mutate(text: str, mutation: tuple) -> str | bytes:
    kind, where, value = mutation
    if kind == "truncate":
        return text[: int(len(text) * where)]
    if kind == "bytes":  # raw bytes, possibly not UTF-8: only a file can carry them
        data = text.encode()
        at = int(len(data) * where)
        return data[:at] + bytes.fromhex(value) + data[at:]
    if kind == "dup_line":  # a `key: value` line twice: YAML forbids it, PyYAML kept the last silently
        lines = text.splitlines(keepends=True)
        keyed = [i for i, line in enumerate(lines) if ":" in line and not line.lstrip().startswith("#")]
        i = keyed[where % len(keyed)]
        return "".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    scalars = _scalars(yaml.compose(text, Loader=yaml.SafeLoader))
    node = scalars[where % len(scalars)]
    return text[: node.start_mark.index] + value + text[node.end_mark.index:]


def _scalars(node: yaml.Node) -> list[yaml.ScalarNode]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, yaml.ScalarNode):
            out.append(n)
        elif isinstance(n, yaml.SequenceNode):
            stack += n.value
        elif isinstance(n, yaml.MappingNode):
            stack += [x for kv in n.value for x in kv]
    return sorted(out, key=lambda n: n.start_mark.index)


@pytest.fixture(scope="module")
def real_features(realdata: Path) -> pl.DataFrame:
    features = ingest_paths([realdata / "openrtb"]).features
    assert features.height > 250
    return features


def _read(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# --- the policy ---

@FUZZ
@given(seed=st.sampled_from(["v1", "v2"]), mutation=MUTATIONS)
@example(seed="v1", mutation=("scalar", 11, "9" * 5_000))  # PyYAML's int(): a bare ValueError escaped
@example(seed="v1", mutation=("scalar", 41, ".nan"))  # a NaN threshold: a condition that never holds
@example(seed="v1", mutation=("scalar", 44, ".inf"))
@example(seed="v1", mutation=("scalar", 3, "[" * DEEP + "]" * DEEP))  # RecursionError (pure-Python parser)
@example(seed="v1", mutation=("dup_line", 2, ""))  # a duplicate key silently overrode the first
def test_mutated_policy_is_accepted_and_labels_real_rows_or_refused_naming_the_file(
        tmp_path_factory, real_features, seed, mutation):
    path = _read(tmp_path_factory.mktemp("policy"), "policy.yaml", mutate(SOURCES[seed], mutation))
    try:
        policy = load_policy(path)
    except PolicyError as e:
        assert str(e).startswith(str(path)), e
        assert len(str(e)) < 2_000  # a clear message, not the whole document
        return
    labelled = policy.label(real_features)  # an accepted policy must decide real rows without an error
    assert labelled.height == real_features.height
    assert set(labelled["expected"].unique().to_list()) <= set(DECISIONS)
    assert len(policy.digest) == 64 and policy.canonical()["default"] in DECISIONS
    for rule in policy.rules:
        for c in rule.conditions:
            values = c.value if c.op in ("in", "not_in") else (c.value,)
            assert all(not isinstance(v, float) or math.isfinite(v) for v in values), (rule.name, c)


@pytest.mark.parametrize(("condition", "message"), [
    ("floor: {gt: .nan}", "floor.gt: bad threshold nan; must be a finite number"),
    ("floor: {lte: .inf}", "floor.lte: bad threshold inf; must be a finite number"),
    ("slots: {gte: 1.0e+400}", "slots.gte: bad threshold inf; must be a finite number"),
    ("slots: {in: [1, 1.0e+400]}", "slots.in: bad threshold inf; must be a finite number"),
])
def test_non_finite_thresholds_are_refused_with_file_line_and_rule(tmp_path, condition, message):
    text = f"name: p\nversion: 1\ndefault: bid:shade_low\nrules:\n  - name: r\n    decision: bid:shade_mid\n" \
           f"    when: {{{condition}}}\n"
    with pytest.raises(PolicyError) as e:
        load_policy(_read(tmp_path, "p.yaml", text))
    assert str(e.value) == f"{tmp_path / 'p.yaml'}:7: rule 'r': {message}"


def test_a_numeric_list_mixing_integers_and_floats_labels_real_rows(real_features):
    """Accepted before and after the fix; labelling crashed (polars built an Int64 list and met 2.5)."""
    policy = parse_policy("name: p\nversion: 1\ndefault: bid:shade_low\nrules:\n  - name: r\n"
                          "    decision: bid:shade_mid\n    when: {floor: {in: [0, 2.5, 99999999999999999999]},"
                          " slots: {not_in: [2, 3.5]}}\n")
    labelled = policy.label(real_features)
    expected = real_features.select((pl.col("floor").is_in([0.0, 2.5]) & ~(pl.col("slots") == 2)).alias("hit"))["hit"]
    assert (labelled["expected"] == "bid:shade_mid").to_list() == expected.to_list()
    assert 0 < expected.sum() < real_features.height  # both outcomes occur on the real rows


def test_duplicate_keys_are_refused_naming_both_lines(tmp_path):
    text = (POLICIES_DIR / "v1.yaml").read_text() + "default: bid:shade_high\n"
    with pytest.raises(PolicyError, match=r"p\.yaml:\d+: duplicate key 'default' \(first at line \d+\)"):
        load_policy(_read(tmp_path, "p.yaml", text))
    assert shipped_policy(1).default != "bid:shade_high"  # what the silent override would have made it


def test_billion_laughs_and_a_huge_policy_finish_fast(tmp_path):
    laughs = "lol: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"l{i}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    with pytest.raises(PolicyError, match="unknown top-level keys"):
        load_policy(_read(tmp_path, "laughs.yaml", laughs))
    inside = ("name: p\nversion: 1\ndefault: bid:shade_low\nx_list: &a [v, v, v, v, v, v, v, v, v]\n" + "".join(
        f"x_{i}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
        + "rules:\n  - name: r\n    decision: bid:shade_mid\n    when: {vertical: {in: *i}}\n")
    with pytest.raises(PolicyError):
        load_policy(_read(tmp_path, "inside.yaml", inside))
    rules = "".join(f"  - name: r{i}\n    decision: bid:shade_low\n"
                    f"    when: {{floor: {{gt: {i}}}, slots: {{lt: {i + 1}}}}}\n" for i in range(2_000))
    policy = parse_policy("name: p\nversion: 1\ndefault: bid:shade_low\nrules:\n" + rules)  # quadratic checks: < 5 s
    assert len(policy.rules) == 2_000


# --- the pins ---

@FUZZ
@given(mutation=MUTATIONS)
@example(mutation=("scalar", 4, ".nan"))  # a NaN accuracy floor passed the range check: it disabled the pin
@example(mutation=("scalar", 6, ".inf"))  # an infinite latency budget
@example(mutation=("scalar", 8, ".nan"))  # a NaN max_drop: no regression could exceed it
@example(mutation=("scalar", 1, "9" * 5_000))  # PyYAML's int(): a bare ValueError escaped
@example(mutation=("dup_line", 3, ""))  # a duplicate key silently overrode the first
def test_mutated_pins_are_accepted_and_mask_real_rows_or_refused_naming_the_file(
        tmp_path_factory, real_features, mutation):
    path = _read(tmp_path_factory.mktemp("pins"), "pins.yaml", mutate(SOURCES["pins"], mutation))
    try:
        pins = load_pins(path)
    except PinError as e:
        assert str(e).startswith(str(path)), e
        assert len(str(e)) < 2_000
        return
    assert pins.pins and 0 < pins.alpha < 1
    for pin in pins.pins:
        for value in (pin.accuracy_floor, pin.latency_p99_ms, pin.max_drop):
            assert math.isfinite(value) and value >= 0, pin
        assert pin.mask(real_features).len() == real_features.height


def test_nan_floor_would_have_passed_every_pin(tmp_path):
    """Why NaN is refused: `accuracy < nan` is false, so a NaN floor fails nothing."""
    assert not (0.0 < float("nan"))
    with pytest.raises(PinError, match=r"pins\.yaml:2: pin 'a' field 'accuracy_floor': must be a finite number"):
        load_pins(_read(tmp_path, "pins.yaml", "pins:\n  - {name: a, accuracy_floor: .nan}\n"))


# --- Dagster run config ---

def _settings_classes() -> dict[str, type]:
    from resources import (CriticSettings, InferenceSettings, LocalStorage, ModelSettings, ScenarioSettings,
                           SignerSettings, TrainerSettings)

    return {"trainer": TrainerSettings, "critic": CriticSettings, "inference": InferenceSettings,
            "model": ModelSettings, "scenarios": ScenarioSettings, "signer": SignerSettings, "storage": LocalStorage}


@pytest.fixture(scope="module")
def jobs():
    """The real promotion job (gate_defs) and a probe job that needs every resource, with the real classes."""
    from modelsmith_assets.gate import gate_defs

    classes = _settings_classes()

    @dg.asset(required_resource_keys=set(classes) - {"storage", "signer"})
    def probe(context) -> None:  # reached only when every resource initialised
        context.log.info("resources initialised")

    resources = {key: cls() for key, cls in classes.items()}
    defs = dg.Definitions.merge(gate_defs(resources), dg.Definitions(
        assets=[probe], jobs=[dg.define_asset_job("probe_job", selection=[probe])], resources=resources))
    return {"promotion": defs.resolve_job_def("promotion_job"), "probe": defs.resolve_job_def("probe_job")}


BAD_VALUES = st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.none(), st.text(max_size=8),
                       st.just("x" * 100_000), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _fields() -> list[tuple[str, str]]:
    return [(key, name) for key, cls in sorted(_settings_classes().items()) for name in sorted(cls.model_fields)]


@settings(FUZZ, max_examples=120)
@given(field=st.sampled_from(_fields()), value=BAD_VALUES, unknown=st.booleans())
@example(field=("trainer", "epochs"), value=-5, unknown=False)  # schema-valid: training 0 epochs, then a KeyError
@example(field=("trainer", "learning_rate"), value=float("nan"), unknown=False)  # NaN weights
@example(field=("trainer", "epochs"), value=10**30, unknown=False)  # a run that never ends
@example(field=("trainer", "stages"), value="grpo", unknown=False)
@example(field=("trainer", "seed"), value=2**40, unknown=False)  # numpy seeds stop at 2**32
@example(field=("inference", "batch_size"), value=0, unknown=False)
def test_resource_run_config_is_refused_naming_the_field_or_within_bounds(jobs, field, value, unknown):
    key, name = field
    config: dict[str, Any] = {name: value, **({"no_such_field": 1} if unknown else {})}
    run_config = {"resources": {key: {"config": config}}}
    try:
        dg.validate_run_config(jobs["probe"], run_config)
    except dg.DagsterInvalidConfigError as e:
        assert f"root:resources:{key}:config" in str(e)
        assert (name in str(e)) or unknown  # the error names the field (or the unknown key)
        assert "no_such_field" in str(e) or not unknown
        return
    assert not unknown  # an unknown key never passes
    cls = _settings_classes()[key]
    try:  # what Dagster does with schema-valid config when the run starts (see the execution test below)
        settings_ = cls(**config)
    except pydantic.ValidationError as e:
        assert e.errors()[0]["loc"] == (name,)
        return
    _assert_within_bounds(key, name, getattr(settings_, name))


def _assert_within_bounds(key: str, name: str, value: Any) -> None:
    if isinstance(value, float):
        assert math.isfinite(value), (key, name, value)
    if name in ("epochs", "batch_size", "lora_r", "grpo_steps", "max_rounds", "pack_size", "build_pack_size"):
        assert 1 <= value <= 100_000_000, (key, name, value)
    if name in ("seed", "build_seed"):
        assert 0 <= value < 2**32
    if name in ("learning_rate", "grpo_learning_rate"):
        assert 0 < value <= 1
    if name == "heldout_fraction":
        assert 0 < value < 1
    if name == "stages":
        assert value.replace(" ", "") in ("", "sft", "sft,grpo")


@pytest.mark.parametrize(("run_config", "path", "words"), [
    ({"ops": {"promotion": {"config": {"approver": "ana", "decision": "yolo"}}}},
     "root:ops:promotion:config:decision", "not in enum"),
    ({"ops": {"promotion": {"config": {"approver": 5}}}}, "root:ops:promotion:config:approver", "String"),
    ({"ops": {"promotion": {"config": {"decision": "approve"}}}}, "root:ops:promotion:config", '"approver"'),
    ({"ops": {"promotion": {"config": {"approver": "a", "promote_now": True}}}},
     "root:ops:promotion:config", '"promote_now"'),
])
def test_bad_promotion_config_is_a_dagster_error_naming_the_path(jobs, run_config, path, words):
    with pytest.raises(dg.DagsterInvalidConfigError) as e:
        dg.validate_run_config(jobs["promotion"], run_config)
    assert path in str(e.value) and words in str(e.value)


@given(decision=st.text(max_size=20))
@settings(FUZZ, max_examples=40)
def test_only_the_three_decisions_pass_the_launchpad(jobs, decision):
    run_config = {"ops": {"promotion": {"config": {"approver": "ana", "decision": decision}}}}
    try:
        dg.validate_run_config(jobs["promotion"], run_config)
        valid = True
    except dg.DagsterInvalidConfigError as e:
        assert "root:ops:promotion:config:decision" in str(e)
        valid = False
    assert valid == (decision in ("approve", "reject", "rollback"))


@pytest.mark.parametrize(("key", "config", "field"), [
    ("trainer", {"epochs": -5}, "epochs"),
    ("trainer", {"learning_rate": float("nan")}, "learning_rate"),
    ("critic", {"timeout_s": float("inf")}, "timeout_s"),
    ("model", {"build_seed": -1}, "build_seed"),
])
def test_out_of_bounds_resource_config_stops_the_run_before_any_asset_code(jobs, key, config, field):
    result = jobs["probe"].execute_in_process(run_config={"resources": {key: {"config": config}}},
                                              raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE"]
    text = failure.event_specific_data.error.to_string()
    cls = _settings_classes()[key].__name__
    assert f"1 validation error for {cls}\n{field}\n" in text, text[:2000]  # the class and the field, by name
    assert not [e for e in result.all_events if e.event_type_value in ("STEP_OUTPUT", "ASSET_MATERIALIZATION")]
    ok = jobs["probe"].execute_in_process(raise_on_error=False)
    assert ok.success  # the same job with the default config runs: the refusal was the config's


def test_undecodable_policy_and_pin_files_name_the_file(tmp_path):
    for loader, error, name in ((load_policy, PolicyError, "p.yaml"), (load_pins, PinError, "pins.yaml")):
        path = _read(tmp_path, name, b"name: \xff\xfe\n")
        with pytest.raises(error) as e:
            loader(path)
        assert str(e.value).startswith(f"{path}: cannot read")
