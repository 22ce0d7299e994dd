"""The audit log: every decision on the champion (bootstrap, promotion, rejection, rollback, refused attempts), hash-chained.

`HOME/audit.jsonl` holds one canonical JSON object per line. Each entry carries `prev`, the digest
of the entry before it (64 zeros for the first), and `digest`, the SHA-256 of its own canonical
JSON without `digest`. Editing, removing or reordering any entry breaks the chain, and the
champion record must equal what the last champion-moving entry says: `modelsmith audit verify`.
"""

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from modelsmith.champion import Champion, read_champion, write_champion
from modelsmith.store import Home

GENESIS = "0" * 64
MOVES = ("bootstrap", "approve", "rollback")  # actions that set the champion
REFUSED = "refused"  # a decision the gate refused: recorded, moves nothing


def audit_path(home: Path) -> Path:
    return Home(home).audit_log


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entries(home: Path) -> list[dict]:
    path = audit_path(home)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append(home: Path, action: str, **fields_: object) -> dict:
    """Append one entry under an exclusive lock, fsync'd: the chain never forks or tears."""
    path = audit_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        lines = [line for line in f.read().splitlines() if line.strip()]
        prev = json.loads(lines[-1])["digest"] if lines else GENESIS
        entry = {"seq": len(lines), "prev": prev, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                 "action": action, **fields_}
        entry["digest"] = hashlib.sha256(_canonical(entry)).hexdigest()
        f.write(_canonical(entry).decode() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return entry


def complete_interrupted_move(home: Path) -> str | None:
    """Finish a champion move the audit log committed but `champion.json` does not show yet.

    The audit entry is the commit point of a decision: the champion record is written after it. A
    decision killed between the two leaves the record one move behind, still naming the last entry's
    `champion_before`; this writes the entry's `champion_after` (what the killed decision would
    have written) and returns it. Anything else (no such lag, or a record that matches neither side)
    is left alone for `verify` to report. Returns None when there was nothing to finish.
    """
    log = [e for e in entries(home) if e.get("action") != REFUSED]  # a refused attempt moves nothing
    if not log or log[-1].get("action") not in MOVES:
        return None
    last = log[-1]
    champion = read_champion(home)
    current = champion.model_version if champion else None
    if not last.get("champion_after") or current == last["champion_after"] or current != last.get("champion_before"):
        return None
    write_champion(home, last["champion_after"], by=str(last.get("approver") or last.get("by") or ""),
                   reason=f"{last['action']} (audit entry {last['seq']}; completed after an interrupted decision)")
    return last["champion_after"]


@dataclass
class AuditReport:
    ok: bool
    entries: int
    errors: list[str] = field(default_factory=list)


def verify(home: Path) -> AuditReport:
    """Check the chain, each entry's digest, and that the champion record matches the last move."""
    path = audit_path(home)
    errors: list[str] = []
    prev, last_move, last = GENESIS, None, None
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for n, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{path.name} line {n}: not JSON ({e.msg})")
            break
        body = {k: v for k, v in entry.items() if k != "digest"}
        if hashlib.sha256(_canonical(body)).hexdigest() != entry.get("digest"):
            errors.append(f"{path.name} line {n}: digest does not match the entry (edited?)")
        if _canonical(entry).decode() != line:
            errors.append(f"{path.name} line {n}: not in canonical form (edited?)")
        if entry.get("prev") != prev:
            errors.append(f"{path.name} line {n}: prev does not match the digest of line {n - 1} (removed or reordered?)")
        if entry.get("seq") != n - 1:
            errors.append(f"{path.name} line {n}: seq {entry.get('seq')} where {n - 1} was expected")
        prev = entry.get("digest")
        if entry.get("action") != REFUSED:
            last = entry
        if entry.get("action") in MOVES:
            last_move = entry
    champion = read_champion(home)
    if champion is not None and last_move is None:
        errors.append("champion.json: a champion exists but no audit entry ever set one")
    elif last_move is not None and (champion is None or champion.model_version != last_move.get("champion_after")):
        held = champion.model_version if champion else None
        why = ("a decision was interrupted after its audit entry; the next gate decision completes it"
               if held == last_move.get("champion_before") and last_move is last
               else "moved outside the gate?")
        errors.append(f"champion.json: holds {held[:16] if held else 'nothing'}, the audit log's "
                      f"last move set {str(last_move.get('champion_after'))[:16]} ({why})")
    return AuditReport(not errors, len(lines), errors)


def bootstrap_champion(home: Path, base_digest: str) -> Champion:
    """At bootstrap the base model is the champion; an existing champion is never replaced here."""
    existing = read_champion(home)
    if existing is not None:
        return existing
    append(home, "bootstrap", champion_before=None, champion_after=base_digest, by="bootstrap")
    return write_champion(home, base_digest, by="bootstrap", reason="no champion yet: the base model")
