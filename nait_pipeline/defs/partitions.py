"""Partitions: capabilities (static) and pool shards (dynamic, added by it_pool as data lands)."""

import dagster as dg

from nait_pipeline.lib.settings import CAPABILITIES

capability_partitions = dg.StaticPartitionsDefinition(list(CAPABILITIES))
POOL_SHARDS_NAME = "pool_shards"
pool_shard_partitions = dg.DynamicPartitionsDefinition(name=POOL_SHARDS_NAME)
