"""The champion record (`HOME/champion.json`): which model version every pin run loads.

Only the gate moves it (and bootstrap, once), always after the audit entry that commits the move
(`modelsmith.audit`), so the audit log is its history.
"""

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from modelsmith.atomic import write_text
from modelsmith.store import Home


@dataclass(frozen=True)
class Champion:
    model_version: str  # full digest
    since: str
    by: str
    reason: str = ""


def champion_path(home: Path) -> Path:
    return Home(home).champion


def read_champion(home: Path) -> Champion | None:
    path = champion_path(home)
    return Champion(**json.loads(path.read_text())) if path.exists() else None


def write_champion(home: Path, digest: str, by: str, reason: str) -> Champion:
    """Move the champion pointer. Only the promotion gate calls this (and bootstrap, once), after the audit entry."""
    record = Champion(digest, datetime.now(UTC).isoformat(timespec="seconds"), by, reason)
    write_text(champion_path(home), json.dumps(asdict(record), indent=2))
    return record
