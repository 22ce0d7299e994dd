"""IAB content categories -> tier-1 vertical, and brand-safety domain lists.

The shipped table (`reference/iab_content_tier1.csv`, CC BY 3.0 IAB Tech Lab, see `reference/NOTICE`;
built by scripts/build_reference.py) maps every Content Taxonomy 1.0 code (`IAB9-30`, tier 1 and 2) and
every 2.x/3.x id (`680`) to a 3.1 tier-1 vertical, plus `News` (Content 1.0 IAB12 and 2.x News and
Politics, which 3.x dropped), or to `Unknown` for the 2.x ids that are not about a topic (content type,
channel, format, source, language, geography) and IAB24 Uncategorized.

Its `generator` column marks the rows the scenario generator draws codes from, frozen (see
`generator_codes`): adding rows must not change a generated pack's bytes.
"""

import csv
import functools
from pathlib import Path

REFERENCE = Path(__file__).parent / "reference"
SENSITIVE = "Sensitive Topics"
UNKNOWN = "Unknown"


@functools.cache
def table_rows() -> tuple[tuple[str, str, str, bool], ...]:
    """(taxonomy "1.0" or "2.x-3.x", code, tier-1 vertical, drawn by the generator) for every row of the table."""
    with (REFERENCE / "iab_content_tier1.csv").open(encoding="utf-8") as f:
        return tuple((r["taxonomy"], r["code"], r["tier1"], r["generator"] == "1") for r in csv.DictReader(f))


@functools.cache
def tier1_lookup() -> dict[str, str]:
    """Keys are `1.0|CODE` or `3|ID`; values are tier-1 vertical names. Non-topical codes (mapped to
    Unknown) are left out: they resolve to no vertical, so a topical code beside them decides."""
    return {f"{'1.0' if taxonomy == '1.0' else '3'}|{code}": tier1
            for taxonomy, code, tier1, _ in table_rows() if tier1 != UNKNOWN}


@functools.cache
def generator_codes() -> dict[str, tuple[list[str], list[str]]]:
    """Per vertical: (Content 1.0 codes, Content 2.x/3.x ids) the generator draws from, in table order.

    Only the rows flagged `generator` (the whole table as it was before issue 16 added IAB12 News, IAB7
    and the 2.x ids), so generated packs, the default model's training data, stay byte-identical
    (tests/unit/scenario_data/test_taxonomy.py pins a digest); `AB7`, upstream's misspelling of IAB7,
    stays among them for that reason, and still resolves."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for taxonomy, code, tier1, drawn in table_rows():
        if drawn:
            legacy, modern = out.setdefault(tier1, ([], []))
            (legacy if taxonomy == "1.0" else modern).append(code)
    return out


@functools.cache
def verticals() -> tuple[str, ...]:
    """The verticals of the prompt vocabulary, sorted, plus `Unknown`: those the generator draws.

    The default model's tokenizer is trained on this vocabulary (modelsmith.prompt), and its build key
    does not hash it, so it is frozen with the generator's codes: `News` reaches the default model as
    an unseen word (it never saw such a row). `all_verticals` has every vertical a request resolves to."""
    return tuple(sorted(generator_codes())) + (UNKNOWN,)


@functools.cache
def all_verticals() -> tuple[str, ...]:
    """Every tier-1 vertical a request can resolve to, sorted, plus `Unknown` (no resolvable category)."""
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
