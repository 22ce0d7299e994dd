"""Shared fixtures. `realdata` is ../shared/realdata: present in CI and on a developer's checkout only."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        msg = f"{REALDATA} not found: these tests read the shared real data beside the checkout"
        if os.environ.get("MODELSMITH_REQUIRE_SHARED"):
            pytest.fail(msg + " (required: MODELSMITH_REQUIRE_SHARED is set)")
        pytest.skip(msg + "; CI always has it")
    return REALDATA


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("MODELSMITH_HOME", str(home))
    return home
