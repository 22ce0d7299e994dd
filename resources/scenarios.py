"""Scenario settings: which policy is active, where real replay files land, the default pack."""

import hashlib
import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from modelsmith.home import modelsmith_home
from modelsmith.store import Home
from scenario_data.policy import POLICIES_DIR, Policy, load_policy
from scenario_data.taxonomy import REFERENCE, load_domain_lists


def active_policy_path(home: Path) -> Path:
    """The policy the loop labels with: HOME/policy.yaml once one was activated, else the shipped v1."""
    activated = Home(home).active_policy
    return activated if activated.is_file() else POLICIES_DIR / "v1.yaml"


def replay_fingerprint(replay_dir: Path) -> str:
    """Names, sizes and modification times of every replay file: changes when a file lands or changes."""
    entries = sorted((str(p.relative_to(replay_dir)), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in Path(replay_dir).rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


class ScenarioSettings(dg.ConfigurableResource):
    """The scenario stage's knobs; `policy_path` names the active policy file."""

    policy_path: str = Field("", description="The active ground-truth policy (YAML); empty: HOME/policy.yaml "
                                             "(`modelsmith policy activate FILE`), else the shipped policy v1")
    replay_dir: str = Field("", description="Real replay files (JSON, JSONL, gzip'd JSONL, Parquet); default HOME/replay")
    pack_size: int = Field(10_000, ge=1, le=100_000_000, description="Requests in the generated default scenario pack")
    pack_seed: int = Field(0, ge=0, description="Seed of the generated default scenario pack")
    domain_lists: list[str] = Field(
        default_factory=list, description="Extra brand-safety domain list files or directories (one domain a line)"
    )

    def active_policy_path(self, home: Path | None = None) -> Path:
        """`policy_path`, else the policy activated in `home` (the storage root; default MODELSMITH_HOME)."""
        return Path(self.policy_path) if self.policy_path else active_policy_path(home or modelsmith_home())

    def load_policy(self, home: Path | None = None) -> Policy:
        return load_policy(self.active_policy_path(home))

    def fingerprint(self, home: Path) -> str:
        """The active policy's digest and the replay files: what the scenario stage's output depends on."""
        replay = replay_fingerprint(self.replay_path(home))
        return hashlib.sha256(f"{self.load_policy(home).digest}:{replay}".encode()).hexdigest()

    def replay_path(self, home: Path) -> Path:
        path = Path(self.replay_dir).expanduser() if self.replay_dir else Home(home).replay
        path.mkdir(parents=True, exist_ok=True)
        return path

    def domain_map(self) -> dict[str, str]:
        return load_domain_lists([REFERENCE / "unsafe.txt", *map(Path, self.domain_lists)])
