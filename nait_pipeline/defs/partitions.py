"""Partitions: capabilities and pool shards (dynamic: registered as target files and pool data land),
and subset versions (registered by the selection assets)."""

from pathlib import Path

import dagster as dg
# The tags a runless materialization's data version is read from (no public name in Dagster 1.13).
from dagster._core.definitions.data_version import DATA_VERSION_IS_USER_PROVIDED_TAG, DATA_VERSION_TAG

from nait_pipeline.lib.data.targets import discover_capabilities
from nait_pipeline.lib.evaluation.runs import parse_run_key

CAPABILITIES_NAME = "capabilities"
capability_partitions = dg.DynamicPartitionsDefinition(name=CAPABILITIES_NAME)
POOL_SHARDS_NAME = "pool_shards"
pool_shard_partitions = dg.DynamicPartitionsDefinition(name=POOL_SHARDS_NAME)
SUBSET_VERSIONS_NAME = "subset_versions"
subset_partitions = dg.DynamicPartitionsDefinition(name=SUBSET_VERSIONS_NAME)


SUBSET_VERSION_ASSET = dg.AssetKey("subset_version")


def register_subset_versions(instance: dg.DagsterInstance, run_keys: list[str]) -> None:
    """Make run keys (subset versions, their training-order replicates, ``base``) partitions of the
    fine-tuning and evaluation assets, and record ``subset_version[key]`` for each key not recorded yet.

    Its data version is the subset version itself (a content hash), so a fine-tune is stale only when its
    own subset changes, never because another method re-selected."""
    new = [v for v in run_keys if not instance.has_dynamic_partition(SUBSET_VERSIONS_NAME, v)]
    if new:
        instance.add_dynamic_partitions(SUBSET_VERSIONS_NAME, new)
    recorded = instance.get_materialized_partitions(SUBSET_VERSION_ASSET)
    for key in dict.fromkeys(run_keys):
        if key not in recorded:
            subset, _ = parse_run_key(key)
            instance.report_runless_asset_event(dg.AssetMaterialization(
                SUBSET_VERSION_ASSET, partition=key, metadata={"subset_version": subset or "none (the base model)"},
                tags={DATA_VERSION_TAG: subset or key, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}))


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
