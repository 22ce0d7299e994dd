"""Derive the compact IAB reference tables that Modelsmith ships from the IAB Tech Lab taxonomies.

Run once by a maintainer against a checkout of the IAB Taxonomies repo (or `../shared/realdata/taxonomy`);
the output under `scenario_data/reference/` is committed with its CC BY 3.0 notice.

    python scripts/build_reference.py ../shared/realdata/taxonomy

Every Content 1.0 code (tier 1 and 2) and every Content 2.x/3.x id maps to a tier-1 vertical:

- 3.x ids: their 3.1 tier-1 (3.1 wins where 2.2 and 3.1 share an id);
- 2.x ids that 3.x dropped: `News and Politics` -> News (3.x split it into Politics, Crime, ...; what is
  left is news), `Events and Attractions` -> Events, `Brand Suitability and Risk` (GARM risk tiers, set
  only on content in a sensitive category) -> Sensitive Topics; others take their parent's 3.1 tier-1
  (Movies -> Entertainment, talk radio -> Genres); the non-topical dimensions (Content Type, Channel,
  Media Format, Source, Language, Source Geo) map to `Unknown`: they say what form the content takes or
  where it comes from, not what it is about, so a request with a topical code too takes that code's vertical;
- 1.0 codes: the tier-1 of the 2.0 node upstream maps them to; a tier-1 code takes its children's majority
  vertical (upstream maps those to "content type" nodes); LEGACY_OVERRIDES for the codes upstream leaves
  unmapped or maps to a non-topical node.

The `generator` column is 1 for the rows `scenario_data.generator` draws category codes from, frozen as
they were before issue 16 (the table then had 1,090 rows): the generated scenario packs, and so the
default model, must not change when the table grows. This script keeps the flags of the table it
replaces and refuses to change the vertical of a flagged row.
"""

import csv
import sys
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "scenario_data" / "reference"
UNKNOWN = "Unknown"  # scenario_data.taxonomy.UNKNOWN
SENSITIVE = "Sensitive Topics"
NEWS = "News"
RENAMED_2X = {"News and Politics": NEWS, "Events and Attractions": "Events", "Brand Suitability and Risk": SENSITIVE}
NON_TOPICAL_2X = {"Content Type", "Content Channel", "Content Media Format", "Content Source", "Content Language",
                  "Content Source Geo"}
BRAND_SUITABILITY_ROOT = "MRkz4Q"  # its 2.2 row leaves the tier-1 column empty
LEGACY_OVERRIDES = {
    "IAB7": "Healthy Living",  # upstream's mapping spells it "AB7" (kept as an alias) and maps it to 223 Healthy Living
    "IAB11-1": "Politics",  # Immigration: upstream maps it to 2.x News and Politics, which 3.x splits
    "IAB11-3": "Politics",  # U.S. Government Resources: upstream maps it to a Content Source Geo node
    "IAB11-5": "Politics",  # Commentary (under Law, Gov't & Politics): as IAB11-1
    "IAB14-8": "Family and Relationships",  # Ethnic Specific: upstream names the tier-1 but no node
    "IAB24": UNKNOWN,  # Uncategorized
}


def _tsv_rows(path: Path) -> list[list[str]]:
    """A taxonomy TSV's rows after its two header rows, as stripped cells."""
    return [[c.strip() for c in line.split("\t")] for line in path.read_text(encoding="utf-8").splitlines()[2:]]


def main(taxonomy_dir: Path) -> None:
    flat = list(csv.DictReader((taxonomy_dir / "content_taxonomy_3.1_flat.csv").open(encoding="utf-8")))
    tier1_of_id = {r["unique_id"]: r["tier1"] for r in flat}
    tier1_names = sorted({r["tier1"] for r in flat if not r["parent_id"]})
    # Content 2.2 ids (cattax 6) not in 3.1.
    for cols in _tsv_rows(taxonomy_dir / "Content_Taxonomy_2.2.tsv"):
        if len(cols) < 4 or not cols[0] or cols[0] in tier1_of_id:
            continue
        uid, parent, tier1 = cols[0], cols[1], cols[3]
        if uid == BRAND_SUITABILITY_ROOT:
            tier1 = "Brand Suitability and Risk"
        if tier1 in tier1_names:
            tier1_of_id[uid] = tier1
        elif tier1 in RENAMED_2X:
            tier1_of_id[uid] = RENAMED_2X[tier1]
        elif parent in tier1_of_id and tier1_of_id[parent] in tier1_names:
            tier1_of_id[uid] = tier1_of_id[parent]
        elif tier1 in NON_TOPICAL_2X:
            tier1_of_id[uid] = UNKNOWN
        else:
            raise SystemExit(f"Content 2.2 id {uid} ({tier1!r}): no rule maps it")
    verticals = set(tier1_names) | {NEWS}

    mapping = list(csv.DictReader((taxonomy_dir / "Content_1.0_to_Content_2.0.tsv").open(encoding="utf-8"), delimiter="\t"))
    legacy: dict[str, str] = {}
    for m in mapping:
        code, target = m["Content 1.0 Unique ID"].strip(), m["Content 2.0 Unique ID"].strip()
        tier1 = tier1_of_id.get(target, "")
        if tier1 in verticals:
            legacy[code] = tier1
    # Tier-1 legacy codes map to "content type" nodes upstream; take their children's majority 3.1 vertical instead.
    for code in {m["Content 1.0 Unique ID"].strip() for m in mapping if "-" not in m["Content 1.0 Unique ID"]}:
        children = Counter(v for k, v in legacy.items() if k.startswith(code + "-") and v in tier1_names)
        if children:
            legacy[code] = children.most_common(1)[0][0]
    for code in ("IAB25", "IAB26"):  # brand-safety codes: non-standard and illegal content
        for k in {m["Content 1.0 Unique ID"].strip() for m in mapping}:
            if k == code or k.startswith(code + "-"):
                legacy[k] = SENSITIVE
    legacy.update(LEGACY_OVERRIDES)

    rows = [("1.0", k, v) for k, v in sorted(legacy.items())]
    rows += [("2.x-3.x", k, v) for k, v in sorted(tier1_of_id.items())]
    flagged = _generator_rows(OUT / "iab_content_tier1.csv")
    changed = [(t, c, flagged[(t, c)], v) for t, c, v in rows if (t, c) in flagged and flagged[(t, c)] != v]
    missing = set(flagged) - {(t, c) for t, c, _ in rows}
    if changed or missing:
        raise SystemExit(f"rows the generator draws would change: {changed[:5]} missing {sorted(missing)[:5]}")

    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "iab_content_tier1.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["taxonomy", "code", "tier1", "generator"])
        w.writerows((t, c, v, int((t, c) in flagged)) for t, c, v in rows)
    with (OUT / "iab_sensitive_topics.csv").open("w", encoding="utf-8", newline="") as f:
        f.write((taxonomy_dir / "sensitive_topics_3.1.csv").read_text(encoding="utf-8"))
    print(f"{len(rows)} codes over {len(verticals)} tier-1 verticals ({len(flagged)} drawn by the generator) -> {OUT}")


def _generator_rows(table: Path) -> dict[tuple[str, str], str]:
    """(taxonomy, code) -> tier-1 of the rows the generator draws: the flagged rows of the shipped table
    (every row of a table from before the `generator` column)."""
    with table.open(encoding="utf-8") as f:
        return {(r["taxonomy"], r["code"]): r["tier1"] for r in csv.DictReader(f) if r.get("generator", "1") == "1"}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
