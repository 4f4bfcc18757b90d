"""Sensors: new pool files trigger ingestion; shards without activations trigger featurization only for them."""

from __future__ import annotations

import json

import dagster as dg
import pyarrow as pa

from nait_pipeline.defs.automation import new_pool_files, unfeaturized_pool_shards
from nait_pipeline.defs.resources import PipelineResource
from nait_pipeline.lib.ingest import POOL_SCHEMA
from nait_pipeline.lib.lake import write_parquet
from nait_pipeline.lib.layout import LakeLayout


def resource(tmp_path) -> PipelineResource:
    return PipelineResource(data_dir=str(tmp_path / "data"), store_dir=str(tmp_path / "store"))


def test_pool_sensor_fires_once_per_change(tmp_path):
    pools = tmp_path / "data" / "pools"
    pools.mkdir(parents=True)
    (pools / "a.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    res = {"pipeline": resource(tmp_path)}
    first = new_pool_files(dg.build_sensor_context(resources=res))
    assert len(first.run_requests) == 1
    unchanged = new_pool_files(dg.build_sensor_context(cursor=first.cursor, resources=res))
    assert isinstance(unchanged, dg.SkipReason)
    (pools / "b.jsonl").write_text(json.dumps({"instruction": "c", "output": "d"}) + "\n")
    changed = new_pool_files(dg.build_sensor_context(cursor=first.cursor, resources=res))
    assert len(changed.run_requests) == 1 and changed.cursor != first.cursor


def test_shard_sensor_requests_only_unfeaturized_shards(tmp_path):
    layout = LakeLayout(tmp_path / "store" / "lake")
    rows = [dict(example_id=f"p-{i}", pool="p", source="p", file="p.jsonl", row_index=i, instruction="q",
                 input="", output="a", content_hash=str(i), status="kept", duplicate_of=None, shard=f"p-000{i}")
            for i in range(3)]
    write_parquet(pa.Table.from_pylist(rows, schema=POOL_SCHEMA), layout.pool_examples, {"pool_version": "v1"})
    layout.pool_activations("p-0000").parent.mkdir(parents=True)
    layout.pool_activations("p-0000").write_bytes(b"done")
    with dg.instance_for_test() as instance:
        result = unfeaturized_pool_shards(dg.build_sensor_context(instance=instance,
                                                                   resources={"pipeline": resource(tmp_path)}))
    assert [r.partition_key for r in result.run_requests] == ["p-0001", "p-0002"]
    assert [r.run_key for r in result.run_requests] == ["v1:p-0001", "v1:p-0002"]
