"""Target sets per capability: in-domain rows for selection, and test rows kept for evaluation."""

import dagster as dg

from nait_pipeline.defs.metadata import markdown_table, path_value
from nait_pipeline.defs.partitions import capability_partitions
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.data import decontamination, targets
from nait_pipeline.lib.io.hashing import sha256_lines
from nait_pipeline.lib.io.lake import write_parquet


class TargetSetConfig(dg.Config):
    size: int = targets.DEFAULT_TARGET_SIZE
    """In-domain rows per capability (a seeded sample when more are available)."""


def _version(rows: list[dict]) -> str:
    return sha256_lines(f"{r['example_id']}\t{r['prompt']}\t{r['answer']}" for r in rows)[:16]


def _result(rows: targets.TargetRows, path, checks: list[dg.AssetCheckResult], **extra) -> dg.MaterializeResult:
    table = targets.to_table(rows.rows)
    splits: dict[str, int] = {}
    for row in rows.rows:
        key = f"{row['task'].split('/')[0]}:{row['split']}"
        splits[key] = splits.get(key, 0) + 1
    return dg.MaterializeResult(
        metadata={
            "row_count": len(rows.rows),
            "available": rows.available,
            "rows_by_source_and_split": dg.MetadataValue.json(splits),
            "skipped_rows": dg.MetadataValue.json(rows.skipped),
            "path": path_value(path),
            "preview": markdown_table(table.select(["example_id", "task", "split", "prompt", "answer"])),
            **extra,
        },
        data_version=dg.DataVersion(_version(rows.rows)),
        check_results=checks,
    )


@dg.asset(
    group_name="targets",
    kinds={"parquet"},
    code_version="1",
    partitions_def=capability_partitions,
    check_specs=[dg.AssetCheckSpec("no_test_rows", asset="target_sets", blocking=True)],
)
def target_sets(context: dg.AssetExecutionContext, config: TargetSetConfig, pipeline: LakeResource) -> dg.MaterializeResult:
    """In-domain examples of one capability from the benchmarks' dev/train/few-shot splits (never test):
    GSM8K train (math), MBPP train/dev/few-shot (code), BBH CoT exemplars (reasoning), MMLU dev
    (knowledge), TyDiQA one-shot exemplars (multilingual). A seeded sample of `size` rows."""
    capability = context.partition_key
    settings = pipeline.settings
    rows = targets.selection_rows(settings.data_dir / "targets", capability, config.size)
    if not rows.rows:
        raise ValueError(f"no in-domain rows for capability {capability!r} in {settings.data_dir / 'targets'}")
    path = write_parquet(targets.to_table(rows.rows), pipeline.layout.target_selection(capability))
    splits = sorted({r["split"] for r in rows.rows})
    return _result(
        rows,
        path,
        [dg.AssetCheckResult(check_name="no_test_rows", passed=targets.EVALUATION_SPLIT not in splits,
                             metadata={"splits": ", ".join(splits)})],
        requested_size=config.size,
    )


@dg.asset(
    group_name="targets",
    kinds={"parquet"},
    code_version="1",
    partitions_def=capability_partitions,
    check_specs=[dg.AssetCheckSpec("has_test_rows", asset="target_test_sets"),
                 dg.AssetCheckSpec("test_rows_not_in_domain", asset="target_test_sets",
                                   description="no test prompt is also one of the capability's in-domain prompts")],
)
def target_test_sets(context: dg.AssetExecutionContext, pipeline: LakeResource) -> dg.MaterializeResult:
    """Held-out test rows of one capability, for evaluation only: no selection method reads them. A test
    prompt that is also one of the capability's in-domain prompts (a user `.test` file overlapping its own
    in-domain file) is kept and reported: the check names the pairs."""
    capability = context.partition_key
    settings = pipeline.settings
    rows = targets.evaluation_rows(settings.data_dir / "targets", capability)
    path = write_parquet(targets.to_table(rows.rows), pipeline.layout.target_test(capability))
    in_domain = targets.selection_rows(settings.data_dir / "targets", capability, None).rows
    overlap = decontamination.same_prompts(rows.rows, in_domain)
    if overlap:
        context.log.warning(f"{len(overlap)} {capability} test row(s) repeat an in-domain prompt, e.g. {overlap[:3]}")
    return _result(
        rows,
        path,
        [dg.AssetCheckResult(
            check_name="has_test_rows",
            passed=bool(rows.rows),
            severity=dg.AssetCheckSeverity.WARN,
            description="no test split for this capability in the data folder" if not rows.rows else None,
        ), dg.AssetCheckResult(
            check_name="test_rows_not_in_domain",
            passed=not overlap,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"overlapping": len(overlap), "pairs (test, in-domain)": dg.MetadataValue.json(overlap[:50])},
        )],
    )
