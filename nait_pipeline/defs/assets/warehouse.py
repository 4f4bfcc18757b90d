"""The DuckDB warehouse: views over the Parquet lake, created from sql/views."""

import dagster as dg

from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.io import sql
from nait_pipeline.lib.io.contract import ensure_contract_tables


@dg.asset(
    group_name="warehouse",
    kinds={"duckdb"},
    code_version=sql.sql_version(),
    deps=["it_pool", "target_sets", "target_test_sets", "pool_contamination"],
    pool="duckdb_writer",
    automation_condition=dg.AutomationCondition.eager(),
    check_specs=[dg.AssetCheckSpec("queries_run_read_only", asset="warehouse", blocking=True)],
)
def warehouse(context: dg.AssetExecutionContext, pipeline: LakeResource) -> dg.MaterializeResult:
    """`warehouse.duckdb`: the SQL contract (pool_examples, pool_quarantine, target_examples, scores,
    subsets, subset_lineage, ...) as views over the lake. Rebuilt in a temporary file and renamed
    into place, so analysts' read-only connections never block it. Its code version is the hash of `sql/`."""
    settings = pipeline.settings
    ensure_contract_tables(settings.lake_dir)
    views = sql.build_warehouse(settings.warehouse_path, settings.lake_dir)
    counts, failures = {}, {}
    with sql.connect_read_only(settings.warehouse_path) as con:
        for view in views:
            counts[view] = con.execute(f'SELECT count(*) FROM "{view}"').fetchone()[0]  # names from duckdb_views()
        for name in sql.query_names():
            try:
                con.execute(sql.load_query(name), _example_params(name)).fetchall()
            except Exception as exc:  # reported in the check, with the query's name
                failures[name] = str(exc)
    context.log.info(f"views: {counts}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(settings.warehouse_path)),
            "views": dg.MetadataValue.json(counts),
            "queries": dg.MetadataValue.json(sql.query_names()),
        },
        data_version=dg.DataVersion(sql.sql_version()),
        check_results=[dg.AssetCheckResult(check_name="queries_run_read_only", passed=not failures,
                                           metadata={"failures": dg.MetadataValue.json(failures)})],
    )


def _example_params(name: str) -> dict:
    """Parameters for the queries that take them, so every query is exercised once."""
    return sql.QUERY_EXAMPLE_PARAMS.get(name, {})
