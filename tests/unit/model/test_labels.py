"""Readable names beside the digests: a base by its directory, an adapter by its cycle, a cycle by its pins."""

import doctest
import json

from modelsmith import labels
from modelsmith.cycles import open_cycle, read_cycle
from modelsmith.labels import cycle_label, version_label
from modelsmith.model_dir import Registry, short


def _dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"name": path.name}))  # one digest per directory
    return path


def test_versions_and_cycles_read_as_what_they_are(tmp_path):
    home = tmp_path / "home"
    registry = Registry(home)
    built = registry.register(_dir(home / "models" / "base" / "0123456789abcdef"), "base")
    assert version_label(home, built) == "base model: the embedded default"
    users = registry.register(_dir(tmp_path / "Qwen2.5-0.5B"), "base")
    assert version_label(home, users) == "base model Qwen2.5-0.5B"
    adapter = registry.register(_dir(tmp_path / "adapter"), "adapter", base=built.digest)
    assert version_label(home, adapter) == f"adapter on {built.key}"  # no cycle trained it here
    report = {"model_version": built.digest, "policy_digest": "p" * 64, "scenarios_digest": "s" * 64, "run_dir": "r",
              "regressed": [{"pin": p} for p in ("Video Gaming/app", "Sports/app", "News/site", "Travel/app")]}
    cycle = open_cycle(home, report)
    (home / "cycles" / cycle / "adapter.json").write_text(json.dumps({"model_version": adapter.digest}))
    label = f"repair Video Gaming/app, Sports/app, News/site and 1 more of {short(built.digest)}"
    assert cycle_label(read_cycle(home, cycle)) == label
    assert version_label(home, adapter) == f"adapter of cycle {cycle}: {label}"


def test_the_examples_hold():
    assert doctest.testmod(labels).failed == 0
