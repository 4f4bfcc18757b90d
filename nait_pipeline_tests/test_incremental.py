"""New pool data costs only its own rows: a file added to a featurized pool featurizes its rows alone,
and the pool asset reports files added, removed or rewritten since the last ingest."""

from __future__ import annotations

import json

import dagster as dg

from nait_pipeline.lib.io.pool_view import PoolView
from nait_pipeline.defs.assets.features import pool_activations
from nait_pipeline.defs.assets.model import base_model
from nait_pipeline.defs.assets.pool import it_pool
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.features.watch import unfeaturized_shards
from nait_pipeline.lib.io.layout import LakeLayout

ASSETS = [base_model, it_pool, pool_activations]
QUICK = {"ops": {"it_pool": {"config": {"settle_seconds": 0.0}}}}


def write_pool(path, start: int, n: int) -> None:
    path.write_text("".join(json.dumps({"instruction": f"Count to {i}.", "output": " ".join(map(str, range(i % 5 + 1)))})
                            + "\n" for i in range(start, start + n)))


def featurize_all(instance, resource, layout) -> dict[str, dict]:
    processed = {}
    for shard in PoolView.open(layout).shards:
        result = dg.materialize(ASSETS, selection=["pool_activations"], partition_key=shard, instance=instance,
                                resources={"pipeline": resource})
        metadata = result.asset_materializations_for_node("pool_activations")[0].metadata
        processed[shard] = {"rows": metadata["row_count"].value, "reused": metadata["reused"].value}
    return processed


def test_an_added_file_featurizes_only_its_rows(model_dir, tmp_path):
    data = tmp_path / "data"
    (data / "pools").mkdir(parents=True)
    write_pool(data / "pools" / "first.jsonl", 0, 12)
    resource = LakeResource(data_dir=str(data), store_dir=str(tmp_path / "store"), model=str(model_dir))
    layout = LakeLayout(tmp_path / "store" / "lake")
    with dg.instance_for_test() as instance:
        assert dg.materialize(ASSETS, selection=["base_model", "it_pool"], instance=instance,
                              resources={"pipeline": resource}, run_config=QUICK).success
        first = featurize_all(instance, resource, layout)
        assert first == {"first-0000": {"rows": 12, "reused": False}}

        write_pool(data / "pools" / "second.jsonl", 100, 7)
        ingest = dg.materialize(ASSETS, selection=["it_pool"], instance=instance, resources={"pipeline": resource},
                                run_config=QUICK)
        changes = ingest.asset_materializations_for_node("it_pool")[0].metadata["file_changes"].value
        assert changes == {"added": ["second.jsonl"], "removed": [], "rewritten": []}
        assert unfeaturized_shards(layout) == ["second-0000"]
        second = featurize_all(instance, resource, layout)
        computed = sum(s["rows"] for s in second.values() if not s["reused"])
        assert computed == 7 and second["first-0000"]["reused"]

        (data / "pools" / "first.jsonl").unlink()
        write_pool(data / "pools" / "second.jsonl", 200, 7)
        again = dg.materialize(ASSETS, selection=["it_pool"], instance=instance, resources={"pipeline": resource},
                               run_config=QUICK)
        changes = again.asset_materializations_for_node("it_pool")[0].metadata["file_changes"].value
        assert changes == {"added": [], "removed": ["first.jsonl"], "rewritten": ["second.jsonl"]}
        assert unfeaturized_shards(layout) == ["second-0000"]  # its texts changed: featurized again


def test_a_backfill_range_featurizes_many_shards_in_one_run(model_dir, tmp_path):
    """The backfill policy puts several shards in one run (one model load); each shard's store is
    written as a single-shard run would write it, and a rerun of the range recomputes nothing."""
    data = tmp_path / "data"
    (data / "pools").mkdir(parents=True)
    write_pool(data / "pools" / "a.jsonl", 0, 5)
    write_pool(data / "pools" / "b.jsonl", 50, 4)
    resource = LakeResource(data_dir=str(data), store_dir=str(tmp_path / "store"), model=str(model_dir))
    layout = LakeLayout(tmp_path / "store" / "lake")
    assert pool_activations.backfill_policy.max_partitions_per_run > 1
    with dg.instance_for_test() as instance:
        assert dg.materialize(ASSETS, selection=["base_model", "it_pool"], instance=instance,
                              resources={"pipeline": resource}, run_config=QUICK).success
        shards = PoolView.open(layout).shards
        assert shards == ["a-0000", "b-0000"]
        ranged = {"dagster/asset_partition_range_start": shards[0], "dagster/asset_partition_range_end": shards[-1]}
        first = dg.materialize(ASSETS, selection=["pool_activations"], instance=instance, tags=ranged,
                               resources={"pipeline": resource})
        events = first.asset_materializations_for_node("pool_activations")
        assert sorted(e.partition for e in events) == shards
        assert events[0].metadata["row_count"].value == 9 and events[0].metadata["recomputed_shards"].value == 2
        assert unfeaturized_shards(layout) == []
        # The same store a single-shard run finds up to date.
        single = featurize_all(instance, resource, layout)
        assert single == {"a-0000": {"rows": 5, "reused": True}, "b-0000": {"rows": 4, "reused": True}}
        again = dg.materialize(ASSETS, selection=["pool_activations"], instance=instance, tags=ranged,
                               resources={"pipeline": resource})
        assert again.asset_materializations_for_node("pool_activations")[0].metadata["recomputed_shards"].value == 0
