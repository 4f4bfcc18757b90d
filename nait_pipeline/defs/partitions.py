"""Partitions: capabilities (static) and pool shards (dynamic, added by it_pool as data lands)."""

import dagster as dg

from nait_pipeline.lib.settings import CAPABILITIES

capability_partitions = dg.StaticPartitionsDefinition(list(CAPABILITIES))
POOL_SHARDS_NAME = "pool_shards"
pool_shard_partitions = dg.DynamicPartitionsDefinition(name=POOL_SHARDS_NAME)
SUBSET_VERSIONS_NAME = "subset_versions"
subset_partitions = dg.DynamicPartitionsDefinition(name=SUBSET_VERSIONS_NAME)


def register_subset_versions(instance: dg.DagsterInstance, versions: list[str]) -> None:
    """Make new subset versions partitions of the fine-tuning and evaluation assets."""
    new = [v for v in versions if not instance.has_dynamic_partition(SUBSET_VERSIONS_NAME, v)]
    if new:
        instance.add_dynamic_partitions(SUBSET_VERSIONS_NAME, new)
