"""Pin files: the shipped default loads; malformed ones are refused naming the pin and the field."""

import polars as pl
import pytest

from modelsmith.evaluate import score_pins
from modelsmith.pins import DEFAULT_PINS, PinError, load_pins, parse_pins, segment_pins_yaml


def test_shipped_default_has_the_gaming_pins():
    pins = load_pins(DEFAULT_PINS)
    names = {p.name for p in pins.pins}
    assert {"all", "Video Gaming/app", "Video Gaming/site"} <= names
    assert len(pins.by_check()) == len(pins.pins)


@pytest.mark.parametrize(
    "body,needle",
    [
        ("pins:\n  - name: a\n    accuracy_floor: 1.5\n", "pin 'a' field 'accuracy_floor'"),
        ("pins:\n  - name: a\n    where: {colour: red}\n", "pin 'a' field 'where.colour'"),
        ("pins:\n  - name: a\n    where: {slots: {gte: many}}\n", "pin 'a' field 'where.slots'"),
        ("pins:\n  - name: a\n    latency: 3\n", "pin 'a' field 'latency'"),
        ("pins:\n  - {name: a}\n  - {name: A}\n", "field 'name'"),
        ("regression: {test: ttest}\npins:\n  - {name: a}\n", "field 'regression.test'"),
        ("pins: []\n", "field 'pins'"),
    ],
)
def test_malformed_pin_files_name_the_pin_and_field(body, needle):
    with pytest.raises(PinError) as e:
        parse_pins(body, "bad.yaml")
    assert needle in str(e.value) and "bad.yaml:" in str(e.value)


def test_floor_latency_and_paired_regression_each_fail_a_pin():
    pins = parse_pins(
        "defaults: {accuracy_floor: 0.8, latency_p99_ms: 10, max_drop: 0.05}\n"
        "pins:\n  - {name: all}\n  - {name: games, where: {vertical: Video Gaming}}\n  - {name: slow, latency_p99_ms: 1}\n"
    )
    n = 200
    preds = pl.DataFrame({
        "row_id": [f"r{i}" for i in range(n)],
        "vertical": ["Video Gaming"] * 100 + ["Sports"] * 100,
        "expected": ["bid:shade_mid"] * n,
        "predicted": ["bid:shade_mid"] * 70 + ["bid:shade_low"] * 30 + ["bid:shade_mid"] * 100,
        "latency_ms": [2.0] * n,
    }).with_columns((pl.col("predicted") == pl.col("expected")).alias("correct"))
    reference = preds.select("row_id", pl.lit(True).alias("reference_correct"))
    by = {r.pin: r for r in score_pins(pins, preds, reference)}
    assert by["games"].accuracy == 0.7 and not by["games"].passed and by["games"].regressed
    assert by["games"].worse == 30 and by["games"].p_value < 1e-6
    assert by["all"].accuracy == 0.85 and by["all"].regressed  # 15 % drop > 5 %
    assert "p99 latency" in by["slow"].reasons
    no_ref = {r.pin: r for r in score_pins(pins, preds, None)}
    assert not no_ref["all"].regressed and no_ref["all"].passed and no_ref["all"].p_value is None


def test_pins_init_writes_a_loadable_file():
    df = pl.DataFrame({"vertical": ["A"] * 120 + ["B"] * 10, "inventory_type": ["app"] * 130})
    text, small = segment_pins_yaml(df, min_support=100)
    pins = parse_pins(text)
    assert [p.name for p in pins.pins] == ["all", "A/app"]
    # 130 and 120 rows cannot show a 2-point drop at alpha 0.05 over 4 tests (11 flips needed): both named
    assert [s.split(" (")[0] for s in small] == ["all", "A/app"] and "inconclusive with this pack" in text


def test_pins_init_names_only_the_segments_too_small():
    df = pl.DataFrame({"vertical": ["A"] * 2000 + ["B"] * 150, "inventory_type": ["app"] * 2150})
    _, small = segment_pins_yaml(df, min_support=100)
    assert [s.split(" (")[0] for s in small] == ["B/app"]
