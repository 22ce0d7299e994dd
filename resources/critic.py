"""The critic resource: the statistical critic, or Claude (`modelsmith.engines.claude_critic`) behind the same interface."""

import dagster as dg
from pydantic import Field

from modelsmith.critics import Critic
from modelsmith.engines.claude_critic import ClaudeCritic


class CriticSettings(dg.ConfigurableResource):
    """Which critic diagnoses a cycle: `statistical` (default: no network, no secret) or `claude`."""

    critic: str = Field("statistical", description="'statistical' or 'claude' (falls back to statistical)")
    model: str = Field("claude-sonnet-4-6", description="The Claude model the claude critic asks")
    api_key: str = Field("", repr=False, description="Anthropic API key; production passes "
                         "dg.EnvVar('ANTHROPIC_API_KEY'). Empty: the claude critic falls back without calling")
    base_url: str = Field("", description="Messages API base URL; empty: the SDK's default")
    max_retries: int = Field(3, ge=0, le=20,
                             description="Retries of 429, 5xx, timeouts and connection errors (the SDK's backoff)")
    timeout_s: float = Field(30.0, gt=0, le=3_600, allow_inf_nan=False,
                             description="Timeout of one request, in seconds")
    max_training_rows: int | None = Field(
        None, ge=1_000, description="The statistical critic's budget of training rows (target + replay) per "
        "cycle: SFT time is rows times epochs. None (the default): as many as the failures ask for")

    def build(self) -> Critic:
        from modelsmith.statistical_critic import StatisticalCritic

        if self.critic == "statistical":
            return StatisticalCritic(max_training_rows=self.max_training_rows)
        if self.critic == "claude":
            return ClaudeCritic(self.model, self.api_key or None, self.base_url or None, self.max_retries,
                                self.timeout_s, fallback=StatisticalCritic(max_training_rows=self.max_training_rows))
        raise ValueError(f"unknown critic {self.critic!r}; expected 'statistical' or 'claude'")
