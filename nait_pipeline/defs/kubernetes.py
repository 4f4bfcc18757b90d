"""Jobs whose runs get a GPU pod of their own on Kubernetes (deploy/README.md): the pool's forward and
gradient stores featurized by a Ray inside that pod, one worker per GPU. Elsewhere the tags are inert."""

import dagster as dg

from nait_pipeline.lib.execution.k8s import PodShape, run_pod_tags
from nait_pipeline.lib.io.settings import Settings


@dg.definitions
def kubernetes() -> dg.Definitions:
    settings = Settings.from_env()
    tags = run_pod_tags(PodShape(settings.k8s_run_gpus, settings.k8s_cpu_per_gpu, settings.k8s_memory_gib_per_gpu))
    return dg.Definitions(jobs=[
        dg.define_asset_job("featurize_pool_in_a_gpu_pod", selection=dg.AssetSelection.assets("pool_activations"),
                            tags=tags, description="Pool shards' forward stores in one pod: a Ray on its GPUs."),
        dg.define_asset_job("pool_gradients_in_a_gpu_pod", selection=dg.AssetSelection.assets("pool_gradients"),
                            tags=tags, description="Pool shards' gradient stores in one pod: a Ray on its GPUs."),
    ])
