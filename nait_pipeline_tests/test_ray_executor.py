"""Pool shards featurized by Ray workers: the same stores as the run's own process, a worker lost mid-shard
retried without a partial file, an analyst's queries undisturbed, the lake on S3 written by the workers."""

from __future__ import annotations

import json
import os
import signal
import threading

import dagster as dg
import numpy as np
import pytest

from nait_pipeline.defs.assets.features import pool_activations
from nait_pipeline.defs.assets.model import base_model
from nait_pipeline.defs.assets.pool import it_pool
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.execution.executors import ShardExecutor, ShardFailedError
from nait_pipeline.lib.execution.shard_tasks import FORWARD, ShardTask, verify_outcome
from nait_pipeline.lib.features.featurize import FeaturizerSpec
from nait_pipeline.lib.features.feature_store import read_features
from nait_pipeline.lib.io import sql
from nait_pipeline.lib.io.contract import ensure_contract_tables
from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.lib.io.pool_view import PoolView

ASSETS = [base_model, it_pool, pool_activations]
QUICK = {"ops": {"it_pool": {"config": {"settle_seconds": 0.0}}}}
SHARDS = 6
RAY = {"executor": "ray", "ray_workers": 2, "ray_gpus_per_worker": 0.5}  # 2 workers share the logical GPU


def write_pools(data, rows_per_shard: int = 4) -> None:
    (data / "pools").mkdir(parents=True)
    for shard in range(SHARDS):
        (data / "pools" / f"p{shard}.jsonl").write_text("".join(
            json.dumps({"instruction": f"Count from {shard} to {shard + i}.",
                        "output": " ".join(map(str, range(shard, shard + i + 1)))}) + "\n"
            for i in range(rows_per_shard)))


def ingest(instance, resource) -> list[str]:
    assert dg.materialize(ASSETS, selection=["base_model", "it_pool"], instance=instance,
                          resources={"pipeline": resource}, run_config=QUICK).success
    shards = PoolView.open(resource.layout).shards
    assert len(shards) == SHARDS
    return shards


def featurize_range(instance, resource, shards) -> dict:
    tags = {"dagster/asset_partition_range_start": shards[0], "dagster/asset_partition_range_end": shards[-1]}
    result = dg.materialize(ASSETS, selection=["pool_activations"], instance=instance, tags=tags,
                            resources={"pipeline": resource})
    assert result.success
    return result.asset_materializations_for_node("pool_activations")[0].metadata


def test_ray_workers_on_an_s3_lake_write_the_stores_the_local_executor_writes(
        local_ray, model_dir, tmp_path, s3_store, s3_endpoint):
    data = tmp_path / "data"
    write_pools(data)
    local = LakeResource(data_dir=str(data), store_dir=str(tmp_path / "store"), model=str(model_dir))
    remote = LakeResource(data_dir=str(data), store_dir=s3_store, endpoint_url=s3_endpoint,
                          local_dir=str(tmp_path / "local"), model=str(model_dir), **RAY)
    with dg.instance_for_test() as instance:
        shards = ingest(instance, local)
        local_meta = featurize_range(instance, local, shards)
    with dg.instance_for_test() as instance:
        assert ingest(instance, remote) == shards
        # An analyst queries the warehouse, read-only, the whole time the workers write the lake.
        settings = remote.settings
        ensure_contract_tables(settings.lake_dir)
        sql.build_warehouse(settings.warehouse_path, settings.lake_dir)
        stop, counts, errors = threading.Event(), [], []

        def analyst() -> None:
            while not stop.is_set():
                try:
                    with sql.connect_read_only(settings.warehouse_path) as con:
                        counts.append(con.execute("SELECT count(*) FROM pool_examples").fetchone()[0])
                except Exception as exc:  # noqa: BLE001 - any error is the failure this test looks for
                    errors.append(repr(exc))

        reader = threading.Thread(target=analyst)
        reader.start()
        try:
            ray_meta = featurize_range(instance, remote, shards)
        finally:
            stop.set()
            reader.join()
    assert errors == [] and len(counts) > 5 and set(counts) == {SHARDS * 4}
    assert ray_meta["executor"].value.startswith("ray") and ray_meta["device"].value == "cpu"
    assert ray_meta["recomputed_shards"].value == SHARDS and ray_meta["range_version"] == local_meta["range_version"]
    workers = {line.split("|")[-2].strip() for line in ray_meta["per_shard"].value.splitlines()[2:]}
    assert len(workers) == 2, ray_meta["per_shard"].value  # both workers took shards
    for shard in shards:
        ours, theirs = local.layout.pool_activations(shard), remote.layout.pool_activations(shard)
        assert read_metadata(theirs)["store_version"] == read_metadata(ours)["store_version"]
        a, b = read_features([ours]), read_features([theirs])
        assert a.ids == b.ids
        np.testing.assert_array_equal(a.vectors["layer_mean"], b.vectors["layer_mean"])



def test_a_worker_killed_mid_shard_is_retried_and_leaves_no_partial_file(local_ray, model_dir, tmp_path):
    data = tmp_path / "data"
    write_pools(data, rows_per_shard=12)
    resource = LakeResource(data_dir=str(data), store_dir=str(tmp_path / "store"), model=str(model_dir), **RAY)
    with dg.instance_for_test() as instance:
        shards = ingest(instance, resource)
    settings = resource.settings
    spec = FeaturizerSpec(dtype="float32")
    tasks = [ShardTask(FORWARD, shard, {"spec": spec, "device": "cpu"}) for shard in shards]
    executor = ShardExecutor("ray", workers=2, gpus_per_worker=0.5, max_retries=2)
    killed = []
    with executor.start(settings, len(tasks)) as workers:
        first_pids = workers.pids()

        def on_done(task, outcome):
            verify_outcome(settings, task, outcome)
            if not killed:  # the other worker is mid-shard: its process dies without a word
                victim = next(pid for pid in first_pids if not outcome.worker.startswith(f"{pid}@"))
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        outcomes = workers.run(tasks, on_done)
    assert [o.shard for o in outcomes] == shards and not any(any(o.reused) for o in outcomes)
    restarted = {int(o.worker.split("@")[0]) for o in outcomes} - set(first_pids)
    assert killed and restarted, "the killed worker's shard must have run on its restarted process"
    folder = settings.layout.pool_activations(shards[0]).parent
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible == sorted(settings.layout.pool_activations(s).name for s in shards)


def test_a_shard_that_fails_names_itself_and_its_cause(local_ray, model_dir, tmp_path):
    data = tmp_path / "data"
    write_pools(data)
    resource = LakeResource(data_dir=str(data), store_dir=str(tmp_path / "store"), model=str(model_dir), **RAY)
    with dg.instance_for_test() as instance:
        shards = ingest(instance, resource)
    task = ShardTask(FORWARD, "no-such-shard", {"spec": FeaturizerSpec(dtype="float32"), "device": "cpu"})
    with ShardExecutor("ray", workers=1, gpus_per_worker=0).start(resource.settings, 1) as workers:
        with pytest.raises(ShardFailedError, match=r"shard no-such-shard: ValueError: .*no rows"):
            workers.run([task], lambda *_: None)
    assert shards and not resource.layout.pool_activations("no-such-shard").exists()


def test_a_ray_that_is_not_there_is_named_at_once(tmp_path):
    import socket
    import time

    from nait_pipeline.lib.execution.executors import ExecutorUnavailableError

    with socket.socket() as unused:  # a port nothing listens at
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    started = time.perf_counter()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ExecutorUnavailableError, match=f"Ray at {address} is not reachable"):
            with ShardExecutor("ray", address=address).start(None, 1):
                pass
    assert time.perf_counter() - started < 30


def test_the_cli_hands_the_pool_to_ray_in_shard_ranges(local_ray, model_dir, tmp_path, monkeypatch, capsys):
    """`executor = "ray"` from the CLI: the shards go in ranges (one model load per worker per range), and
    the default one-GPU-per-worker on a one-GPU cluster places one worker instead of waiting for a second."""
    from nait_pipeline import cli
    from nait_pipeline.lib.features.kinds import SHARD
    from nait_pipeline.lib.io.plan import Step
    from nait_pipeline.lib.io.settings import Settings

    data = tmp_path / "data"
    write_pools(data)
    for name, value in {"NAIT_DATA_DIR": data, "NAIT_STORE_DIR": tmp_path / "store", "NAIT_MODEL": model_dir,
                        "NAIT_EXECUTOR": "ray", "DAGSTER_HOME": tmp_path / "home"}.items():
        monkeypatch.setenv(name, str(value))
    cli.run_steps([(["base_model", "it_pool"], None)], QUICK)
    settings = Settings.from_env()
    cli.run_plan([Step(("pool_activations",), SHARD)], settings)
    out = capsys.readouterr().out
    shards = PoolView.open(settings.layout).shards
    assert f"pool_activations [{shards[0]} .. {shards[-1]}]: done" in out, out
    assert "recomputed_shards=6" in out and "executor=ray" in out
    assert all(settings.layout.pool_activations(shard).exists() for shard in shards)


def test_a_ray_jobs_report_is_relayed_once_and_never_trusted_for_a_missing_file(tmp_path):
    from nait_pipeline.lib.execution.ray_jobs import OUTCOME_PREFIX, RayJobWorkers, decode, encode
    from nait_pipeline.lib.execution.shard_tasks import ShardOutcome
    from nait_pipeline.lib.io.settings import Settings

    settings = Settings(data_dir=tmp_path, store_dir=tmp_path / "store", model=None, pool_sample=None)
    task = ShardTask(FORWARD, "p0-0000", {"spec": FeaturizerSpec(dtype="float32"), "device": "cpu"})
    assert decode(encode([settings, task])) == [settings, task]
    logged, done = [], []
    workers = RayJobWorkers(settings, "http://127.0.0.1:1", 2, 1.0, 0.0, 2, logged.append)
    assert workers.device("auto") == "cpu"
    outcomes = {}
    line = OUTCOME_PREFIX + '{"shard": "p0-0000", "versions": ["v1"], "reused": [false], "stats": {}, "worker": "1@h"}'
    for text in ["(ShardWorker) featurizing p0-0000", OUTCOME_PREFIX + "{not json", line, line]:
        workers._relay(text, {task.shard: task}, outcomes, lambda t, o: done.append(o))
    assert done == [ShardOutcome("p0-0000", ["v1"], [False], {}, "1@h")]  # the repeated line counted once
    assert logged[0] == "(ShardWorker) featurizing p0-0000" and "unreadable shard report" in logged[1]
    with pytest.raises(ShardFailedError, match="shard p0-0000: the Ray job succeeded but .* is missing"):
        workers._from_files(task)
    with pytest.raises(ValueError, match="gpus_per_worker"):
        RayJobWorkers(settings, "http://127.0.0.1:1", 2, 1.0, -1.0, 2, None)
