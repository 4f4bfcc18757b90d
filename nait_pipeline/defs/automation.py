"""Refresh when new data lands. Nothing here starts work by itself on a fresh `dagster dev`:

- `new_pool_files` (running) re-ingests the pool and checks it against the test items only when the pool
  folder differs from what the lake's pool was ingested from (seconds of work);
- `new_target_files` (running) registers capabilities dropped in the targets folder and builds their
  target sets (seconds);
- `unfeaturized_pool_shards` (stopped unless the settings file says `[automation]
  featurize_new_shards = true`: a whole pool is hours of CPU) featurizes shards that have no
  activations yet, at most `max_shards_per_tick` per evaluation, so only new rows go through the model;
- automation sensor `nightly_refresh` (stopped by default) evaluates the assets' declarative
  conditions: `it_pool` on cron at 02:00, then `warehouse` eagerly after it.
"""

import json

import dagster as dg

from nait_pipeline.defs.partitions import pool_shard_partitions, register_capabilities
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.data.targets import TargetFileError, user_capabilities
from nait_pipeline.lib.features.watch import (
    ingested_fingerprint,
    pool_folder_fingerprint,
    target_file_fingerprints,
    unfeaturized_shards,
    unreadable_pool_files,
)
from nait_pipeline.lib.io.settings import Settings

# The tag Dagster reads an observation's data version from (no public constant exports it).
DATA_VERSION_TAG = "dagster/data_version"

# A new pool is checked against the test items in the same run: every method's selection needs that check.
ingest_job = dg.define_asset_job("ingest_pool", selection=dg.AssetSelection.assets("it_pool", "pool_contamination"))
featurize_job = dg.define_asset_job("featurize_shard", selection=dg.AssetSelection.assets("pool_activations"))
target_job = dg.define_asset_job("build_target_sets",
                                 selection=dg.AssetSelection.assets("target_sets", "target_test_sets"))


# How often the data sensors run unless `[automation] sensor_interval_s` says otherwise (read when Dagster loads
# the definitions, see `automation` below).
DEFAULT_INTERVAL_S = 30


def _new_pool_files(context: dg.SensorEvaluationContext, pipeline: LakeResource):
    """Re-ingest the pool when the files in `$NAIT_DATA_DIR/pools` differ from those the lake's pool was
    ingested from (a file added, removed or rewritten) and have not changed for one interval (a file
    still being copied is not ingested)."""
    settings = pipeline.settings
    fingerprint = pool_folder_fingerprint(settings.data_dir / "pools")
    if not fingerprint:
        return dg.SkipReason(f"no pool folder at {settings.data_dir / 'pools'}")
    for name in unreadable_pool_files(settings.data_dir / "pools"):
        context.log.warning(f"pool file not readable: {name}")
    # The folder is an observed source: each new fingerprint is its data version.
    seen = context.cursor.removeprefix("pending:") if context.cursor else None
    observed = [] if fingerprint == seen else [dg.AssetObservation(
        asset_key="pool_folder", tags={DATA_VERSION_TAG: fingerprint}, metadata={"fingerprint": fingerprint})]
    if fingerprint == ingested_fingerprint(pipeline.layout):
        return dg.SensorResult(skip_reason=dg.SkipReason("the lake's pool was ingested from these files"),
                               asset_events=observed, cursor=fingerprint)
    if fingerprint == context.cursor:
        return dg.SkipReason("an ingest of these files was already requested")
    # A file still being copied changes between evaluations: ingest only once the folder held still
    # for one whole interval.
    if context.cursor != f"pending:{fingerprint}":
        return dg.SensorResult(skip_reason=dg.SkipReason("pool files changed; waiting one interval for them "
                                                         "to settle"), asset_events=observed,
                               cursor=f"pending:{fingerprint}")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=fingerprint)], cursor=fingerprint)


def _new_target_files(context: dg.SensorEvaluationContext, pipeline: LakeResource):
    """Register capabilities defined by files in `$NAIT_DATA_DIR/targets` and build the target sets of
    those that are new, or whose file was rewritten. A file that cannot be used is reported by name;
    the others keep working."""
    settings = pipeline.settings
    targets_dir = settings.data_dir / "targets"
    problems: list[str] = []
    try:
        names = register_capabilities(context.instance, targets_dir, problems)
        user = user_capabilities(targets_dir, [])
    except (TargetFileError, FileNotFoundError) as exc:
        return dg.SkipReason(f"targets folder not usable: {exc}")
    for problem in problems:
        context.log.warning(f"not used: {problem}")
    layout = pipeline.layout
    seen = json.loads(context.cursor) if context.cursor else {}
    current = target_file_fingerprints(targets_dir)
    requests = []
    for name in names:
        files = [user[name].file.name] + ([user[name].test_file.name] if user[name].test_file else []) \
            if name in user else []
        changed = seen and any(seen.get(f) != current.get(f) for f in files)
        if not layout.target_selection(name).exists() or changed:
            requests.append(dg.RunRequest(run_key=f"{name}:{[current.get(f) for f in files]}", partition_key=name))
    if not requests:
        reason = "every capability has its target set" + (f"; not used: {'; '.join(problems)}" if problems else "")
        return dg.SensorResult(skip_reason=dg.SkipReason(reason), cursor=json.dumps(current))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(current))


def pool_files_sensor(interval_s: int = DEFAULT_INTERVAL_S) -> dg.SensorDefinition:
    return dg.sensor(name="new_pool_files", job=ingest_job, minimum_interval_seconds=interval_s,
                     default_status=dg.DefaultSensorStatus.RUNNING)(_new_pool_files)


def target_files_sensor(interval_s: int = DEFAULT_INTERVAL_S) -> dg.SensorDefinition:
    return dg.sensor(name="new_target_files", job=target_job, minimum_interval_seconds=interval_s,
                     default_status=dg.DefaultSensorStatus.RUNNING)(_new_target_files)


new_pool_files = pool_files_sensor()
new_target_files = target_files_sensor()


def unfeaturized_shards_sensor(running: bool, interval_s: int = DEFAULT_INTERVAL_S) -> dg.SensorDefinition:
    """The shard sensor, running or stopped by default: the settings file decides, read when Dagster
    loads the definitions (see `automation` below), not when this module is imported."""

    @dg.sensor(name="unfeaturized_pool_shards", job=featurize_job, minimum_interval_seconds=interval_s,
               default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED)
    def unfeaturized_pool_shards(context: dg.SensorEvaluationContext, pipeline: LakeResource):
        """Featurize the shards of the current pool that have no activations yet (or activations of other
        texts), so only new rows run through the model. Stopped by default: on a whole pool this is hours
        of CPU; at most `max_shards_per_tick` shards per evaluation. Run keys carry the pool version: each
        shard is requested once per version."""
        missing = unfeaturized_shards(pipeline.layout)[: pipeline.max_shards_per_tick]
        if not missing:
            return dg.SkipReason("every shard of the current pool is featurized")
        pool_version = pipeline.pool().version
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"{pool_version}:{shard}", partition_key=shard) for shard in missing],
            dynamic_partitions_requests=[pool_shard_partitions.build_add_request(missing)],
        )

    return unfeaturized_pool_shards


# The rule lives on the assets (automation_condition); this sensor evaluates it. Stopped by default.
nightly_refresh = dg.AutomationConditionSensorDefinition(
    "nightly_refresh", target=dg.AssetSelection.assets("it_pool", "warehouse"),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Re-ingests the pool at 02:00 (it_pool: on cron) and rebuilds the warehouse after it (eager).")


@dg.definitions
def automation() -> dg.Definitions:
    """This module's sensors (a `@dg.definitions` function is all Dagster loads from a module)."""
    settings = Settings.from_env()
    interval = settings.sensor_interval_s
    return dg.Definitions(sensors=[pool_files_sensor(interval), target_files_sensor(interval), nightly_refresh,
                                   unfeaturized_shards_sensor(settings.featurize_new_shards, interval)])
