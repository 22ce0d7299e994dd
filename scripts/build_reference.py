"""Derive the compact IAB reference tables that Modelsmith ships from the IAB Tech Lab taxonomies.

Run once by a maintainer against a checkout of the IAB Taxonomies repo (or `../shared/realdata/taxonomy`);
the output under `scenario_data/reference/` is committed with its CC BY 3.0 notice.

    python scripts/build_reference.py ../shared/realdata/taxonomy
"""

import csv
import sys
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "scenario_data" / "reference"


def main(taxonomy_dir: Path) -> None:
    flat = list(csv.DictReader((taxonomy_dir / "content_taxonomy_3.1_flat.csv").open(encoding="utf-8")))
    tier1_of_id = {r["unique_id"]: r["tier1"] for r in flat}
    # Content 2.2 ids (cattax 6) not in 3.1: add them from the 2.2 file (2 header rows, tab separated).
    lines = (taxonomy_dir / "Content_Taxonomy_2.2.tsv").read_text(encoding="utf-8").splitlines()[2:]
    for line in lines:
        cols = line.split("\t")
        if len(cols) >= 4 and cols[0].strip():
            tier1_of_id.setdefault(cols[0].strip(), cols[3].strip())
    tier1_names = sorted({r["tier1"] for r in flat if not r["parent_id"]})

    rows: list[tuple[str, str, str]] = []
    mapping = list(csv.DictReader((taxonomy_dir / "Content_1.0_to_Content_2.0.tsv").open(encoding="utf-8"), delimiter="\t"))
    legacy: dict[str, str] = {}
    for m in mapping:
        code, target = m["Content 1.0 Unique ID"].strip(), m["Content 2.0 Unique ID"].strip()
        tier1 = tier1_of_id.get(target, "")
        if tier1 in tier1_names:
            legacy[code] = tier1
    # Tier-1 legacy codes map to "content type" nodes upstream; take their children's majority vertical instead.
    for code in {m["Content 1.0 Unique ID"].strip() for m in mapping if "-" not in m["Content 1.0 Unique ID"]}:
        children = Counter(v for k, v in legacy.items() if k.startswith(code + "-"))
        if children:
            legacy[code] = children.most_common(1)[0][0]
    for code in ("IAB25", "IAB26"):  # brand-safety codes: non-standard and illegal content
        for k in {m["Content 1.0 Unique ID"].strip() for m in mapping}:
            if k == code or k.startswith(code + "-"):
                legacy[k] = "Sensitive Topics"
    rows += [("1.0", k, v) for k, v in sorted(legacy.items())]
    rows += [("2.x-3.x", k, v) for k, v in sorted(tier1_of_id.items()) if v in tier1_names]

    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "iab_content_tier1.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["taxonomy", "code", "tier1"])
        w.writerows(rows)
    with (OUT / "iab_sensitive_topics.csv").open("w", encoding="utf-8", newline="") as f:
        f.write((taxonomy_dir / "sensitive_topics_3.1.csv").read_text(encoding="utf-8"))
    print(f"{len(rows)} codes over {len(tier1_names)} tier-1 verticals -> {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
