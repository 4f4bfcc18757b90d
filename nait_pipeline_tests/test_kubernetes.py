"""The Kubernetes recipe rendered the way dagster-k8s renders it: a featurization step pod gets one GPU from
its op tags, a featurization run pod N GPUs and a Ray from its job tags; the image, the settings and the
store's credentials come from the Helm values, credentials only through a secret."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

from nait_pipeline.defs.assets.features import pool_activations
from nait_pipeline.defs.assets.gradients import pool_gradients
from nait_pipeline.defs.kubernetes import kubernetes
from nait_pipeline.lib.execution.k8s import GPU_RESOURCE, PodShape, run_pod_tags
from nait_pipeline.lib.io.settings import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
IMAGE = "registry.example.com/nait-pipeline:0.1.0"


def launcher_config() -> DagsterK8sJobConfig:
    """The run launcher's job config as the chart builds it from deploy/helm/values.yaml."""
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert f"{deployment['image']['repository']}:{deployment['image']['tag']}" == IMAGE
    return DagsterK8sJobConfig(job_image=IMAGE, dagster_home="/opt/dagster/dagster_home",
                               image_pull_policy=launcher["imagePullPolicy"],
                               env_config_maps=[m["name"] for m in launcher["envConfigMaps"]],
                               env_secrets=[s["name"] for s in launcher["envSecrets"]],
                               volumes=launcher["volumes"], volume_mounts=launcher["volumeMounts"],
                               resources=launcher["resources"])


def render(tags: dict[str, str]) -> dict:
    job = construct_dagster_k8s_job(launcher_config(), ["dagster", "api", "execute_run"], "dagster-run-abc",
                                    user_defined_k8s_config=get_user_defined_k8s_config(tags))
    return job.to_dict()


def only_container(job: dict) -> dict:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def test_a_featurization_step_pod_gets_one_gpu_from_the_op_tags():
    for asset in (pool_activations, pool_gradients):
        (op_tags,) = [asset.op.tags]
        job = render(op_tags)
        container = only_container(job)
        assert container["image"] == IMAGE
        resources = container["resources"]
        assert resources["limits"][GPU_RESOURCE] == "1" and resources["requests"][GPU_RESOURCE] == "1"
        assert resources["limits"]["memory"] == resources["requests"]["memory"] == "64Gi"
        tolerations = job["spec"]["template"]["spec"]["tolerations"]
        assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in \
            [{k: v for k, v in t.items() if v is not None} for t in tolerations]


def test_a_featurization_run_pod_gets_its_gpus_and_a_ray_inside_from_the_job_tags(monkeypatch, tmp_path):
    settings = tmp_path / "nait_settings.toml"
    settings.write_text("[kubernetes]\nrun_gpus = 4\ncpu_per_gpu = 6\nmemory_gib_per_gpu = 40\n")
    monkeypatch.setenv("NAIT_SETTINGS", str(settings))
    (job_def,) = [j for j in kubernetes().jobs if j.name == "featurize_pool_in_a_gpu_pod"]
    job = render(job_def.tags)
    container = only_container(job)
    assert container["resources"]["limits"] == {GPU_RESOURCE: "4", "memory": "160Gi"}
    assert container["resources"]["requests"] == {GPU_RESOURCE: "4", "memory": "160Gi", "cpu": "24"}
    env = {e["name"]: e["value"] for e in container["env"] if e.get("value") is not None}
    assert env["NAIT_EXECUTOR"] == "ray" and env["NAIT_RAY_WORKERS"] == "4"
    mounts = {m["mount_path"]: m["name"] for m in container["volume_mounts"]}
    assert mounts["/dev/shm"] == "ray-shm" and mounts["/etc/nait"] == "nait-settings"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["ray-shm"]["empty_dir"]["medium"] == "Memory"
    assert volumes["nait-settings"]["config_map"]["name"] == "nait-settings"


def test_credentials_reach_the_pods_only_through_the_secret():
    job = render(run_pod_tags(PodShape(gpus=2)))
    container = only_container(job)
    sources = container["env_from"]
    assert {"secret_ref": "nait-object-store", "config_map_ref": "nait-settings-env"} == {
        key: s[key]["name"] for s in sources for key in ("secret_ref", "config_map_ref") if s.get(key)}
    rendered = json.dumps(job, default=str)
    assert not re.search(r"AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|aws_secret", rendered)
    for path in (DEPLOY / "helm" / "values.yaml", DEPLOY / "settings-configmap.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            assert not re.search(r"(AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID)\s*[:=]", json.dumps(document)), path


def test_a_pod_shape_is_checked():
    with pytest.raises(ValueError, match="gpus >= 0"):
        PodShape(gpus=-1)
    assert GPU_RESOURCE not in PodShape(gpus=0).resources()["limits"]
