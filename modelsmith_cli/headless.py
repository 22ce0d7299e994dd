"""The headless loop: the default story in one process, with the same Dagster definitions and instance.

One pass is what the sensors do in `dagster dev`, in order: the scenario stage under the active
policy, the base model (built once), the champion's pins, and, when a pin regressed, a repair
cycle through its evidence bundle. The story is two passes: policy v1 (every pin passes), then
policy v2 (Gaming regresses, a cycle repairs it) — and it stops at the gate: promotion is a human's
decision in the Dagster UI.
"""

import time
from collections.abc import Callable
from pathlib import Path

from modelsmith.attest import BUNDLE_FILE
from modelsmith.cycles import CYCLES, open_cycle, read_cycle
from modelsmith.delta import verdict_sentence
from modelsmith.evidence import cycle_bundle_dirs
from modelsmith.champion import read_champion
from modelsmith.labels import cycle_label, version_label
from modelsmith.model_dir import Registry, file_sha256, short
from modelsmith.store import Home, read_json

# Every run of the loop is labelled as automation. `modelsmith/trigger` is what the sensors' runs carry
# too (autonomy_rate counts on it); `user` is the one tag the UI's "Launched by" column shows as written
# (Dagster 1.13's CreatedByTag: `user`, else a schedule or sensor name, else "Manually launched"), so
# the runs list says "modelsmith loop" there instead of a person's manual launch.
TRIGGER = {"modelsmith/trigger": "modelsmith loop", "user": "modelsmith loop"}


class LoopError(RuntimeError):
    """A job of the loop failed; the message names it (its log is above)."""


def _execute(defs, instance, job: str, tags: dict | None = None, **kwargs):
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False,
                                                          tags={**TRIGGER, **(tags or {})}, **kwargs)
    if not result.success:
        raise LoopError(f"{job} failed; see the log above")
    return result


def run_pass(defs, instance, home: Path, replay_dir: str | None, log: Callable[[str], None]) -> dict:
    """Scenarios, base model, champion pins, and a repair cycle when a pin regressed; a summary dict."""
    started = time.monotonic()
    config = {"replay_dir": str(Path(replay_dir).resolve())} if replay_dir else {}
    log("scenarios: generate, ingest and label the replay set")
    _execute(defs, instance, "materialize_scenarios_job", run_config={"resources": {"scenarios": {"config": config}}})
    log("base model: build the embedded default once, or reuse it")
    _execute(defs, instance, "build_base_model_job")
    champion = read_champion(home)
    key = short(champion.model_version)
    log(f"pins: the champion {key} on every pin")
    _execute(defs, instance, "pin_model_version_job", partition_key=key,
             tags={"modelsmith/model_name": version_label(home, Registry(home).get(champion.model_version))})
    report = read_json(Home(home).report(key))
    detected = time.monotonic()
    summary = {"policy_digest": report["policy_digest"], "champion": champion.model_version,
               "composite": report["composite"],
               "regressed_pins": [{k: v for k, v in p.items() if k != "failing_row_ids"} for p in report["regressed"]],
               "regressed": [p["pin"] for p in report["regressed"]], "failed": [p["pin"] for p in report["failed"]],
               "time_to_detect_s": round(detected - started, 1) if report["regressed"] else None, "cycle": None}
    if not report["regressed"]:
        return summary
    cycle = open_cycle(home, report)
    instance.add_dynamic_partitions(CYCLES, [cycle])
    log(f"repair: cycle {cycle} for {', '.join(summary['regressed'])} (traces, diagnosis, data, adapter, pins, bundle)")
    result = defs.resolve_job_def("repair_cycle_job").execute_in_process(
        instance=instance, partition_key=cycle, raise_on_error=False,
        tags={**TRIGGER, "modelsmith/cycle": cycle, "modelsmith/cycle_label": cycle_label(read_cycle(home, cycle))})
    summary |= {"cycle": cycle, "cycle_success": result.success or refused_by_its_gate_check(result),
                "cycle_time_s": round(time.monotonic() - detected, 1)}
    return summary | cycle_outcome(home, cycle)


def refused_by_its_gate_check(result) -> bool:
    """A repair run whose only failure is `candidate_offered`: the cycle ran to its verdict, which is a refusal."""
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return bool(failures) and all(e.step_key == "evidence_bundle" and
                                  e.step_failure_data.error.cls_name == "DagsterAssetCheckFailedError"
                                  for e in failures)


def cycle_outcome(home: Path, cycle: str) -> dict:
    """What a cycle produced, read back from its artifacts, with the verdict and the next step."""
    files = Home(home).cycle(cycle)
    out: dict = {}
    if files.diagnosis.exists():
        out["hypothesis"] = read_json(files.diagnosis)["hypothesis"]
    if files.adapter.exists():
        adapter = read_json(files.adapter)
        out |= {"adapter_digest": adapter["model_version"], "adapter_path": adapter["path"]}
    if files.delta.exists():
        delta = read_json(files.delta)
        out |= {k: delta.get(k, []) for k in ("repaired", "not_repaired", "flagged", "inconclusive")}
        out["offer_for_promotion"] = delta["offer_for_promotion"]
    written = cycle_bundle_dirs(home, cycle)
    if written:
        envelope = written[-1] / BUNDLE_FILE
        digest = file_sha256(envelope)
        out |= {"bundle_path": str(envelope.parent), "bundle_digest": digest}
    if out.get("offer_for_promotion") and "bundle_digest" in out:
        out["verdict"] = "ready for approval"
        out["next_step"] = ("in the Dagster UI (`dagster dev -w workspace.yaml`; if it was already running, click "
                            "Reload definitions first), open the Launchpad of promotion_job (pre-filled with "
                            f"bundle_digest {out['bundle_digest']}), name the approver and launch")
    elif "offer_for_promotion" in out:
        out["verdict"] = verdict_sentence(delta)
    else:
        out["verdict"] = "the cycle failed before its benchmark delta; see the run log"
    return out


def autonomy_rate(instance, home: Path) -> float | None:
    """Share of opened cycles that reached the gate (a bundle offered) with every run launched by automation."""
    import dagster as dg

    root = Home(home).cycles
    cycles = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    if not cycles:
        return None
    autonomous = 0
    for cycle in cycles:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": cycle}))
        automated = bool(runs) and all("modelsmith/trigger" in r.tags for r in runs)
        if automated and cycle_outcome(home, cycle).get("verdict") == "ready for approval":
            autonomous += 1
    return autonomous / len(cycles)


def base_model_summary(home: Path) -> dict:
    """The base model under the champion (the champion itself, or the base its adapter sits on)."""
    registry, champion = Registry(home), read_champion(home)
    base = registry.get(champion.model_version) if champion else None
    if base is not None and base.kind == "adapter":
        base = registry.get(base.base)
    return {"base_model_digest": base.digest if base else None, "base_model_path": base.path if base else None}
