"""A re-run cycle writes its next bundle beside the earlier ones: a written bundle is never replaced."""

from pathlib import Path

from modelsmith.evidence import cycle_bundle_dirs, next_bundle_dir


def _written(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "bundle.dsse.json").write_text("{}")
    return d


def test_attempts_are_numbered_and_ordered(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    assert cycle_bundle_dirs(tmp_path, "abc-1") == [] and next_bundle_dir(tmp_path, "abc-1") == root / "abc-1"
    first = _written(root / "abc-1")
    assert next_bundle_dir(tmp_path, "abc-1") == root / "abc-1.2"
    second = _written(root / "abc-1.2")
    tenth = _written(root / "abc-1.10")
    _written(root / "abc-12")  # another cycle whose id starts the same
    (root / "abc-1.tar").write_text("tar")  # tars and temp dirs are not attempts
    (root / ".abc-1.3.xyz.tmp").mkdir()
    (root / "abc-1.3").mkdir()  # a directory without its envelope is not a written bundle
    assert cycle_bundle_dirs(tmp_path, "abc-1") == [first, second, tenth]
    assert next_bundle_dir(tmp_path, "abc-1") == root / "abc-1.11"  # past every attempt present
