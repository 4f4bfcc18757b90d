"""The instruction-tuning pool: every pool file, validated, de-duplicated and sharded."""

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from nait_pipeline.defs.metadata import markdown_table, path_value, table_schema
from nait_pipeline.defs.partitions import POOL_SHARDS_NAME
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.data import ingest
from nait_pipeline.lib.features.watch import pool_folder_fingerprint
from nait_pipeline.lib.io.lake import write_parquet

pool_folder = dg.AssetSpec(
    "pool_folder",
    group_name="pool",
    kinds={"json", "parquet"},
    code_version="1",
    description="The pool files in `$NAIT_DATA_DIR/pools`, observed by the `new_pool_files` sensor: its data "
                "version is the folder's fingerprint (file names, sizes, modification times), so `it_pool` shows "
                "as stale in the UI as soon as a file is added, removed or rewritten.",
)


class PoolConfig(dg.Config):
    max_chars: int = ingest.DEFAULT_MAX_CHARS
    """Rows with an instruction, input or output longer than this go to quarantine."""
    shard_size: int = ingest.DEFAULT_SHARD_SIZE
    """Kept rows per featurization shard (a `pool_shards` partition)."""
    settle_seconds: float = ingest.SETTLE_SECONDS
    """A file modified more recently than this is still being written: wait for it, then refuse."""


@dg.asset(
    group_name="pool",
    kinds={"parquet"},
    code_version="1",
    deps=[pool_folder],
    automation_condition=dg.AutomationCondition.on_cron("0 2 * * *"),
    check_specs=[
        dg.AssetCheckSpec("every_row_accounted_for", asset="it_pool", blocking=True),
        dg.AssetCheckSpec("unique_example_ids", asset="it_pool", blocking=True),
        dg.AssetCheckSpec("no_unreadable_files", asset="it_pool",
                          description="every file in the pools folder is of a type ingestion reads"),
    ],
)
def it_pool(context: dg.AssetExecutionContext, config: PoolConfig, pipeline: LakeResource) -> dg.MaterializeResult:
    """Every pool file under `$NAIT_DATA_DIR/pools` (Parquet, JSONL or JSON with instruction/input/output)
    in one normalized table with stable ids, source and content hash.

    Invalid rows go to the quarantine table with file, row and reason; exact duplicates on
    (instruction, input) within and across pools are flagged; kept rows are cut into shards and each
    new shard is registered as a `pool_shards` partition. kept + duplicates + sampled out + quarantined = read.
    """
    settings = pipeline.settings
    # Fingerprinted before reading: the new_pool_files sensor compares the folder with what the lake holds.
    fingerprint = pool_folder_fingerprint(settings.data_dir / "pools")
    files = ingest.discover_pool_files(settings.data_dir / "pools")
    unsupported = ingest.unsupported_pool_files(settings.data_dir / "pools")
    if unsupported:
        context.log.warning(f"not ingested, unsupported file type (use {', '.join(ingest.POOL_SUFFIXES)}): {unsupported}")
    context.log.info(f"ingesting {len(files)} pool file(s): {[f.name for f in files]}")
    result = ingest.ingest_pools(files, max_chars=config.max_chars, sample=settings.pool_sample,
                                 shard_size=config.shard_size, settle_s=config.settle_seconds)
    layout = pipeline.layout
    file_changes = ingest.file_changes(layout.pool_files, result.file_hashes)
    if file_changes["removed"] or file_changes["rewritten"]:
        context.log.warning(f"pool files removed {file_changes['removed']} or rewritten {file_changes['rewritten']} "
                            "since the last ingest: subsets holding their rows refuse to export until re-selected")
    pool_table = result.pool_table()
    quarantine = result.quarantine_table()
    files_table = pa.table({"file": list(result.rows_read), "rows_read": list(result.rows_read.values()),
                            "sha256": [result.file_hashes[name] for name in result.rows_read]})
    version = result.pool_version()
    params = {"pool_version": version, "pool_sample": settings.pool_sample, "max_chars": config.max_chars,
              "shard_size": config.shard_size, "folder_fingerprint": fingerprint}
    write_parquet(quarantine, layout.pool_quarantine, params)
    write_parquet(files_table, layout.pool_files, params)
    write_parquet(pool_table, layout.pool_examples, params)

    shards = sorted({s for s in pool_table.column("shard").to_pylist() if s})
    existing = set(context.instance.get_dynamic_partitions(POOL_SHARDS_NAME))
    new_shards = [s for s in shards if s not in existing]
    if new_shards:
        context.instance.add_dynamic_partitions(POOL_SHARDS_NAME, new_shards)

    counts = result.counts()
    accounted = counts["kept"] + counts["duplicate"] + counts["sampled_out"] + counts["quarantined"]
    ids = pool_table.column("example_id")
    kept_rows = pool_table.filter(pc.equal(pool_table["status"], "kept"))
    return dg.MaterializeResult(
        metadata={
            "pool_version": version,
            "rows_read": counts["read"],
            "row_count": counts["kept"],
            "duplicates": counts["duplicate"],
            "sampled_out": counts["sampled_out"],
            "quarantined": counts["quarantined"],
            "rows_read_per_file": dg.MetadataValue.json(result.rows_read),
            "file_changes": dg.MetadataValue.json(file_changes),
            "shards": len(shards),
            "new_shards": len(new_shards),
            "path": path_value(layout.pool_examples),
            "preview": markdown_table(kept_rows.select(["example_id", "source", "instruction", "input", "output"])),
            "quarantine_preview": markdown_table(quarantine.select(["file", "row_index", "example_id", "reason"]), 10),
            "dagster/column_schema": table_schema(pool_table),
        },
        data_version=dg.DataVersion(version),
        check_results=[
            dg.AssetCheckResult(
                check_name="every_row_accounted_for",
                passed=accounted == counts["read"],
                metadata={**counts, "accounted": accounted},
            ),
            dg.AssetCheckResult(
                check_name="unique_example_ids",
                passed=len(ids) == len(pc.unique(ids)),
                metadata={"ids": len(ids)},
            ),
            dg.AssetCheckResult(
                check_name="no_unreadable_files",
                passed=not unsupported,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"not_ingested": dg.MetadataValue.json(unsupported)},
            ),
        ],
    )
