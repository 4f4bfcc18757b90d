"""The instruction-tuning pool: every pool file, validated, de-duplicated and sharded; its rows that
contain a test item; its near-duplicate clusters."""

from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from nait_pipeline.defs.metadata import markdown_table, path_value, table_schema
from nait_pipeline.defs.partitions import POOL_SHARDS_NAME, selectable_capabilities
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.data import decontamination, ingest
from nait_pipeline.lib.features.watch import pool_folder_fingerprint
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import read_metadata, write_parquet
from nait_pipeline.lib.selection import near_duplicates as nd

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
    code_version="2",
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
    """Every pool file under `$NAIT_DATA_DIR/pools` (Parquet, JSONL or JSON rows: instruction/input/output
    triples, or conversations as `messages` role/content or ShareGPT `conversations` turns) in one
    normalized table with stable ids, source and content hash.

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
            "conversations": pc.sum(pc.is_valid(kept_rows["messages"])).as_py() or 0,
            "flagged": pc.sum(pc.is_valid(kept_rows["ingest_flag"])).as_py() or 0,
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


class ContaminationConfig(dg.Config):
    ngram: int = decontamination.NGRAM
    """Words per n-gram (open-instruct's 13 by default)."""
    threshold: float = decontamination.THRESHOLD
    """Share of a test item's n-grams a pool field must hold to count as contaminated."""
    min_words: int = decontamination.MIN_WORDS
    """Test items shorter than this many words are only matched by their exact prompt."""


@dg.asset(
    group_name="pool",
    kinds={"parquet"},
    code_version="1",
    deps=["it_pool", dg.AssetDep("target_test_sets", partition_mapping=dg.AllPartitionMapping())],
    check_specs=[dg.AssetCheckSpec("no_contaminated_rows", asset="pool_contamination",
                                   description="no kept pool row contains a test item (warning: methods leave "
                                               "them out by default)")],
)
def pool_contamination(context: dg.AssetExecutionContext, config: ContaminationConfig,
                       pipeline: LakeResource) -> dg.MaterializeResult:
    """Every kept pool row checked against every test item the loop evaluates on (the test split of each
    built-in and user capability): word n-gram coverage of the item by each field, or its exact prompt.
    Rows land in the `pool_contamination` view; every method leaves them out unless its selection sets
    `exclude_contaminated: false`, and each subset's diagnostics count the ones it would have taken."""
    capabilities = selectable_capabilities(context.instance)
    result, version = decontamination.decontaminate_lake(pipeline.layout, capabilities, config.ngram,
                                                         config.threshold, config.min_words)
    stats, rows = result.stats, result.table
    if stats["items_without_text"]:
        context.log.warning(f"{len(stats['items_without_text'])} test item(s) have no prompt text and were not "
                            f"checked: {stats['items_without_text'][:10]}")
    per_row = {}
    for row in rows.to_pylist():
        per_row.setdefault(row["example_id"], row)
    sources = dict(zip(per_row, pipeline.pool().aligned(list(per_row), "source"))) if per_row else {}
    by = lambda key: dict(Counter(r[key] for r in per_row.values()).most_common())  # noqa: E731
    preview = pa.Table.from_pylist([{**r, "source": sources[i]} for i, r in list(per_row.items())[:10]]) \
        if per_row else rows
    return dg.MaterializeResult(
        metadata={"contaminated_rows": stats["contaminated_rows"], "matches": stats["matches"],
                  "exact_prompts": int(pc.sum(rows.column("exact_prompt")).as_py() or 0),
                  "by_benchmark": dg.MetadataValue.json(by("benchmark")),
                  "by_source": dg.MetadataValue.json(dict(Counter(sources.values()).most_common())),
                  "pool_rows": stats["pool_rows"], "test_items": stats["test_items"],
                  "items_without_text": len(stats["items_without_text"]), "capabilities": dg.MetadataValue.json(capabilities),
                  "rule": f"{config.ngram}-gram coverage >= {config.threshold} (items of {config.min_words}+ words), "
                          "or the exact prompt",
                  "seconds": stats["seconds"], "preview": markdown_table(preview),
                  "path": path_value(pipeline.layout.pool_contamination), "contamination_version": version},
        data_version=dg.DataVersion(version),
        check_results=[dg.AssetCheckResult(check_name="no_contaminated_rows", passed=not per_row,
                                           severity=dg.AssetCheckSeverity.WARN,
                                           metadata={"contaminated_rows": len(per_row),
                                                     "by_benchmark": dg.MetadataValue.json(by("benchmark"))})],
    )


class NearDuplicatesConfig(dg.Config):
    shingle: int = nd.SHINGLE
    """Words per MinHash shingle."""
    jaccard: float = nd.JACCARD
    """Estimated Jaccard similarity of two instructions (or responses) that makes them near-duplicates."""
    cosine: float = nd.COSINE
    """Cosine of two centred RDS+ embeddings that makes them near-duplicates."""


@dg.asset(
    group_name="pool",
    kinds={"parquet"},
    code_version="1",
    deps=["it_pool", dg.AssetDep("pool_activations", partition_mapping=dg.AllPartitionMapping())],
)
def pool_near_duplicates(context: dg.AssetExecutionContext, config: NearDuplicatesConfig,
                         pipeline: LakeResource) -> dg.MaterializeResult:
    """Near-duplicate clusters of the kept pool rows: MinHash LSH on instructions and on responses
    separately, and cosine on the stored RDS+ embeddings, joined into groups. Rows land in the
    `pool_near_duplicates` view; a selection's `max_per_cluster` keeps at most that many rows of a group among
    its candidates, and every subset's diagnostics report its duplicate share."""
    layout = pipeline.layout
    pool = pipeline.pool()
    table, stats = nd.find_near_duplicates(layout, config.shingle, config.jaccard, config.cosine)
    stores = [read_metadata(layout.pool_activations(s)).get("store_version") for s in pool.shards]
    version = sha256_json({"pool": pool.version, "stores": stores, "rule": [config.shingle, config.jaccard, config.cosine],
                           "code": "1"})[:16]
    write_parquet(table, layout.pool_near_duplicates, {"near_duplicates_version": version,
                                                       "pool_version": pool.version, "stats": stats})
    examples = []
    for kind in nd.KINDS:
        members = table.filter(pc.equal(table.column("kind"), kind)).sort_by([("cluster_size", "descending")])
        if len(members):
            cluster = members.column("cluster")[0].as_py()
            ids = members.filter(pc.equal(members.column("cluster"), cluster)).column("example_id").to_pylist()[:3]
            texts = pool.rows(ids, ["instruction", "output"])
            examples += [{"kind": kind, "cluster": cluster, "example_id": t["example_id"],
                          "instruction": t["instruction"][:80], "output": t["output"][:80]} for t in texts]
    per_kind = {kind: stats[kind] for kind in nd.KINDS}
    return dg.MaterializeResult(
        metadata={"rows_in_groups": stats["rows_in_groups"], "groups": stats["groups"],
                  "pool_rows": stats["pool_rows"], "per_kind": dg.MetadataValue.json(per_kind),
                  "largest_clusters": markdown_table(pa.Table.from_pylist(examples), len(examples))
                  if examples else dg.MetadataValue.md("no near-duplicates"),
                  "path": path_value(layout.pool_near_duplicates), "near_duplicates_version": version},
        data_version=dg.DataVersion(version),
    )
