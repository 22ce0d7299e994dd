"""What goes into a repair cycle's evidence bundle: the files a reviewer reads and the signed predicates.

`assemble` gathers the cycle's artifacts (traces, diagnosis, lineage, delta), writes the reviewer's
page (`report.html`, plots inline as SVG) and the integrity record, and hands them with five
predicates to `modelsmith.attest.write_bundle`, which signs them (in-toto Statements in DSSE
envelopes) and fixes the bundle's digest. Predicates: the candidate's pin results (in-toto
test-result), the benchmark delta, the diagnosis, and the dataset and adapter builds (SLSA
Provenance v1).
"""

import html
import io
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import polars as pl

from modelsmith.attest import BUNDLE_FILE
from modelsmith.cycles import CycleRecord, read_cycle
from modelsmith.model_dir import Registry, directory_digest, file_sha256, short
from modelsmith.store import Home, read_json

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dagster", "torch", "transformers", "peft", "trl", "polars", "duckdb", "great-expectations", "cryptography",
            "anthropic")
TEST_RESULT = "https://in-toto.io/attestation/test-result/v0.1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
DELTA_PREDICATE = "https://modelsmith.dev/benchmark-delta/v1"
DIAGNOSIS_PREDICATE = "https://modelsmith.dev/diagnosis/v1"
BUILDER = "https://modelsmith.dev/builders/dagster"


def code_revision() -> dict:
    """The git revision of the code that ran, and whether the work tree had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        rev = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", False
    return {"revision": rev or "unknown (not a git checkout)", "dirty": dirty}


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _hardware() -> dict:
    info = {"machine": platform.machine(), "cpus": os.cpu_count() or 0, "cuda": "none"}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    import torch

    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    return info


def integrity(home: Path, cycle: CycleRecord, adapter: dict, run_ids: dict[str, str], started: str) -> dict:
    registry = Registry(home)
    champion = registry.get(cycle.model_version)
    base = registry.get(champion.base) if champion.kind == "adapter" else champion
    dataset = Home(home).dataset(cycle.cycle)
    lineage = read_json(dataset.lineage)
    return {
        "code": code_revision(), "packages": _versions(),
        "python": sys.version.split()[0], "platform": platform.platform(), "hardware": _hardware(),
        "dagster_runs": run_ids, "cycle": cycle.cycle,
        "digests": {"base_model": base.digest, "champion": champion.digest, "adapter": adapter["model_version"],
                    "adapter_files": directory_digest(Path(adapter["path"])),
                    "dataset_rows": file_sha256(dataset.rows), "dataset_merkle_root": lineage["root"],
                    "policy": cycle.policy_digest, "scenarios": cycle.scenarios_digest},
        "started": started, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_signature": _model_signature(adapter),
    }


MODEL_SIGNING_KEY_FILE = "model_signing_p256.pub"


def _model_signature(adapter: dict) -> dict | str:
    """Where the adapter's OpenSSF model-signing signature is, in the bundle and at home, and how to check it
    without Modelsmith: the bundle's `adapter/` copy carries `model.sig`, and the P-256 public key rides along."""
    sig = adapter.get("model_signature")
    if not sig:
        return "none: the adapter was trained before adapters were signed"
    return {"signature": "adapter/model.sig", "public_key": MODEL_SIGNING_KEY_FILE, "key_id": sig["key_id"],
            "format": sig["format"], "files": sig["files"], "signature_at_home": sig["signature"],
            "public_key_at_home": sig["public_key"],
            "verify": f"model_signing verify key --signature adapter/model.sig --public_key {MODEL_SIGNING_KEY_FILE} adapter"}


def diagnosis_markdown(d: dict) -> str:
    lines = [f"# Diagnosis of cycle {d['cycle']}", "", f"**Segments:** {', '.join(d['segments'])}", "",
             f"**Hypothesis:** {d['hypothesis']}", "", f"**Confidence:** {d['confidence']:.2f}", "",
             "| feature | values | error lift | attribution |", "|---|---|---|---|"]
    lines += [f"| {f['feature']} | {', '.join(map(str, f['values']))} | {f['error_lift']:.2f} | {f['attribution']:.3f} |"
              for f in d["features"]]
    s = d["synthesis"]
    lines += ["", f"**Synthesis:** {s['rows']} rows matching `{json.dumps(s['filters'])}`, replay ratio "
              f"{s['replay_ratio']}, near-miss share {s.get('contrast_share', 0)}"
              + (f", in-segment near misses from `{json.dumps(s['segment'])}`" if s.get("segment") else ""), "",
              f"**Recipe:** {' then '.join(d['recipe']['stages'])}", "",
              f"**Provenance:** critic {d['provenance']['critic']} ({d['provenance']['model']}), prompt "
              f"{d['provenance']['prompt_digest'][:16]}, input {d['provenance']['input_digest'][:16]}"
              + (f", fallback: {d['provenance']['fallback']}" if d["provenance"].get("fallback") else "")]
    return "\n".join(lines) + "\n"


def delta_markdown(delta: dict) -> str:
    lines = [f"# Benchmark delta: candidate {short(delta['candidate'])} vs champion {short(delta['champion'])}", "",
             f"**Verdict:** {'offered for promotion' if delta['offer_for_promotion'] else 'not offered'}; repaired: "
             f"{', '.join(delta['repaired']) or 'none'}; not repaired: {', '.join(delta['not_repaired']) or 'none'}; "
             f"flagged: {', '.join(delta['flagged']) or 'none'}; inconclusive: {len(delta.get('inconclusive', []))} "
             "(too small to detect their max_drop, or a drop neither shown nor ruled out)", "",
             f"Composite {delta['composite_before']:.4f} -> {delta['composite_after']:.4f}", "",
             "| pin | rows | before | after | delta | p (Holm) | p99 before ms | p99 after ms | status | why |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(delta["pins"], key=lambda p: p["delta"]):
        lines.append(f"| {p['pin']} | {p['rows']} | {p['before']:.4f} | {p['after']:.4f} | {p['delta']:+.4f} | {_p(p)} "
                     f"| {p['p99_before_ms']:.1f} | {p['p99_after_ms']:.1f} | {p['status']} | {_why(p)} |")
    return "\n".join(lines) + "\n"


def _p(p: dict) -> str:
    """The Holm-adjusted p of a pin's paired test (the raw p for runs scored before adjustment existed)."""
    value = p.get("p_adjusted", p.get("p_value"))
    return "–" if value is None else f"{value:.2g}"


def _why(p: dict) -> str:
    return (p.get("reasons") or "") if p["status"] in ("flagged", "not repaired") else (p.get("notes") or "")


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()[buf.getvalue().index("<svg"):]


def report_plots(delta: dict, history: pl.DataFrame) -> list[tuple[str, str]]:
    """(title, SVG) of the report's three plots: accuracy per pin, latency, the targets' pin history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (integer run axis)

    matplotlib.rcParams["svg.hashsalt"] = "modelsmith"  # stable element ids: the same inputs give the same bytes
    pins = sorted(delta["pins"], key=lambda p: (not p["target"], p["delta"]))[:30]
    shown = (f"all {len(pins)} pins" if len(pins) == len(delta["pins"]) else
             f"{len(pins)} of {len(delta['pins'])} pins: the targets, then the largest drops (every pin is in the table)")
    y = list(range(len(pins)))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(pins) + 1))
    for off, when, color in ((-0.15, "before", "#999999"), (0.15, "after", "#1f77b4")):
        acc = [p[when] for p in pins]
        err = [[a - p[f"{when}_ci_low"] for a, p in zip(acc, pins, strict=True)],
               [p[f"{when}_ci_high"] - a for a, p in zip(acc, pins, strict=True)]]
        ax.errorbar(acc, [v + off for v in y], xerr=err, fmt="o", ms=3, color=color, label=when)
    ax.set_yticks(y, [p["pin"] + (" *" if p["target"] else "") for p in pins], fontsize=7)
    ax.set_xlabel("accuracy (95% Wilson interval)")
    ax.legend(loc="lower left", fontsize=7)
    accuracy = _svg(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.scatter([p["p99_before_ms"] for p in delta["pins"]], [p["p99_after_ms"] for p in delta["pins"]], s=8)
    top = max([p["p99_before_ms"] for p in delta["pins"]] + [p["p99_after_ms"] for p in delta["pins"]] + [1.0])
    ax.plot([0, top], [0, top], color="#cccccc", lw=1)
    ax.set_xlabel("p99 latency before (ms)")
    ax.set_ylabel("p99 latency after (ms)")
    latency = _svg(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    runs_in_order = sorted(set(history["created"].to_list())) if history.height else []
    role = {delta["champion"]: "champion", delta["candidate"]: "candidate"}
    for (version, pin), runs in (history.group_by("model_version", "pin", maintain_order=True) if history.height else []):
        ax.plot([runs_in_order.index(c) + 1 for c in runs["created"]], runs["accuracy"].to_list(), marker="o",
                label=f"{role.get(version, 'earlier version')} {short(version)}: {pin}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("pin run, in the order they ran (1 = oldest)")
    ax.set_ylabel("accuracy")
    if history.height:
        ax.legend(fontsize=6)
    trend = _svg(fig)
    target = ", ".join(delta["targets"])
    return [(f"Accuracy per pin, before (grey) and after (blue), 95% intervals: {shown}; * = a target", accuracy),
            ("p99 latency per decision and pin, before vs after (on the diagonal: unchanged)", latency),
            (f"Pin history of {target}: every run of every version", trend)]


def report_html(delta: dict, diagnosis: dict, plots: list[tuple[str, str]], integrity_record: dict, review) -> str:
    from modelsmith.review import review_html

    verdict = "OFFERED FOR PROMOTION" if delta["offer_for_promotion"] else "NOT OFFERED"
    esc = html.escape
    rows = "".join(
        f"<tr class='{esc(p['status'].replace(' ', '-'))}'><td>{esc(p['pin'])}</td><td>{p['rows']}</td>"
        f"<td>{p['before']:.4f}</td><td>{p['after']:.4f}</td><td>{p['delta']:+.4f}</td>"
        f"<td>{_p(p)}</td><td>{p['p99_before_ms']:.1f}</td>"
        f"<td>{p['p99_after_ms']:.1f}</td><td>{esc(p['status'])}</td><td>{esc(_why(p))}</td></tr>"
        for p in sorted(delta["pins"], key=lambda p: p["delta"]))
    inconclusive = delta.get("inconclusive", [])
    plots = "".join(f"<h2>{esc(title)}</h2><figure>{svg}</figure>" for title, svg in plots)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Modelsmith evidence: cycle {esc(diagnosis['cycle'])}</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}table{{border-collapse:collapse;font-size:.85rem}}
td,th{{border:1px solid #ddd;padding:.2rem .5rem}}.flagged,.not-repaired{{background:#fdd}}.repaired{{background:#dfd}}.inconclusive{{background:#ffd}}</style>
</head><body>
<h1>Cycle {esc(diagnosis['cycle'])}: {verdict}</h1>
<p>Candidate <code>{esc(delta['candidate'])}</code> against champion <code>{esc(delta['champion'])}</code>.
Repaired: {esc(', '.join(delta['repaired']) or 'none')}. Not repaired: {esc(', '.join(delta['not_repaired']) or 'none')}.
Flagged: {esc(', '.join(delta['flagged']) or 'none')}. Composite {delta['composite_before']:.4f} &rarr; {delta['composite_after']:.4f}.</p>
<p>Inconclusive ({len(inconclusive)} pins: the segment is too small to detect its max_drop, or a drop was neither
shown nor ruled out; they neither refuse nor vouch for the candidate): {esc(', '.join(inconclusive) or 'none')}.
Failures need evidence: p-values are Holm-adjusted across the run's pins at the pin file's alpha.</p>
<p><strong>{esc(review.verdict)}</strong></p>
<h2>Diagnosis ({esc(diagnosis['provenance']['critic'])})</h2><p>{esc(diagnosis['hypothesis'])}</p>
{review_html(review)}
{plots}
<h2>Every pin</h2><table><tr><th>pin</th><th>rows</th><th>before</th><th>after</th><th>delta</th><th>p (Holm)</th>
<th>p99 before ms</th><th>p99 after ms</th><th>status</th><th>why</th></tr>{rows}</table>
<h2>Integrity</h2><pre>{esc(json.dumps(integrity_record, indent=2))}</pre>
</body></html>
"""


def predicates(home: Path, cycle: CycleRecord, diagnosis: dict, delta: dict, adapter: dict, candidate_run: dict,
               lineage: dict, integrity_record: dict) -> list[tuple[str, str, dict]]:
    runs = integrity_record["dagster_runs"]
    code = integrity_record["code"]
    code_dep = {"uri": f"git+modelsmith@{code['revision']}", "digest": {"gitCommit": code["revision"]},
                "annotations": {"dirty": code["dirty"]}}
    policy = read_json(Home(home).policy_record(cycle.policy_digest))
    policy_dep = {"uri": f"file://{policy['path']}", "digest": {"sha256": cycle.policy_digest}, "name": "policy"}
    registry = Registry(home)
    base = registry.get(registry.get(adapter["model_version"]).base)

    def run_details(asset: str) -> dict:
        return {"builder": {"id": BUILDER}, "metadata": {"invocationId": runs.get(asset, ""),
                                                         "startedOn": integrity_record["started"],
                                                         "finishedOn": integrity_record["finished"]}}

    failed = candidate_run["failed"]
    passed = [p["pin"] for p in delta["pins"] if p["pin"] not in failed]
    return [
        ("pins", TEST_RESULT, {"result": "PASSED" if not failed else "FAILED", "configuration": [
            {"name": "pins", "digest": {"sha256": candidate_run.get("pins_digest", "")}}],
            "passedTests": passed, "failedTests": failed, "warnedTests": delta["flagged"],
            "url": candidate_run.get("run_dir", "")}),
        ("benchmark_delta", DELTA_PREDICATE, {k: delta[k] for k in (
            "candidate", "champion", "targets", "repaired", "not_repaired", "flagged", "offer_for_promotion",
            "composite_before", "composite_after")} | {"inconclusive": delta.get("inconclusive", []),
                                                       "pins": delta["pins"]}),
        ("diagnosis", DIAGNOSIS_PREDICATE, diagnosis),
        ("dataset_provenance", SLSA_PROVENANCE, {
            "buildDefinition": {
                "buildType": "https://modelsmith.dev/synthetic-dataset/v1",
                "externalParameters": {"cycle": cycle.cycle, "synthesis": diagnosis["synthesis"],
                                       "generator_seed": lineage["generator_seed"]},
                "internalParameters": {"diagnosis_digest": lineage["diagnosis_digest"]},
                "resolvedDependencies": [policy_dep, code_dep]},
            "runDetails": run_details("synthetic_dataset") | {"byproducts": [
                {"name": "merkle_root", "digest": {"sha256": lineage["root"]}}]}}),
        ("training_provenance", SLSA_PROVENANCE, {
            "buildDefinition": {
                "buildType": "https://modelsmith.dev/lora-adapter/v1",
                "externalParameters": {"recipe": adapter["recipe"], "stages_requested": adapter["requested_stages"]},
                "internalParameters": {"stages_run": adapter["stages"], "best_epoch": adapter["best_epoch"],
                                       "grpo": adapter["grpo"], "precision": adapter.get("precision", "")},
                "resolvedDependencies": [
                    {"uri": f"file://{base.path}", "digest": {"sha256": base.digest}, "name": "base_model"},
                    {"uri": f"file://{Home(home).dataset(cycle.cycle).rows}",
                     "digest": {"sha256": integrity_record["digests"]["dataset_rows"]}, "name": "dataset"},
                    policy_dep, code_dep]},
            "runDetails": run_details("adapter")}),
    ]


def cycle_bundle_dirs(home: Path, cycle_key: str) -> list[Path]:
    """The cycle's written bundles, oldest attempt first: `bundles/<cycle>`, then `<cycle>.2`, `<cycle>.3`, ...

    A bundle is immutable once written, so a re-run cycle (a backfill of `repair_cycle_job`) writes
    the next attempt beside the earlier ones instead of replacing what a reviewer may have read.
    """
    root = Home(home).bundles
    attempts = [(1, root / cycle_key)] + [
        (int(p.name.rsplit(".", 1)[1]), p) for p in root.glob(f"{cycle_key}.*")
        if p.is_dir() and p.name.rsplit(".", 1)[1].isdigit()]
    return [p for _, p in sorted(attempts) if (p / BUNDLE_FILE).is_file()]


def next_bundle_dir(home: Path, cycle_key: str) -> Path:
    """`bundles/<cycle>` for the first bundle, else one past the highest attempt present in any form."""
    root = Home(home).bundles
    if not (root / cycle_key).exists() and not (root / f"{cycle_key}.tar").exists():
        return root / cycle_key
    taken = [int(n) for p in root.glob(f"{cycle_key}.*")
             if (n := p.name[len(cycle_key) + 1:].removesuffix(".tar")).isdigit()]
    return root / f"{cycle_key}.{max(taken, default=1) + 1}"


def assemble(home: Path, cycle_key: str, run_ids: dict[str, str], started: str, signer):
    """Write and sign the bundle of one cycle under HOME/bundles/<cycle>/ (a re-run: the next attempt).

    Returns (the written bundle, the report's plots as (title, SVG)): the UI shows the same plots.
    """
    from modelsmith.attest import write_bundle, write_tar
    from modelsmith.pin_runs import history
    from modelsmith.review import build_review

    home = Path(home)
    cdir = Home(home).cycle(cycle_key)
    cycle = read_cycle(home, cycle_key)
    diagnosis = read_json(cdir.diagnosis)
    delta = read_json(cdir.delta)
    adapter = read_json(cdir.adapter)
    candidate_run = read_json(cdir.candidate_pins)
    lineage_path = Home(home).dataset(cycle_key).lineage
    lineage = read_json(lineage_path)
    record = integrity(home, cycle, adapter, run_ids, started)
    hist = history(home)
    hist = hist.filter(pl.col("pin").is_in(delta["targets"])) if hist.height else hist
    plots = report_plots(delta, hist)
    files = {
        "failure_trace.parquet": cdir.failure_traces,
        "diagnosis.json": json.dumps(diagnosis, indent=2, sort_keys=True).encode(),
        "diagnosis.md": diagnosis_markdown(diagnosis).encode(),
        "dataset_lineage.json": lineage_path,
        "benchmark_delta.parquet": cdir.delta_table,
        "benchmark_delta.md": delta_markdown(delta).encode(),
        "integrity.json": json.dumps(record, indent=2, sort_keys=True).encode(),
        "report.html": report_html(delta, diagnosis, plots, record,
                                   build_review(home, cycle, delta, diagnosis, adapter, run_ids)).encode(),
    }
    if adapter.get("model_signature"):
        files[MODEL_SIGNING_KEY_FILE] = Path(adapter["model_signature"]["public_key"])
    summary = {"cycle": cycle_key, "candidate": delta["candidate"], "champion": delta["champion"],
               "policy_digest": cycle.policy_digest, "targets": delta["targets"],
               "repaired": delta["repaired"], "flagged": delta["flagged"],
               "offer_for_promotion": delta["offer_for_promotion"],
               "candidate_passed_every_pin": not candidate_run["failed"], "created": record["finished"]}
    attestations = predicates(home, cycle, diagnosis, delta, adapter, candidate_run, lineage, record)
    for done in cycle_bundle_dirs(home, cycle_key):  # a writer killed after publishing a directory, before its tar
        if not done.with_name(done.name + ".tar").exists():
            write_tar(done, done.with_name(done.name + ".tar"))
    return write_bundle(next_bundle_dir(home, cycle_key), files, Path(adapter["path"]), attestations, summary,
                        signer), plots
