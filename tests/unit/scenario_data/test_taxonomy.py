"""The whole IAB taxonomy maps to a vertical, and the generator's codes stay frozen while the table grows."""

import csv
import hashlib
import json
from pathlib import Path

import pytest

from scenario_data.generator import dumps, generate_requests
from scenario_data.ingest import ingest_paths
from scenario_data.taxonomy import (REFERENCE, SENSITIVE, UNKNOWN, all_verticals, generator_codes, table_rows,
                                    tier1_lookup, verticals)

# The vertical names the default model's prompt vocabulary holds (modelsmith.prompt): frozen, as its
# tokenizer is trained on them and its build key does not hash them.
PROMPT_VERTICALS = (
    "Attractions", "Automotive", "Books and Literature", "Business and Finance", "Careers", "Communication", "Crime",
    "Disasters", "Education", "Entertainment", "Events", "Family and Relationships", "Fine Art", "Food & Drink",
    "Genres", "Healthy Living", "Hobbies & Interests", "Holidays", "Home & Garden", "Law", "Medical Health",
    "Personal Celebrations & Life Events", "Personal Finance", "Pets", "Politics", "Pop Culture", "Real Estate",
    "Religion & Spirituality", "Science", "Sensitive Topics", "Shopping", "Sports", "Style & Fashion",
    "Technology & Computing", "Travel", "Video Gaming", "War and Conflicts", "Unknown",
)
# sha256 of the generated requests (one JSON line each, as `dumps` writes them), measured before issue 16
# grew the table; a change here changes every scenario pack and the default model's training data.
GENERATED_DIGESTS = {
    0: "eacc4bab8fa1b67aa3f65fc62b04023f8bc09c3a18d41e3c2ac1da370ffbcc76",
    1: "70367e2b03dda1f4cf8026fde8a8abf759613f6fdfd8a40f471fef9952d970da",
}
NON_TOPICAL_2X = {"Content Type", "Content Channel", "Content Media Format", "Content Source", "Content Language",
                  "Content Source Geo"}


def _table() -> dict[tuple[str, str], str]:
    return {(t, c): v for t, c, v, _ in table_rows()}


def _tsv_ids(path: Path) -> dict[str, str]:
    """Unique id -> tier-1 name of a Content 2.x/3.x TSV (two header rows)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines()[2:]:
        cols = [c.strip() for c in line.split("\t")]
        if len(cols) >= 4 and cols[0]:
            out[cols[0]] = cols[3]
    return out


def test_every_content_1_0_code_maps_to_a_vertical(realdata: Path):
    table = _table()
    rows = list(csv.DictReader((realdata / "taxonomy" / "iab_content_1.0_categories.csv").open(encoding="utf-8")))
    assert len(rows) == 392 and {r["tier"] for r in rows} == {"1", "2"}
    unmapped = [r["code"] for r in rows if ("1.0", r["code"]) not in table]
    assert unmapped == []
    for r in rows:
        vertical = table[("1.0", r["code"])]
        assert vertical in all_verticals(), (r["code"], vertical)
        if r["code"] != "IAB24":  # Uncategorized: the one 1.0 code that names no topic
            assert tier1_lookup()[f"1.0|{r['code']}"] == vertical != UNKNOWN


def test_news_is_a_vertical_and_iab12_resolves_to_it(tmp_path: Path):
    table = _table()
    assert {table[("1.0", c)] for c in ("IAB12", "IAB12-1", "IAB12-2", "IAB12-3")} == {"News"}
    assert {table[("2.x-3.x", i)] for i in ("379", "382", "384", "385")} == {"News"}
    assert table[("1.0", "IAB7")] == table[("1.0", "AB7")] == "Healthy Living"  # the upstream typo stays an alias
    assert "News" in all_verticals()
    lines = [{"id": "news-1", "site": {"cat": ["IAB12"]}}, {"id": "news-2", "site": {"cat": ["IAB12-3"]}},
             {"id": "news-3", "site": {"cat": ["379"], "cattax": 6}},
             # a non-topical id (Content Type: Review) before a topical one: the topical one decides
             {"id": "sports", "site": {"cat": ["1021", "483"], "cattax": 7}},
             {"id": "none", "site": {"cat": ["1021"], "cattax": 7}}]
    path = tmp_path / "cats.jsonl"
    imp = [{"id": "1", "banner": {"w": 300, "h": 250}}]
    path.write_text("".join(json.dumps({**r, "imp": imp}) + "\n" for r in lines))
    features = ingest_paths([path]).features
    got = dict(zip(features["request_id"], features["vertical"], strict=True))
    assert got == {"news-1": "News", "news-2": "News", "news-3": "News", "sports": table[("2.x-3.x", "483")],
                   "none": UNKNOWN}
    assert got["sports"] == "Sports"


@pytest.mark.parametrize("name", ["Content_Taxonomy_2.2.tsv", "Content_Taxonomy_3.0.tsv", "Content_Taxonomy_3.1.tsv"])
def test_every_content_2_x_and_3_x_id_maps_to_a_vertical(realdata: Path, name: str):
    table = _table()
    ids = _tsv_ids(realdata / "taxonomy" / name)
    assert len(ids) > 700
    assert [i for i in ids if ("2.x-3.x", i) not in table] == []
    for uid, upstream_tier1 in ids.items():
        vertical = table[("2.x-3.x", uid)]
        assert vertical in all_verticals(), (uid, vertical)
        # Unknown is kept for the non-topical dimensions (what form, from where, in which language).
        assert (vertical == UNKNOWN) == (upstream_tier1 in NON_TOPICAL_2X), (name, uid, upstream_tier1, vertical)
    if name == "Content_Taxonomy_3.1.tsv":
        for uid, upstream_tier1 in ids.items():
            assert table[("2.x-3.x", uid)] == upstream_tier1, uid  # 3.1 ids keep their own tier-1


def test_sensitive_codes_stay_sensitive(realdata: Path):
    table = _table()
    for code in ("IAB25", "IAB25-3", "IAB26", "IAB26-4"):
        assert table[("1.0", code)] == SENSITIVE
    for row in csv.DictReader((realdata / "taxonomy" / "sensitive_topics_3.1.csv").open(encoding="utf-8")):
        uid = row.get("unique_id") or next(iter(row.values()))
        assert table[("2.x-3.x", uid)] == SENSITIVE, uid


def test_generated_requests_are_byte_identical_to_before_the_table_grew():
    for seed, digest in GENERATED_DIGESTS.items():
        text = "\n".join(dumps(r) for r in generate_requests(2000, seed))
        assert hashlib.sha256(text.encode()).hexdigest() == digest, seed


def test_a_gzip_pack_is_byte_identical_for_the_same_seed(tmp_path: Path):
    """The gzip header holds no time and no (temporary) file name."""
    from scenario_data.generator import write_pack
    from scenario_data.policy import shipped_policy

    a = write_pack(tmp_path / "a.jsonl.gz", 50, 7, shipped_policy(1)).read_bytes()
    b = write_pack(tmp_path / "b" / "b.jsonl.gz", 50, 7, shipped_policy(1)).read_bytes()
    assert a == b


def test_the_generator_draws_only_its_frozen_rows_and_they_resolve_to_their_vertical():
    rows = table_rows()
    drawn = [(t, c, v) for t, c, v, g in rows if g]
    assert len(drawn) == 1090  # the whole table before issue 16
    assert not any(g for t, c, v, g in rows if c.startswith("IAB12") or v in ("News", UNKNOWN))
    lookup = tier1_lookup()
    for t, c, v in drawn:
        assert lookup[f"{'1.0' if t == '1.0' else '3'}|{c}"] == v
    assert sum(len(a) + len(b) for a, b in generator_codes().values()) == 1090


def test_the_prompt_vocabulary_of_verticals_is_frozen():
    assert verticals() == PROMPT_VERTICALS
    assert set(all_verticals()) == set(PROMPT_VERTICALS) | {"News"}


def test_the_table_keeps_its_licence_notice():
    notice = (REFERENCE / "NOTICE").read_text(encoding="utf-8")
    assert "Creative Commons Attribution 3.0" in notice and "IAB Tech Lab Content Taxonomy" in notice
    assert "iab_content_tier1.csv" in notice
