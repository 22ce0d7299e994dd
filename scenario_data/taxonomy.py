"""IAB content categories -> tier-1 vertical, and brand-safety domain lists.

The shipped table (`reference/iab_content_tier1.csv`, CC BY 3.0 IAB Tech Lab, see `reference/NOTICE`)
maps Content Taxonomy 1.0 codes (`IAB9-30`) and 2.x/3.x ids (`680`) to the 3.1 tier-1 vertical.
"""

import csv
import functools
from pathlib import Path

REFERENCE = Path(__file__).parent / "reference"
SENSITIVE = "Sensitive Topics"
UNKNOWN = "Unknown"


@functools.cache
def tier1_lookup() -> dict[str, str]:
    """Keys are `1.0|CODE` or `3|ID`; values are tier-1 vertical names."""
    out: dict[str, str] = {}
    with (REFERENCE / "iab_content_tier1.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            prefix = "1.0" if row["taxonomy"] == "1.0" else "3"
            out[f"{prefix}|{row['code']}"] = row["tier1"]
    return out


@functools.cache
def verticals() -> tuple[str, ...]:
    """All tier-1 verticals, sorted, plus `Unknown` for requests with no resolvable category."""
    return tuple(sorted(set(tier1_lookup().values()))) + (UNKNOWN,)


def load_domain_lists(paths: list[Path]) -> dict[str, str]:
    """Domain -> list name, from one-domain-per-line files (`#` comments); the list name is the file stem.

    A directory contributes every `*.txt` in it. The first list that names a domain wins.
    """
    out: dict[str, str] = {}
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files += sorted(p.glob("*.txt")) if p.is_dir() else [p]
    for file in files:
        name = file.name.split(".")[0].removesuffix("-nl")
        with file.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                d = line.strip().lower()
                if d and not d.startswith("#"):
                    out.setdefault(d.split()[-1], name)
    return out
