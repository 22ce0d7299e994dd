"""Every accepted format gives the same rows; the fast (polars) and reference paths agree; mutants never crash."""

import copy
import gzip
import json
import random
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scenario_data.features import FEATURE_SCHEMA
from scenario_data.generator import generate_requests
from scenario_data.chunks import Chunk
from scenario_data.ingest import _slow_path, ingest_chunk, ingest_paths
from scenario_data.openrtb import RequestError, parse_json, validate_request

REQUESTS = generate_requests(200, seed=3)


def _lines(requests: list[dict]) -> list[bytes]:
    return [json.dumps(r).encode() for r in requests]


def _write_all_formats(tmp: Path, requests: list[dict]) -> dict[str, Path]:
    lines = _lines(requests)
    paths = {
        "jsonl": tmp / "a.jsonl",
        "gz": tmp / "a.jsonl.gz",
        "array": tmp / "a.json",
        "parquet": tmp / "a.parquet",
    }
    paths["jsonl"].write_bytes(b"\n".join(lines) + b"\n")
    paths["gz"].write_bytes(gzip.compress(b"\n".join(lines)))
    paths["array"].write_text(json.dumps(requests, indent=1))
    pl.DataFrame({"request": [line.decode() for line in lines]}).write_parquet(paths["parquet"])
    one = tmp / "single"
    one.mkdir()
    for i, r in enumerate(requests):
        (one / f"{i:04d}.json").write_text(json.dumps(r, indent=2))
    paths["dir"] = one
    return paths


def test_all_formats_give_identical_feature_rows(tmp_path):
    paths = _write_all_formats(tmp_path, REQUESTS)
    frames = {}
    for kind, path in paths.items():
        result = ingest_paths([path])
        assert result.summary()["requests_in"] == len(REQUESTS)
        assert result.quarantined == 0
        frames[kind] = result.features.drop("source_file", "source_line").sort("row_id")
    for kind, frame in frames.items():
        assert frame.equals(frames["jsonl"]), kind
    assert frames["jsonl"].height == sum(len(r["imp"]) for r in REQUESTS)


def test_fast_and_reference_paths_give_the_same_features():
    chunk = Chunk("mem", _lines(REQUESTS), [f"line {i + 1}" for i in range(len(REQUESTS))])
    fast, fq = ingest_chunk(chunk, {})
    slow, sq = _slow_path(chunk, {})
    assert fq.height == sq.height == 0
    assert fast.equals(slow)


def test_a_bad_line_sends_its_chunk_to_the_reference_path_and_loses_nothing(tmp_path):
    lines = _lines(REQUESTS[:50])
    lines[10] = b'{"id": "x", "imp": [{"id": "1", "banner": {"w": "wide", "h": 50}}]}'
    lines[20] = b"{not json"
    lines[30] = b"\xff\xfe not utf-8"
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines))
    result = ingest_paths([path])
    assert (result.requests_in, result.accepted, result.quarantined) == (50, 47, 3)
    reasons = dict(zip(result.quarantine["location"], result.quarantine["reason"], strict=True))
    assert reasons["line 11"].startswith("imp[0].banner.w: must be an integer")
    assert "not valid JSON" in reasons["line 21"] and "line 1 column 2" in reasons["line 21"]
    assert "not UTF-8" in reasons["line 31"]
    assert result.quarantine.filter(pl.col("location") == "line 21")["raw"][0] == b"{not json"


def _big_chunk_with(bad: dict[int, bytes], n: int = 2000) -> Chunk:
    lines = _lines(generate_requests(n, seed=5))
    for i, body in bad.items():
        lines[i] = body
    return Chunk("big", lines, [f"line {i + 1}" for i in range(n)])


def test_bad_lines_in_a_big_chunk_are_found_without_halving_and_agree_with_the_reference(monkeypatch):
    """Arrow refuses the whole chunk; the lines it cannot take, or the one its error names, go to the
    reference validator alone, and the runs between them back to the fast path."""
    import scenario_data.ingest as ingest

    chunk = _big_chunk_with({
        100: b'{"id": "x", "imp": [{"id": "1", "banner": {"w": "wide", "h": 50}}]}',  # a wrong type: Arrow names it
        500: b"{not json",  # Arrow names it too
        900: b"\xff\xfe not utf-8",  # these two no JSON-object reader takes
        1300: b"null",
        1700: b'{"id": "y", "tmax": -1, "imp": [{"id": "1", "banner": {"w": 1, "h": 1}}], "site": {"id": "s"}}',
    })
    seen: list[int] = []
    reference = ingest._slow_path

    def counting(c, domain_lists):
        seen.append(len(c.bodies))
        return reference(c, domain_lists)

    monkeypatch.setattr(ingest, "_slow_path", counting)
    features, quarantine = ingest_chunk(chunk, {})
    assert seen == [1, 1, 1, 1]  # the four lines Arrow cannot take; tmax < 0 parses, and the screen flags it
    assert quarantine["location"].to_list() == ["line 101", "line 501", "line 901", "line 1301", "line 1701"]
    slow_features, slow_quarantine = reference(chunk, {})
    assert features.equals(slow_features)
    assert quarantine.equals(slow_quarantine)


def test_a_chunk_bad_throughout_still_gives_every_line_its_verdict():
    """Every line refused for a type: found one at a time up to MAX_LOCATE_DEPTH, then by halving."""
    body = b'{"id": "r", "tmax": "soon", "imp": [{"id": "1", "banner": {"w": 1, "h": 1}}], "site": {"id": "s"}}'
    chunk = _big_chunk_with({i: body for i in range(2000)})
    features, quarantine = ingest_chunk(chunk, {})
    assert features.height == 0 and quarantine.height == 2000
    assert set(quarantine["reason"].str.split(":").list.first()) == {"tmax"}


def test_alternating_bad_lines_keep_input_order():
    chunk = _big_chunk_with({i: b"{not json" for i in range(0, 2000, 2)})
    features, quarantine = ingest_chunk(chunk, {})
    assert quarantine["location"].to_list() == [f"line {i + 1}" for i in range(0, 2000, 2)]
    assert features["source_line"].unique(maintain_order=True).to_list() == list(range(2, 2001, 2))


def test_25_and_26_spellings_read_the_same():
    base = {"id": "r", "imp": [{"id": "1", "video": {"mimes": ["video/mp4"], "w": 640, "h": 480}}], "site": {"id": "s"}}
    v25, v26 = copy.deepcopy(base), copy.deepcopy(base)
    v25["regs"] = {"ext": {"gdpr": 1}}
    v25["imp"][0]["video"]["placement"] = 1
    v25["imp"][0]["ext"] = {"prebid": {"is_rewarded_inventory": 1}}
    v25["source"] = {"ext": {"schain": {"nodes": [{"asi": "a.com"}]}}}
    v26["regs"] = {"gdpr": 1}
    v26["imp"][0]["video"]["plcmt"] = 1
    v26["imp"][0]["rwdd"] = 1
    v26["source"] = {"schain": {"nodes": [{"asi": "a.com"}]}}
    rows = [ingest_chunk(Chunk("m", [json.dumps(v).encode()], ["line 1"]), {})[0] for v in (v25, v26)]
    cols = ["gdpr", "video_placement", "rewarded", "schain_hops"]
    assert rows[0].select(cols).row(0) == rows[1].select(cols).row(0) == (1, "instream", True, 1)


@pytest.mark.parametrize(
    ("cat", "cattax", "vertical"),
    [(["IAB9-30"], None, "Video Gaming"), (["680"], 7, "Video Gaming"), (["IAB17"], 1, "Sports"),
     (["IAB25-3", "IAB19"], None, "Technology & Computing"), (["super-cat"], None, "Unknown")],
)
def test_vertical_from_either_taxonomy(cat, cattax, vertical):
    site = {"id": "s", "cat": cat, **({"cattax": cattax} if cattax else {})}
    req = {"id": "r", "imp": [{"id": "1", "banner": {"w": 1, "h": 1}}], "site": site}
    features, _ = ingest_chunk(Chunk("m", [json.dumps(req).encode()], ["line 1"]), {})
    assert features["vertical"][0] == vertical
    assert features["sensitive"][0] == cat[0].startswith("IAB25")


def test_domains_are_normalised_and_looked_up():
    req = {"id": "r", "imp": [{"id": "1", "banner": {"w": 1, "h": 1}}], "site": {"domain": "HTTPS://www.Bad.example:8080/x?y"}}
    features, _ = ingest_chunk(Chunk("m", [json.dumps(req).encode()], ["line 1"]), {"bad.example": "scam"})
    assert features.select("domain", "domain_list").row(0) == ("bad.example", "scam")


# -- mutation fuzzing: every mutant is accepted or quarantined, never a crash --------------------

def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                   st.text(max_size=5), st.just([]), st.just({}), st.lists(st.integers(), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), value=VALUES, delete=st.booleans())
def test_mutated_real_requests_are_accepted_or_quarantined(realdata, seed, value, delete):
    files = sorted((realdata / "openrtb").glob("*.json"))
    rng = random.Random(seed)
    doc = json.loads(rng.choice(files).read_bytes())
    paths = list(_paths(doc))[1:]
    target = rng.choice(paths)
    parent = doc
    for key in target[:-1]:
        parent = parent[key]
    if delete:
        del parent[target[-1]]
    else:
        parent[target[-1]] = value
    body = json.dumps(doc).encode()
    chunk = Chunk("fuzz", [body], ["line 1"])
    features, quarantine = ingest_chunk(chunk, {})
    assert quarantine.height in (0, 1)
    assert (features.height > 0) != (quarantine.height == 1)
    assert features.schema == FEATURE_SCHEMA
    try:
        validate_request(parse_json(body))
        reference_accepts = True
    except RequestError:
        reference_accepts = False
    assert reference_accepts == (quarantine.height == 0)
    # the chunked fast path and the per-line path agree on the same mutant
    slow_features, slow_quarantine = _slow_path(chunk, {})
    assert slow_quarantine.height == quarantine.height
    assert slow_features.equals(features)
