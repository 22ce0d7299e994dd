"""Where steps run is configuration: `MODELSMITH_EXECUTOR` picks Dagster's executor for every job.

- unset or `multiprocess`: Dagster's default (one process per step on the run's machine).
- `in_process`: every step in the run's process (small machines, debugging).
- `k8s`: `dagster_k8s.k8s_job_executor`, one Kubernetes Job per step (the `k8s` extra).
- `celery`: `dagster_celery.celery_executor`, steps on Celery workers (the `celery` extra).

The steps that want an accelerator (training the adapter, pinning with vLLM) carry tags that only
those executors read: a GPU limit and node selector for Kubernetes (`MODELSMITH_GPU_NODE_SELECTOR`,
a JSON object, default `{"nvidia.com/gpu.present": "true"}`) and the `gpu` queue for Celery
(`dagster-celery worker start -q gpu` on the GPU machines). Locally they are inert. Nothing here is a
scheduler, queue or worker pool of Modelsmith's own: the run queue, pools and executors are Dagster's.
"""

import json
import os
from typing import Any

import dagster as dg

EXECUTORS = ("multiprocess", "in_process", "k8s", "celery")
DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}


class ExecutorChoiceError(ValueError):
    pass


def executor_for(name: str | None = None) -> dg.ExecutorDefinition | None:
    """The executor named by `name` (default `MODELSMITH_EXECUTOR`); None means Dagster's default."""
    name = (name if name is not None else os.environ.get("MODELSMITH_EXECUTOR", "")).strip() or "multiprocess"
    if name == "multiprocess":
        return None
    if name == "in_process":
        return dg.in_process_executor
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as e:
            raise ExecutorChoiceError("MODELSMITH_EXECUTOR=k8s needs the k8s extra: pip install 'modelsmith[k8s]'") from e
        return k8s_job_executor
    if name == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError as e:
            raise ExecutorChoiceError("MODELSMITH_EXECUTOR=celery needs the celery extra: "
                                      "pip install 'modelsmith[celery]'") from e
        return celery_executor
    raise ExecutorChoiceError(f"MODELSMITH_EXECUTOR={name!r}: expected one of {', '.join(EXECUTORS)}")


def gpu_node_selector() -> dict[str, str]:
    raw = os.environ.get("MODELSMITH_GPU_NODE_SELECTOR", "").strip()
    if not raw:
        return dict(DEFAULT_GPU_NODE_SELECTOR)
    try:
        selector = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ExecutorChoiceError(f"MODELSMITH_GPU_NODE_SELECTOR is not JSON: {e}") from None
    if not isinstance(selector, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
        raise ExecutorChoiceError('MODELSMITH_GPU_NODE_SELECTOR must be a JSON object of strings, '
                                  'e.g. {"cloud.google.com/gke-accelerator": "nvidia-l4"}')
    return selector


def gpu_step_tags() -> dict[str, Any]:
    """Op tags for steps that want one GPU: read by k8s_job_executor and celery_executor only."""
    return {
        "dagster-k8s/config": {
            "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
            "pod_spec_config": {"node_selector": gpu_node_selector(),
                                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        },
        "dagster-celery/queue": "gpu",
    }
