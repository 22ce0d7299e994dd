"""The hash-chained audit log and the champion record it vouches for."""

import json

from modelsmith import audit
from modelsmith.audit import bootstrap_champion
from modelsmith.champion import write_champion


def _home_with_moves(tmp_path):
    bootstrap_champion(tmp_path, "a" * 64)
    audit.append(tmp_path, "approve", approver="ana", bundle="b" * 64, champion_before="a" * 64, champion_after="c" * 64)
    write_champion(tmp_path, "c" * 64, by="ana", reason="approve")
    audit.append(tmp_path, "reject", approver="bo", bundle="d" * 64, champion_before="c" * 64, champion_after="c" * 64)
    return tmp_path


def test_a_clean_chain_verifies_and_links_every_entry(tmp_path):
    home = _home_with_moves(tmp_path)
    report = audit.verify(home)
    assert report.ok and report.entries == 3, report.errors
    e = audit.entries(home)
    assert e[0]["prev"] == audit.GENESIS and e[1]["prev"] == e[0]["digest"] and e[2]["prev"] == e[1]["digest"]
    assert bootstrap_champion(home, "z" * 64).model_version == "c" * 64  # bootstrap never replaces a champion


def test_an_edited_entry_is_detected(tmp_path):
    home = _home_with_moves(tmp_path)
    lines = audit.audit_path(home).read_text().splitlines()
    entry = json.loads(lines[1])
    entry["approver"] = "mallory"
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    audit.audit_path(home).write_text("\n".join(lines) + "\n")
    report = audit.verify(home)
    assert not report.ok and any("line 2: digest does not match" in e for e in report.errors)


def test_a_removed_entry_or_a_reformatted_line_is_detected(tmp_path):
    home = _home_with_moves(tmp_path)
    lines = audit.audit_path(home).read_text().splitlines()
    audit.audit_path(home).write_text("\n".join([lines[0], lines[2]]) + "\n")
    assert any("prev does not match" in e for e in audit.verify(home).errors)
    audit.audit_path(home).write_text("\n".join([lines[0], lines[1].replace(",", ", ", 1), lines[2]]) + "\n")
    assert any("line 2: not in canonical form" in e for e in audit.verify(home).errors)


def test_a_champion_moved_outside_the_gate_is_detected(tmp_path):
    home = _home_with_moves(tmp_path)
    write_champion(home, "e" * 64, by="script", reason="sneaky")  # no audit entry: not through the gate
    report = audit.verify(home)
    assert not report.ok and any(e.startswith("champion.json: holds eeeeeeeeeeeeeeee") for e in report.errors)
