"""The benchmark delta of a repair cycle: every pin before (champion) and after (candidate).

A target pin (one the cycle was opened for) is `repaired` when the candidate passes it and its
accuracy is at least the floor (a repair is claimed on the estimate, not on the absence of
evidence against it). Any other pin is `flagged` when the candidate fails it with evidence (see
`modelsmith.evaluate`: a significant drop beyond its margin against the champion, a floor it is
significantly below, a latency budget) where the champion passed; `inconclusive` when the segment
cannot vouch for it (too small to detect its `max_drop`, or under its floor without evidence),
which the verdict names but does not refuse on; `ok` otherwise. The cycle offers the candidate for
promotion only when every target is repaired and nothing is flagged.
"""

import json
from pathlib import Path

import polars as pl

from modelsmith.store import PinRunFiles


def benchmark_delta_for(before_run: str | Path, after_run: str | Path, targets: list[str]) -> dict:
    before_files, after_files = PinRunFiles(Path(before_run)), PinRunFiles(Path(after_run))
    before = pl.read_parquet(before_files.metrics)
    after = pl.read_parquet(after_files.metrics)
    b = {r["pin"]: r for r in before.iter_rows(named=True)}
    rows = []
    for a in after.iter_rows(named=True):
        prev = b.get(a["pin"])
        if prev is None:
            continue
        target = a["pin"] in targets
        reasons = a["reasons"]
        if target:
            status = "repaired" if a["passed"] and a["accuracy"] >= a["accuracy_floor"] else "not repaired"
            if status == "not repaired" and not reasons:  # it passed without evidence against it, yet is under its floor
                reasons = (f"accuracy {a['accuracy']:.4f} below floor {a['accuracy_floor']} (a repair is claimed on the "
                           f"estimate; {a.get('notes') or 'no significant evidence either way'})")
        elif a["regressed"] or (prev["passed"] and not a["passed"]):
            status = "flagged"
        elif a.get("inconclusive"):
            status = "inconclusive"
        else:
            status = "ok"
        rows.append({
            "pin": a["pin"], "target": target, "rows": a["rows"],
            "before": prev["accuracy"], "before_ci_low": prev["ci_low"], "before_ci_high": prev["ci_high"],
            "after": a["accuracy"], "after_ci_low": a["ci_low"], "after_ci_high": a["ci_high"],
            "delta": a["accuracy"] - prev["accuracy"], "p_value": a["p_value"], "test": a["test"],
            "p50_before_ms": prev["latency_p50_ms"], "p50_after_ms": a["latency_p50_ms"],
            "p99_before_ms": prev["latency_p99_ms"], "p99_after_ms": a["latency_p99_ms"],
            "composite_before": prev["composite"], "composite_after": a["composite"],
            "p_adjusted": a.get("p_adjusted"), "drop_upper": a.get("drop_upper"),
            "min_detectable_drop": a.get("min_detectable_drop"),
            "status": status, "reasons": reasons, "notes": a.get("notes") or "",
        })
    by = {s: [r["pin"] for r in rows if r["status"] == s]
          for s in ("repaired", "not repaired", "flagged", "inconclusive")}
    measured = {r["pin"] for r in rows}
    by["not repaired"] += [t for t in targets if t not in measured]  # a target the candidate was not pinned on
    after_summary = json.loads(after_files.summary.read_text())
    before_summary = json.loads(before_files.summary.read_text())
    return {"before_run": str(before_run), "after_run": str(after_run), "targets": targets,
            "candidate": after_summary["model_version"], "champion": before_summary["model_version"],
            "composite_before": before_summary["composite"], "composite_after": after_summary["composite"],
            "repaired": by["repaired"], "not_repaired": by["not repaired"], "flagged": by["flagged"],
            "inconclusive": by["inconclusive"],
            "offer_for_promotion": bool(targets) and not by["not repaired"] and not by["flagged"],
            "pins": rows}


def blocking_pins(delta: dict) -> list[dict]:
    """The pins that keep a candidate from being offered (targets not repaired, others flagged), with their numbers."""
    keep = ("pin", "status", "rows", "before", "after", "delta", "p_adjusted", "reasons")
    rows = [{k: p.get(k) for k in keep} for p in delta["pins"] if p["status"] in ("not repaired", "flagged")]
    measured = {p["pin"] for p in delta["pins"]}
    rows += [{"pin": t, "status": "not repaired", "rows": 0, "before": None, "after": None, "delta": None,
              "p_adjusted": None, "reasons": "the candidate was not pinned on it"}
             for t in delta["not_repaired"] if t not in measured]
    return rows


def verdict_sentence(delta: dict) -> str:
    """The cycle's verdict in one sentence, each blocking pin with its numbers and reasons.

    The same words in the `evidence_bundle` metadata, its `candidate_offered` check and the CLI.
    """
    if delta["offer_for_promotion"]:
        return (f"offered for promotion: repaired {', '.join(delta['repaired'])}; nothing flagged"
                + (f"; {len(delta['inconclusive'])} pins inconclusive (too small to vouch for)"
                   if delta["inconclusive"] else ""))
    parts = []
    for status in ("not repaired", "flagged"):
        pins = [p for p in blocking_pins(delta) if p["status"] == status]
        if pins:
            parts.append(f"{status}: " + "; ".join(
                f"{p['pin']} ({p['before']:.3f} -> {p['after']:.3f}: {p['reasons'] or 'no reason recorded'})"
                if p["after"] is not None else f"{p['pin']} ({p['reasons']})" for p in pins))
    return "not offered: " + ("; ".join(parts) or "no regressed pin to repair")
