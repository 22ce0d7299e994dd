"""The stand-in Messages API server, one per test."""

from collections.abc import Iterator

import pytest

from tests.support.fake_anthropic import FakeAnthropic


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server
