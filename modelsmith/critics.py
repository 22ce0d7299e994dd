"""What every critic reads (`CriticInput`) and the one method it answers with (`Critic.diagnose`).

The traces frame (the `failure_traces` asset) holds, per row: every feature column of the
replayed auction (`modelsmith.prompt.PROMPT_COLUMNS` and the text fields `domain`, `keywords`,
`title`), `row_id`, `pin` (the regressed pin the row belongs to), `failed` (True: the model got it
wrong; False: a passing row of the same segment, for contrast), `expected`, `predicted`,
`confidence`, `p_<label>` for each decision, and `attr_<column>` for each prompt column: how much
masking that feature's token lowers the probability of the predicted label (leave-one-feature-out).
"""

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

from modelsmith.diagnosis import Diagnosis


@dataclass(frozen=True)
class CriticInput:
    cycle: str
    model_version: str
    policy_digest: str
    regressed: list[dict[str, Any]]  # regression report entries (pin, segment, rows, accuracy, drop, p_value, ...)
    pin_filters: dict[str, dict[str, dict[str, Any]]]  # pin name -> its `where` in the policy grammar
    traces: pl.DataFrame
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_digest(self) -> str:
        """SHA-256 of the traces as canonical NDJSON (sorted columns), which is what a critic read."""
        frame = self.traces.select(sorted(self.traces.columns)).sort("row_id")
        return hashlib.sha256(frame.write_ndjson().encode()).hexdigest()


class Critic(Protocol):
    name: str

    def diagnose(self, inp: CriticInput) -> Diagnosis: ...
