"""Past one machine: the executor is configuration (`MODELSMITH_EXECUTOR`), and the Helm values agree
with the code location and the production instance (`dagster.yaml.example`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from modelsmith_assets.definitions import build_definitions
from modelsmith_assets.executors import EXECUTORS, ExecutorChoiceError, executor_for, gpu_step_tags

REPO = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
GPU_STEPS = {("pin_model_version_job", "pin_results"), ("repair_cycle_job", "adapter"),
             ("repair_cycle_job", "candidate_pins")}


def _deployment() -> dict:
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    return deployment


def _env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in _deployment()["env"]}


@pytest.mark.parametrize("executor", ["k8s", "celery"])
def test_the_code_location_loads_with_each_distributed_executor(executor, tmp_path):
    """`dagster definitions validate` loads workspace.yaml as the webserver and daemon would."""
    env = {**os.environ, "MODELSMITH_EXECUTOR": executor, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").touch()
    done = subprocess.run([str(REPO / ".venv" / "bin" / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All code locations passed validation" in done.stdout + done.stderr


@pytest.mark.parametrize("name, executor", [("k8s", "k8s"), ("celery", "celery"), ("in_process", "in_process")])
def test_every_job_runs_on_the_configured_executor(monkeypatch, name, executor):
    monkeypatch.setenv("MODELSMITH_EXECUTOR", name)
    defs = build_definitions()
    for job in ("materialize_scenarios_job", "pin_model_version_job", "repair_cycle_job", "promotion_job"):
        assert defs.resolve_job_def(job).executor_def.name == executor


def test_k8s_executor_run_config_is_validated_by_dagster(monkeypatch):
    """Per-run executor settings (namespace, step limits) are run config, checked against dagster-k8s's schema."""
    monkeypatch.setenv("MODELSMITH_EXECUTOR", "k8s")
    job = build_definitions().resolve_job_def("pin_model_version_job")
    ok = dg.validate_run_config(job, {"execution": {"config": {"job_namespace": "modelsmith", "max_concurrent": 2}}})
    assert ok["execution"]["k8s"]["job_namespace"] == "modelsmith" and ok["execution"]["k8s"]["max_concurrent"] == 2
    with pytest.raises(dg.DagsterInvalidConfigError, match="job_namespce"):
        dg.validate_run_config(job, {"execution": {"config": {"job_namespce": "typo"}}})


def test_default_and_unknown_executor(monkeypatch):
    monkeypatch.delenv("MODELSMITH_EXECUTOR", raising=False)
    assert executor_for() is None  # Dagster's default multiprocess executor
    with pytest.raises(ExecutorChoiceError, match="MODELSMITH_EXECUTOR='slurm': expected one of"):
        executor_for("slurm")


STEP_TAGS = """
import json, sys
from modelsmith_assets.definitions import build_definitions
defs = build_definitions()
print(json.dumps({f"{job}/{step}": defs.resolve_job_def(job).graph.node_named(step).tags
                  for job, step in json.loads(sys.argv[1])}))
"""


def test_training_and_pinning_steps_ask_for_a_gpu_node(monkeypatch):
    """The selector is read when the code location loads (the assets are module-level), so a fresh process reads
    it, as the webserver, the daemon and every run worker do."""
    selector = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    steps = [*sorted(GPU_STEPS), ("repair_cycle_job", "synthetic_dataset")]
    env = {**os.environ, "MODELSMITH_GPU_NODE_SELECTOR": json.dumps(selector)}
    done = subprocess.run([sys.executable, "-c", STEP_TAGS, json.dumps(steps)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    tags_of = json.loads(done.stdout.strip().splitlines()[-1])
    for job_name, step in GPU_STEPS:
        tags = tags_of[f"{job_name}/{step}"]
        k8s = json.loads(tags["dagster-k8s/config"])  # Dagster stores non-string tag values as JSON
        assert k8s["pod_spec_config"]["node_selector"] == selector
        assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert tags["dagster-celery/queue"] == "gpu"
    assert "dagster-k8s/config" not in tags_of["repair_cycle_job/synthetic_dataset"]
    monkeypatch.setenv("MODELSMITH_GPU_NODE_SELECTOR", "[1, 2]")
    with pytest.raises(ExecutorChoiceError, match="JSON object of strings"):
        gpu_step_tags()


def test_helm_values_name_this_code_location_and_variables_the_code_reads():
    assert _deployment()["dagsterApiGrpcArgs"] == ["--module-name", "modelsmith_assets.definitions"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["module_name"] == "modelsmith_assets.definitions"
    env = _env()
    assert env["MODELSMITH_ENV"] == "production" and env["MODELSMITH_EXECUTOR"] in EXECUTORS
    source = "\n".join(p.read_text() for d in ("modelsmith", "modelsmith_assets", "resources")
                       for p in (REPO / d).rglob("*.py"))
    for name in env:
        assert f'"{name}"' in source, f"{name} is set in deploy/helm/values.yaml but no code reads it"
    monkey = dict(os.environ, MODELSMITH_GPU_NODE_SELECTOR=env["MODELSMITH_GPU_NODE_SELECTOR"])
    selector = json.loads(monkey["MODELSMITH_GPU_NODE_SELECTOR"])
    assert selector and all(isinstance(v, str) for v in selector.values())
    mounts = {m["name"] for m in _deployment()["volumeMounts"]}
    assert mounts == {v["name"] for v in _deployment()["volumes"]}


def test_helm_values_match_the_production_instance():
    instance = yaml.safe_load((REPO / "dagster.yaml.example").read_text())
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    assert VALUES["dagsterDaemon"]["runCoordinator"]["type"] == instance["run_coordinator"]["class"]
    concurrency = VALUES["concurrency"]
    assert concurrency["runs"]["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert concurrency["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"] == 1
    assert concurrency["pools"]["granularity"] == instance["concurrency"]["pools"]["granularity"] == "run"
    assert VALUES["telemetry"]["enabled"] is instance["telemetry"]["enabled"] is False
    assert VALUES["postgresql"]["enabled"] is False and VALUES["postgresql"]["service"]["port"] == 5432
    assert "password" not in json.dumps(VALUES["postgresql"]).lower()  # from a secret, never in values
