"""The Modelsmith home: every path in it, named here once.

    cycles/<cycle>/           cycle.json, failure_traces.parquet, diagnosis.json, adapter.json,
                              candidate_pins.json, benchmark_delta.json and .parquet
    datasets/<cycle>/         rows.parquet, lineage.json, row_digests.parquet (signed synthetic data)
    adapters/<version>/       LoRA adapters, published from adapters/.cycle-<cycle>/
    models/base/              the embedded default base model's builds
    pins/<version>/<run>/     summary.json, metrics.parquet, predictions.parquet, decisions.parquet
    reports/<version>/        regression_report.json (the latest) and <run>.json
    bundles/<cycle>[.N]/      evidence bundles (bundle.dsse.json, ...) beside <cycle>[.N].tar
    policies/<digest>.yaml    every policy activated, and its record <digest>.json
    packs/, replay/, replayed_auctions/   the scenario stage's inputs and its labelled table
    decisions/, keys/, audit.jsonl, champion.json, policy.yaml   the gate's side

The stages hand each other files, not objects (each link of the chain can be re-run on its own from
the UI), so what they agree on is where the files are: a `Home` answers that, and a file's name is
spelled nowhere else.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsmith.atomic import write_text


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: Path, payload: Any) -> Path:
    """Atomically, indented, key-sorted, with a final newline: how the stages' JSON artifacts are written.

    Not every JSON file of the home: `cycle.json`, a pin run's `summary.json` and a decision record keep
    their own older form (indented, insertion order, no newline), which their digests and readers expect.
    """
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return Path(path)


@dataclass(frozen=True)
class CycleFiles:
    """What the links of one repair cycle write, in `cycles/<cycle>/`."""

    dir: Path

    @property
    def record(self) -> Path:
        return self.dir / "cycle.json"

    @property
    def failure_traces(self) -> Path:
        return self.dir / "failure_traces.parquet"

    @property
    def diagnosis(self) -> Path:
        return self.dir / "diagnosis.json"

    @property
    def adapter(self) -> Path:
        return self.dir / "adapter.json"

    @property
    def candidate_pins(self) -> Path:
        return self.dir / "candidate_pins.json"

    @property
    def delta(self) -> Path:
        return self.dir / "benchmark_delta.json"

    @property
    def delta_table(self) -> Path:
        return self.dir / "benchmark_delta.parquet"


@dataclass(frozen=True)
class DatasetFiles:
    """A cycle's signed synthetic dataset, in `datasets/<cycle>/`."""

    dir: Path

    @property
    def rows(self) -> Path:
        return self.dir / "rows.parquet"

    @property
    def lineage(self) -> Path:
        return self.dir / "lineage.json"

    @property
    def row_digests(self) -> Path:
        return self.dir / "row_digests.parquet"


@dataclass(frozen=True)
class PinRunFiles:
    """One pin run of one model version, in `pins/<version>/<run>/` (a run counts once `summary.json` exists)."""

    dir: Path

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.parquet"

    @property
    def predictions(self) -> Path:
        return self.dir / "predictions.parquet"

    @property
    def decisions(self) -> Path:
        return self.dir / "decisions.parquet"


@dataclass(frozen=True)
class Home:
    """The paths of one Modelsmith home (`MODELSMITH_HOME`, or the storage resource's root)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def cycles(self) -> Path:
        return self.root / "cycles"

    def cycle(self, key: str) -> CycleFiles:
        return CycleFiles(self.cycles / key)

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def dataset(self, cycle: str) -> DatasetFiles:
        return DatasetFiles(self.datasets / cycle)

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    def adapter_work(self, cycle: str) -> Path:
        """Where a cycle's adapter is trained before it is published under its version's key."""
        return self.adapters / f".cycle-{cycle}"

    @property
    def base_models(self) -> Path:
        return self.root / "models" / "base"

    @property
    def pin_runs(self) -> Path:
        return self.root / "pins"

    def report(self, version_key: str) -> Path:
        """A version's latest regression report, for people."""
        return self.root / "reports" / version_key / "regression_report.json"

    def run_report(self, version_key: str, run: str) -> Path:
        """The regression report of one pin run, which the pin-regression sensor reads."""
        return self.root / "reports" / version_key / f"{run}.json"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    def policy_copy(self, digest: str) -> Path:
        return self.root / "policies" / f"{digest}.yaml"

    def policy_record(self, digest: str) -> Path:
        return self.root / "policies" / f"{digest}.json"

    @property
    def active_policy_record(self) -> Path:
        return self.root / "policies" / "active.json"

    @property
    def active_policy(self) -> Path:
        return self.root / "policy.yaml"

    def pack(self, size: int, seed: int, policy_digest: str) -> Path:
        """A generated scenario pack, kept per size, seed and policy (regenerating one is deterministic)."""
        return self.root / "packs" / f"default-n{size}-s{seed}-{policy_digest[:12]}.jsonl"

    @property
    def pack_record(self) -> Path:
        """The pack the next `replayed_auctions` reads: its path and SHA-256."""
        return self.root / "packs" / "current.json"

    @property
    def replay(self) -> Path:
        return self.root / "replay"

    @property
    def replayed_auctions(self) -> Path:
        return self.root / "replayed_auctions"

    @property
    def labelled_auctions(self) -> Path:
        return self.replayed_auctions / "replayed_auctions.parquet"

    @property
    def replay_quarantine(self) -> Path:
        return self.replayed_auctions / "quarantine.parquet"

    @property
    def replay_summary(self) -> Path:
        return self.replayed_auctions / "summary.json"

    @property
    def decisions(self) -> Path:
        return self.root / "decisions"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def champion(self) -> Path:
        return self.root / "champion.json"
