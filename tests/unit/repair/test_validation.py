"""An epoch judged on the validation pack: planted flips against the champion, so every verdict below is known.

The story's failure on an AMD base: Politics/site lost 12 of ~780 rows on the pins (inconclusive,
upper bound 0.0234 > 0.02) while the held-out slice of the training rows could not see it. The same
loss on the validation pack must veto the epoch; a repair of the target and a small segment's
insignificant wobble must not (the gate does not flag those either).
"""

import numpy as np
import polars as pl
import pytest

from modelsmith.pins import load_pins
from modelsmith.validation import judge_on_validation
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import shipped_policy

OTHER = {"bid": "no_bid:mfa", "no_bid:mfa": "bid"}


@pytest.fixture(scope="module")
def pack() -> pl.DataFrame:
    rows = label_requests(generate_requests(10_000, 3), shipped_policy(2))
    wrong = np.random.default_rng(5).random(rows.height) < 0.01  # a champion with 1 % errors over the pack
    champion = [OTHER.get(e, "bid") if w else e for e, w in zip(rows["expected"], wrong, strict=True)]
    return rows.with_columns(pl.Series("champion", champion, dtype=pl.String))


def _flip(rows: pl.DataFrame, pin_name: str, worse: int, better: int = 0, seed: int = 0) -> list[str]:
    """The champion's decisions with `worse` right rows of the pin made wrong and `better` wrong ones made right."""
    pin = next(p for p in load_pins().pins if p.name == pin_name)
    predicted = rows["champion"].to_list()
    expected = rows["expected"].to_list()
    seg = pin.mask(rows).to_numpy()
    right = np.array([p == e for p, e in zip(predicted, expected, strict=True)])
    rng = np.random.default_rng(seed)
    for i in rng.choice(np.flatnonzero(seg & right), worse, replace=False):
        predicted[i] = OTHER.get(expected[i], "bid")
    for i in rng.choice(np.flatnonzero(seg & ~right), better, replace=False) if better else []:
        predicted[i] = expected[i]
    return predicted


def _size(rows: pl.DataFrame, pin_name: str) -> int:
    return int(next(p for p in load_pins().pins if p.name == pin_name).mask(rows).sum())


def test_the_champions_own_decisions_hold(pack):
    verdict = judge_on_validation(load_pins(), pack, pack["champion"].to_list())
    assert verdict.holds and verdict.failing == ()


def test_the_storys_politics_loss_vetoes_the_epoch(pack):
    n = _size(pack, "Politics/site")
    assert 650 <= n <= 950
    verdict = judge_on_validation(load_pins(), pack, _flip(pack, "Politics/site", worse=round(0.015 * n)))
    assert not verdict.holds
    assert len(verdict.failing) == 1 and verdict.failing[0].startswith("Politics/site: ")
    assert "not ruled out" in verdict.failing[0] or "regressed by" in verdict.failing[0]
    assert verdict.worst_upper > 0.02


def test_a_three_point_drop_on_500_rows_vetoes_the_epoch(pack):
    pins = load_pins()
    sizes = {p.name: int(p.mask(pack).sum()) for p in pins.pins}
    name = min(sizes, key=lambda k: abs(sizes[k] - 500))
    verdict = judge_on_validation(pins, pack, _flip(pack, name, worse=round(0.03 * sizes[name])))
    assert not verdict.holds and verdict.failing[0].startswith(f"{name}: regressed by")


def test_a_repaired_target_and_a_small_segments_wobble_hold(pack):
    """Video Gaming/app made right where the champion was wrong; 2 rows lost on a ~130-row segment."""
    repaired = _flip(pack, "Video Gaming/app", worse=0, better=5)
    wobble = _flip(pack.with_columns(pl.Series("champion", repaired)), "Holidays/site", worse=2, seed=1)
    assert 90 <= _size(pack, "Holidays/site") <= 200
    verdict = judge_on_validation(load_pins(), pack, wobble)
    assert verdict.holds, verdict.failing
