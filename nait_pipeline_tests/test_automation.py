"""Sensors: new pool files trigger ingestion; shards without activations trigger featurization only for them."""

from __future__ import annotations

import json

import dagster as dg
import pyarrow as pa
import pytest

from nait_pipeline.defs.automation import new_pool_files, unfeaturized_shards_sensor
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.data.ingest import POOL_SCHEMA
from nait_pipeline.lib.io.pool_view import shard_input_version
from nait_pipeline.lib.io.lake import write_parquet
from nait_pipeline.lib.io.layout import LakeLayout


def resource(tmp_path) -> LakeResource:
    return LakeResource(data_dir=str(tmp_path / "data"), store_dir=str(tmp_path / "store"))


def test_pool_sensor_fires_once_per_change(tmp_path):
    pools = tmp_path / "data" / "pools"
    pools.mkdir(parents=True)
    (pools / "a.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    res = {"pipeline": resource(tmp_path)}
    seen = new_pool_files(dg.build_sensor_context(resources=res))
    assert not seen.run_requests and seen.cursor.startswith("pending:")  # waits one interval to settle
    (pools / "a.jsonl").write_text(json.dumps({"instruction": "a", "output": "b, still growing"}) + "\n")
    grown = new_pool_files(dg.build_sensor_context(cursor=seen.cursor, resources=res))
    assert not grown.run_requests and grown.cursor != seen.cursor  # still changing: still waiting
    first = new_pool_files(dg.build_sensor_context(cursor=grown.cursor, resources=res))
    assert len(first.run_requests) == 1
    unchanged = new_pool_files(dg.build_sensor_context(cursor=first.cursor, resources=res))
    assert isinstance(unchanged, dg.SkipReason)
    (pools / "b.jsonl").write_text(json.dumps({"instruction": "c", "output": "d"}) + "\n")
    pending = new_pool_files(dg.build_sensor_context(cursor=first.cursor, resources=res))
    changed = new_pool_files(dg.build_sensor_context(cursor=pending.cursor, resources=res))
    assert len(changed.run_requests) == 1 and changed.cursor != first.cursor


def test_shard_sensor_requests_only_unfeaturized_shards(tmp_path):
    layout = LakeLayout(tmp_path / "store" / "lake")
    rows = [dict(example_id=f"p-{i}", pool="p", source="p", file="p.jsonl", row_index=i, instruction="q",
                 input="", output="a", content_hash=str(i), status="kept", duplicate_of=None, shard=f"p-000{i}")
            for i in range(3)]
    write_parquet(pa.Table.from_pylist(rows, schema=POOL_SCHEMA), layout.pool_examples, {"pool_version": "v1"})
    # p-0000 is featurized from the rows the pool holds; p-0001 from an earlier text of its row.
    write_parquet(pa.table({"example_id": ["p-0"]}), layout.pool_activations("p-0000"),
                  {"input_version": shard_input_version(["p-0"], ["0"])})
    write_parquet(pa.table({"example_id": ["p-1"]}), layout.pool_activations("p-0001"),
                  {"input_version": shard_input_version(["p-1"], ["text before the rewrite"])})
    with dg.instance_for_test() as instance:
        result = unfeaturized_shards_sensor(False)(dg.build_sensor_context(instance=instance,
                                                                   resources={"pipeline": resource(tmp_path)}))
    assert [r.partition_key for r in result.run_requests] == ["p-0001", "p-0002"]
    assert [r.run_key for r in result.run_requests] == ["v1:p-0001", "v1:p-0002"]


def test_pool_sensor_stays_quiet_when_the_lake_holds_these_files(tmp_path):
    """A fresh `dagster dev` over a store the set-up built must not re-ingest (and replace) its pool."""
    from nait_pipeline.lib.features.watch import pool_folder_fingerprint

    pools = tmp_path / "data" / "pools"
    pools.mkdir(parents=True)
    (pools / "a.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    layout = LakeLayout(tmp_path / "store" / "lake")
    write_parquet(POOL_SCHEMA.empty_table(), layout.pool_examples,
                  {"pool_version": "v1", "folder_fingerprint": pool_folder_fingerprint(pools)})
    quiet = new_pool_files(dg.build_sensor_context(resources={"pipeline": resource(tmp_path)}))
    assert not quiet.run_requests and "ingested from these files" in quiet.skip_reason.skip_message


def test_target_sensor_registers_dropped_capabilities_and_reports_bad_files(tmp_path):
    from nait_pipeline.defs.automation import new_target_files

    targets_dir = tmp_path / "data" / "targets"
    targets_dir.mkdir(parents=True)
    (targets_dir / "legal.jsonl").write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n")
    res = {"pipeline": resource(tmp_path)}
    with dg.instance_for_test() as instance:
        first = new_target_files(dg.build_sensor_context(instance=instance, resources=res))
        assert instance.get_dynamic_partitions("capabilities") == ["legal"]
        assert [r.partition_key for r in first.run_requests] == ["legal"]
        target_set = LakeLayout(tmp_path / "store" / "lake").target_selection("legal")
        write_parquet(pa.table({"example_id": ["legal-000000"]}), target_set)  # as the requested run would
        (targets_dir / "Bad Name.jsonl").write_text("{}\n")
        (targets_dir / "contracts.jsonl").write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n")
        mixed = new_target_files(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=res))
        # The bad file is reported by name; the good new one is still registered and built.
        assert [r.partition_key for r in mixed.run_requests] == ["contracts"]
        assert "contracts" in instance.get_dynamic_partitions("capabilities")
        (targets_dir / "contracts.jsonl").unlink()
        bad = new_target_files(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=res))
        assert "Bad Name.jsonl" in bad.skip_reason.skip_message
        (targets_dir / "Bad Name.jsonl").unlink()
        (targets_dir / "legal.jsonl").write_text(json.dumps({"prompt": "p2", "answer": "a2"}) + "\n")
        rewritten = new_target_files(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=res))
        assert [r.partition_key for r in rewritten.run_requests] == ["legal"]


def _loaded_sensor(name: str) -> dg.SensorDefinition:
    from nait_pipeline.definitions import defs

    return next(s for s in defs().sensors if s.name == name)


def test_automation_that_starts_hours_of_work_is_off_by_default(tmp_path, monkeypatch):
    from nait_pipeline.defs.automation import nightly_refresh

    monkeypatch.setenv("NAIT_SETTINGS", str(tmp_path / "none.toml"))
    assert _loaded_sensor("unfeaturized_pool_shards").default_status == dg.DefaultSensorStatus.STOPPED
    assert nightly_refresh.default_status == dg.DefaultSensorStatus.STOPPED


def test_the_settings_file_is_read_when_definitions_load_not_at_import(tmp_path, monkeypatch):
    """Importing `defs/` has no side effects: a broken settings file fails the load, not the import, and
    a file turning the shard sensor on is seen by the next load without re-importing anything."""
    import importlib

    import nait_pipeline.defs.automation as automation

    settings_file = tmp_path / "nait_settings.toml"
    settings_file.write_text("not = [valid toml\n")
    monkeypatch.setenv("NAIT_SETTINGS", str(settings_file))
    importlib.reload(automation)  # reads nothing
    with pytest.raises(Exception, match=r"automation.py \(error\)") as failed:
        _loaded_sensor("unfeaturized_pool_shards")
    assert "not valid TOML" in str(failed.value.__cause__)
    settings_file.write_text("[automation]\nfeaturize_new_shards = true\nmax_shards_per_tick = 1\n")
    assert _loaded_sensor("unfeaturized_pool_shards").default_status == dg.DefaultSensorStatus.RUNNING
    assert _loaded_sensor("new_pool_files").minimum_interval_seconds == 30
    settings_file.write_text("[automation]\nsensor_interval_s = 5\n")
    assert {_loaded_sensor(name).minimum_interval_seconds
            for name in ("new_pool_files", "new_target_files", "unfeaturized_pool_shards")} == {5}
    settings_file.write_text("[automation]\nsensor_interval_s = 0\n")
    with pytest.raises(Exception, match=r"automation.py \(error\)") as failed:
        _loaded_sensor("new_pool_files")
    assert "sensor_interval_s must be >= 1" in str(failed.value.__cause__)


def test_one_settings_file_with_environment_overrides(tmp_path, monkeypatch):
    from nait_pipeline.lib.io.settings import PROJECT_ROOT, Settings

    settings_file = tmp_path / "nait_settings.toml"
    settings_file.write_text('data_dir = "../shared/data"\npool_sample = 100\n'
                             '[automation]\nfeaturize_new_shards = true\n')
    monkeypatch.setenv("NAIT_SETTINGS", str(settings_file))
    for name in ("NAIT_DATA_DIR", "NAIT_STORE_DIR", "NAIT_MODEL", "NAIT_POOL_SAMPLE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert settings.data_dir == (PROJECT_ROOT / "../shared/data").resolve() and settings.pool_sample == 100
    assert settings.featurize_new_shards and settings.max_shards_per_tick == 4
    monkeypatch.setenv("NAIT_POOL_SAMPLE", "")  # empty: the whole pool, whatever the file says
    assert Settings.from_env().pool_sample is None
    monkeypatch.setenv("NAIT_POOL_SAMPLE", "7")
    assert Settings.from_env().pool_sample == 7
    settings_file.write_text("pool_sampel = 3\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['pool_sampel'\]"):
        Settings.from_env()


def test_pool_sensor_names_an_unreadable_file_and_still_works(tmp_path):
    pools = tmp_path / "data" / "pools"
    pools.mkdir(parents=True)
    (pools / "a.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    (pools / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")  # a dangling link
    res = {"pipeline": resource(tmp_path)}
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=res)
        pending = new_pool_files(context)
        assert pending.cursor.startswith("pending:")
        ready = new_pool_files(dg.build_sensor_context(instance=instance, cursor=pending.cursor, resources=res))
        assert len(ready.run_requests) == 1  # the ingest runs and fails naming gone.jsonl; the sensor goes on
    from nait_pipeline.lib.features.watch import unreadable_pool_files

    assert unreadable_pool_files(pools) == ["gone.jsonl (No such file or directory)"]


def test_the_pool_folder_is_observed_with_its_fingerprint_as_data_version(tmp_path):
    from nait_pipeline.lib.features.watch import pool_folder_fingerprint

    pools = tmp_path / "data" / "pools"
    pools.mkdir(parents=True)
    (pools / "a.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    result = new_pool_files(dg.build_sensor_context(resources={"pipeline": resource(tmp_path)}))
    (observation,) = result.asset_events
    assert observation.asset_key == dg.AssetKey("pool_folder")
    assert observation.tags["dagster/data_version"] == pool_folder_fingerprint(pools)
    again = new_pool_files(dg.build_sensor_context(cursor=result.cursor, resources={"pipeline": resource(tmp_path)}))
    assert not again.asset_events  # observed once per change
