"""The foundation assets materialized for real: model, full shared pool, all target partitions, warehouse."""

from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq

from nait_pipeline.defs.assets.model import base_model
from nait_pipeline.defs.assets.pool import it_pool
from nait_pipeline.defs.assets.targets import target_sets, target_test_sets
from nait_pipeline.defs.assets.warehouse import warehouse
from nait_pipeline.defs.partitions import POOL_SHARDS_NAME, register_capabilities
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.io import sql
from nait_pipeline.lib.io.settings import CAPABILITIES

ASSETS = [base_model, it_pool, target_sets, target_test_sets, warehouse]


def materialize(instance, resource, selection, partition_key=None):
    result = dg.materialize(ASSETS, selection=selection, partition_key=partition_key, instance=instance,
                            resources={"pipeline": resource})
    assert result.success
    return result


def materialization(result, key):
    return result.asset_materializations_for_node(key)[0]


def test_foundation_end_to_end(shared_data, model_dir, store_dir, monkeypatch):
    resource = LakeResource(data_dir=str(shared_data), store_dir=str(store_dir), model=str(model_dir))
    with dg.instance_for_test() as instance:
        assert register_capabilities(instance, shared_data / "targets") == list(CAPABILITIES)
        first = materialize(instance, resource, ["base_model", "it_pool"])
        model_meta = materialization(first, "base_model").metadata
        assert model_meta["num_layers"].value == 30 and model_meta["hidden_size"].value == 576
        pool_meta = materialization(first, "it_pool").metadata
        assert pool_meta["rows_read"].value == 90_397 and pool_meta["quarantined"].value == 2
        shards = instance.get_dynamic_partitions(POOL_SHARDS_NAME)
        assert len(shards) == pool_meta["shards"].value and "alpaca_cleaned-0000" in shards

        for capability in CAPABILITIES:
            materialize(instance, resource, ["target_sets", "target_test_sets"], capability)
        result = materialize(instance, resource, ["warehouse"])
        assert all(c.passed for c in result.get_asset_check_evaluations())

        db = store_dir / "warehouse.duckdb"
        with sql.connect_read_only(db) as con:
            kept, quarantined, duplicates = con.execute(
                "SELECT (SELECT count(*) FROM pool_examples), (SELECT count(*) FROM pool_quarantine),"
                " (SELECT count(*) FROM pool_duplicates)").fetchone()
            assert kept + quarantined + duplicates == sum(
                pq.read_metadata(f).num_rows for f in (shared_data / "pools").glob("*.parquet"))
            reasons = con.execute(
                "SELECT example_id, reason FROM pool_quarantine WHERE file = ? ORDER BY example_id",
                ["code_alpaca_2k.parquet"]).fetchall()
            assert reasons == [("code_alpaca_2k-000237", "output: empty"), ("code_alpaca_2k-001859", "output: empty")]
            splits = {row[0] for row in con.execute("SELECT DISTINCT split FROM target_examples").fetchall()}
            assert "test" not in splits
            per_capability = dict(con.execute(
                "SELECT capability, count(*) FROM target_examples GROUP BY ALL").fetchall())
            assert per_capability == {"math": 256, "code": 256, "reasoning": 81, "knowledge": 256, "multilingual": 9}

        # Re-materializing the same input changes nothing: same ids, same data version, no new shards.
        before = pq.read_table(store_dir / "lake" / "pool" / "examples.parquet")
        again = materialize(instance, resource, ["it_pool"])
        assert pq.read_table(store_dir / "lake" / "pool" / "examples.parquet").equals(before)
        assert materialization(again, "it_pool").tags["dagster/data_version"] == (
            materialization(first, "it_pool").tags["dagster/data_version"])
        assert materialization(again, "it_pool").metadata["new_shards"].value == 0

        # A featurization that would not fit the disk is refused before the model loads, with the numbers.
        from nait_pipeline.defs.assets.features import pool_activations
        from nait_pipeline.lib.features import capacity

        monkeypatch.setattr(capacity, "free_disk_bytes", lambda folder: 10 * 2**20)
        refused = dg.materialize([*ASSETS, pool_activations], selection=["pool_activations"], instance=instance,
                                 partition_key="alpaca_cleaned-0000", resources={"pipeline": resource},
                                 raise_on_error=False)
        failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.event_specific_data.error.cause.message if failure.event_specific_data.error.cause \
            else failure.event_specific_data.error.message
        assert "featurizing 1 shard(s) (2,048 new rows" in message and "0.01 GiB free" in message
        assert not (store_dir / "lake" / "features" / "pool_activations" / "alpaca_cleaned-0000.parquet").exists()


def test_bad_pool_file_fails_without_touching_stored_data(shared_data, model_dir, store_dir, tmp_path):
    data = tmp_path / "data"
    (data / "pools").mkdir(parents=True)
    (data / "targets").symlink_to(shared_data / "targets")
    (data / "pools" / "good.jsonl").write_text('{"instruction": "Hi", "output": "Hello"}\n')
    resource = LakeResource(data_dir=str(data), store_dir=str(store_dir), model=str(model_dir))
    with dg.instance_for_test() as instance:
        materialize(instance, resource, ["it_pool"])
        stored = (store_dir / "lake" / "pool" / "examples.parquet").read_bytes()
        (data / "pools" / "broken.parquet").write_bytes(b"PAR1 garbage")
        result = dg.materialize(ASSETS, selection=["it_pool"], instance=instance, resources={"pipeline": resource},
                                raise_on_error=False)
        assert not result.success
        failure = result.get_step_failure_events()[0].step_failure_data.error
        assert "broken.parquet" in failure.to_string() and "not a readable Parquet file" in failure.to_string()
        assert (store_dir / "lake" / "pool" / "examples.parquet").read_bytes() == stored
