"""Refresh when new data lands: a sensor on the pool folder, a sensor for shards not featurized yet,
and a nightly schedule that re-ingests the pool and rebuilds the warehouse."""

import dagster as dg

from nait_pipeline.defs.partitions import pool_shard_partitions
from nait_pipeline.defs.resources import PipelineResource
from nait_pipeline.lib.lake import read_metadata
from nait_pipeline.lib.layout import LakeLayout
from nait_pipeline.lib.watch import pool_folder_fingerprint, unfeaturized_shards

ingest_job = dg.define_asset_job("ingest_pool", selection=dg.AssetSelection.assets("it_pool"))
featurize_job = dg.define_asset_job("featurize_shard", selection=dg.AssetSelection.assets("pool_activations"))
refresh_job = dg.define_asset_job("nightly_refresh", selection=dg.AssetSelection.assets("it_pool", "warehouse"))


@dg.sensor(job=ingest_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def new_pool_files(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    """Re-ingest the pool when a file in `$NAIT_DATA_DIR/pools` is added, removed or rewritten."""
    fingerprint = pool_folder_fingerprint(pipeline.settings.data_dir / "pools")
    if not fingerprint:
        return dg.SkipReason(f"no pool folder at {pipeline.settings.data_dir / 'pools'}")
    if fingerprint == context.cursor:
        return dg.SkipReason("pool files unchanged")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=fingerprint)], cursor=fingerprint)


@dg.sensor(job=featurize_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def unfeaturized_pool_shards(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    """Featurize the shards of the current pool that have no activations yet, so only new rows run
    through the model. Run keys carry the pool version: each shard is requested once per version."""
    layout = LakeLayout(pipeline.settings.lake_dir)
    missing = unfeaturized_shards(layout)
    if not missing:
        return dg.SkipReason("every shard of the current pool is featurized")
    pool_version = read_metadata(layout.pool_examples)["pool_version"]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"{pool_version}:{shard}", partition_key=shard) for shard in missing],
        dynamic_partitions_requests=[pool_shard_partitions.build_add_request(missing)],
    )


nightly_refresh = dg.ScheduleDefinition(name="nightly_refresh", job=refresh_job, cron_schedule="0 2 * * *",
                                        default_status=dg.DefaultScheduleStatus.RUNNING)
