"""Shared fixtures. `realdata` is ../shared/realdata: present in CI and on a developer's checkout only."""

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"

# A runner that starts the suite with SIGINT and SIGTERM ignored (a script's background job) passes that
# on to every child, and Dagster maps SIGTERM to whatever SIGINT does (`setup_interrupt_handlers`): its
# `tail -F` compute-log mirrors then outlive `terminate()` (30 s each, twice per step of a run on a
# persistent instance) and `dagster dev` its SIGTERM (60 s). Both get what an interactive start gives.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with `slow` tests first, each file's tests in their own order: xdist (`--dist loadfile`, no
    reordering) hands files out in this order, so the long end-to-end files start at once, side by side, and
    the many short ones fill in behind them instead of one long file running alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # a stable sort: file and test order kept within each


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


@pytest.fixture(scope="session")
def default_base_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default base model, built once per session exactly as the `base_model` asset builds it.

    Homes that run the default story copy it to `HOME/models/base`, where `build_default` finds a
    complete build with the same build key and reuses it (the product's own cache), instead of each
    module spending minutes of CPU on the same deterministic bytes.
    """
    from modelsmith.base_model import build_default
    from resources.model import ModelSettings

    from filelock import FileLock

    settings = ModelSettings()
    # MODELSMITH_TEST_BASE_CACHE keeps the build across sessions on a developer's machine. Otherwise it is
    # built once per run: under pytest-xdist the workers share their base temp's parent, and the first to
    # take the lock builds while the others wait and reuse it (the recipe of xdist's docs).
    cache = os.environ.get("MODELSMITH_TEST_BASE_CACHE")
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    models = Path(cache) if cache else shared / "base-cache" / "models" / "base"
    models.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{models}.lock"):
        build_default(models, settings.pretrain_config(), settings.build_pack_size, log=lambda _: None)
    return models


def seed_default_base(home: Path, models: Path) -> None:
    import shutil

    shutil.copytree(models, home / "models" / "base", dirs_exist_ok=True)
