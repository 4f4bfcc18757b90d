"""Command line: `nait-pipeline materialize | query | ...` (see `nait-pipeline --help`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nait_pipeline.lib.settings import CAPABILITIES, PROJECT_ROOT, Settings

FOUNDATION_STEPS: list[tuple[list[str], list[str] | None]] = [
    (["base_model", "it_pool"], None),
    (["target_sets", "target_test_sets"], list(CAPABILITIES)),
    (["warehouse"], None),
]


def _instance():
    import dagster as dg

    os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / "dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def _all_assets():
    from nait_pipeline.definitions import defs

    definitions = defs()
    return list(definitions.assets or []), definitions


def run_steps(steps: list[tuple[list[str], list[str] | None]], run_config: dict | None = None) -> None:
    """Materialize each step's assets (once per partition key when the step names keys)."""
    import dagster as dg

    from nait_pipeline.defs.resources import pipeline_resource_from_env

    assets, _ = _all_assets()
    instance = _instance()
    resources = {"pipeline": pipeline_resource_from_env()}
    for selection, partition_keys in steps:
        for key in partition_keys or [None]:
            label = f"{', '.join(selection)}" + (f" [{key}]" if key else "")
            print(f"==> materializing {label}", flush=True)
            result = dg.materialize(assets, selection=selection, partition_key=key, instance=instance,
                                    resources=resources, run_config=run_config or {}, raise_on_error=False)
            if not result.success:
                raise SystemExit(f"materialization of {label} failed (run {result.run_id}); see the log above")


def nait_steps(settings: Settings) -> list[tuple[list[str], list[str] | None]]:
    """NAIT over every shard of the current pool (shards already featurized are reused, not recomputed)."""
    from nait_pipeline.lib.layout import LakeLayout
    import pyarrow.parquet as pq

    kept = pq.read_table(LakeLayout(settings.lake_dir).pool_examples, columns=["shard"],
                         filters=[("status", "=", "kept")])
    shards = sorted(set(kept.column("shard").to_pylist()))
    return [
        (["pool_activations"], shards),
        (["target_activations", "capability_directions", "nait_scores"], list(CAPABILITIES)),
        (["nait_subsets"], None),
    ]


def cmd_materialize(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    run_steps(FOUNDATION_STEPS)
    if args.stage == "all":
        run_steps(nait_steps(settings))
    print(f"done: lake {settings.lake_dir}, warehouse {settings.warehouse_path}")


def cmd_query(args: argparse.Namespace) -> None:
    from nait_pipeline.lib import sql

    params = dict(item.split("=", 1) for item in args.param)
    table = sql.run_query(Settings.from_env().warehouse_path, args.name, params or None)
    import polars as pl

    with pl.Config(tbl_rows=args.limit, tbl_cols=-1, fmt_str_lengths=60):
        print(pl.from_arrow(table))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nait-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    materialize = commands.add_parser("materialize", help="materialize the pipeline on the configured data and model")
    materialize.add_argument("--stage", choices=["foundation", "all"], default="all",
                             help="foundation: model, pool, targets, warehouse; all: also NAIT (default)")
    materialize.set_defaults(func=cmd_materialize)

    query = commands.add_parser("query", help="run a named query from sql/queries read-only")
    query.add_argument("name")
    query.add_argument("--param", action="append", default=[], help="NAME=VALUE bound as a query parameter")
    query.add_argument("--limit", type=int, default=25, help="rows to print")
    query.set_defaults(func=cmd_query)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
