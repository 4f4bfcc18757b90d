"""Partitions: capabilities and pool shards (dynamic: registered as target files and pool data land),
and subset versions (registered by the selection assets)."""

from pathlib import Path

import dagster as dg

from nait_pipeline.lib.data.targets import discover_capabilities

CAPABILITIES_NAME = "capabilities"
capability_partitions = dg.DynamicPartitionsDefinition(name=CAPABILITIES_NAME)
POOL_SHARDS_NAME = "pool_shards"
pool_shard_partitions = dg.DynamicPartitionsDefinition(name=POOL_SHARDS_NAME)
SUBSET_VERSIONS_NAME = "subset_versions"
subset_partitions = dg.DynamicPartitionsDefinition(name=SUBSET_VERSIONS_NAME)


def register_subset_versions(instance: dg.DagsterInstance, versions: list[str]) -> None:
    """Make new subset versions partitions of the fine-tuning and evaluation assets."""
    new = [v for v in versions if not instance.has_dynamic_partition(SUBSET_VERSIONS_NAME, v)]
    if new:
        instance.add_dynamic_partitions(SUBSET_VERSIONS_NAME, new)


def register_capabilities(instance: dg.DagsterInstance, targets_dir: Path,
                          problems: list[str] | None = None) -> list[str]:
    """Register every capability the targets folder defines; returns them (built-in ones first).
    With a ``problems`` list, unusable files are reported there and the others still registered."""
    names = discover_capabilities(targets_dir, problems)
    new = [n for n in names if not instance.has_dynamic_partition(CAPABILITIES_NAME, n)]
    if new:
        instance.add_dynamic_partitions(CAPABILITIES_NAME, new)
    return names


def selectable_capabilities(instance: dg.DagsterInstance) -> list[str]:
    """The capabilities a selection covers: every registered capability, in registration order."""
    return list(instance.get_dynamic_partitions(CAPABILITIES_NAME))
