"""The pod shapes of featurization on Kubernetes, as the tags dagster-k8s reads them from.

Two ways to spend a cluster's GPUs (deploy/README.md):

- the run launcher starts one pod per run; a featurization run's job tags ask for N GPUs and the pod runs a
  Ray on its own N GPUs (``executor = "ray"``, N workers, one GPU each), so N shards are featurized at once;
- the step executor (``k8s_job_executor``) starts one pod per step; the featurization assets' op tags ask
  for one GPU each, and each step featurizes its shards in its own process.

A run pod reads its job's (run) tags, a step pod its op's tags merged over them. Credentials never appear
here: every pod reads them from the secret the Helm values name (``envSecrets``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class PodShape:
    gpus: int = 1
    cpu_per_gpu: int = 8
    memory_gib_per_gpu: int = 64

    def __post_init__(self) -> None:
        if self.gpus < 0 or self.cpu_per_gpu < 1 or self.memory_gib_per_gpu < 1:
            raise ValueError(f"a pod needs gpus >= 0 and at least 1 CPU and 1 GiB per GPU, got {self}")

    def resources(self) -> dict:
        """Requests and limits: memory limited to what is requested (a pod past it is OOM-killed and its
        shard retried, not a node starved); CPU requested, not limited (a limit throttles tokenization)."""
        units = max(1, self.gpus)
        memory = f"{units * self.memory_gib_per_gpu}Gi"
        requests, limits = {"cpu": str(units * self.cpu_per_gpu), "memory": memory}, {"memory": memory}
        if self.gpus:
            requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(self.gpus)
        return {"requests": requests, "limits": limits}

    def pod_spec(self) -> dict:
        return {"tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]} \
            if self.gpus else {}


def step_pod_tags(shape: PodShape) -> dict[str, str]:
    """Op tags of a featurization asset: its step pod's GPU, CPU and memory."""
    return {K8S_CONFIG_TAG: json.dumps({"container_config": {"resources": shape.resources()},
                                        "pod_spec_config": shape.pod_spec()})}


def run_pod_tags(shape: PodShape) -> dict[str, str]:
    """Job tags of a featurization run: one pod with ``shape.gpus`` GPUs and a Ray inside it, one worker
    per GPU, its object store in a memory-backed /dev/shm (a container's default 64 MiB is too small)."""
    workers = max(1, shape.gpus)
    env = [{"name": "NAIT_EXECUTOR", "value": "ray"}, {"name": "NAIT_RAY_WORKERS", "value": str(workers)}]
    pod_spec = {**shape.pod_spec(), "volumes": [{"name": "ray-shm", "empty_dir": {"medium": "Memory"}}]}
    container = {"resources": shape.resources(), "env": env,
                 "volume_mounts": [{"name": "ray-shm", "mount_path": "/dev/shm"}]}
    return {K8S_CONFIG_TAG: json.dumps({"container_config": container, "pod_spec_config": pod_spec})}
