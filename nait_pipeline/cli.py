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


def _all_assets() -> list:
    from nait_pipeline.definitions import defs

    return list(defs().assets or [])


def run_steps(steps: list[tuple[list[str], list[str] | None]], run_config: dict | None = None) -> None:
    """Materialize each step's assets (once per partition key when the step names keys)."""
    import dagster as dg

    from nait_pipeline.defs.resources import pipeline_resource_from_env

    assets = _all_assets()
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

    shards = LakeLayout(settings.lake_dir).kept_shards()
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


def _already_trained(layout, version: str, train_params: dict, model_dir: Path) -> bool:
    import json

    import pyarrow.parquet as pq

    path = layout.finetune_run(version)
    return path.exists() and (model_dir / "config.json").exists() and \
        json.loads(pq.read_table(path).column("train_params_json")[0].as_py()) == train_params


def _already_evaluated(layout, version: str, eval_params: dict) -> bool:
    import json

    import pyarrow.parquet as pq

    path = layout.evaluation(version)
    if not path.exists():
        return False
    recorded = json.loads(pq.read_table(path).column("eval_params_json")[0].as_py())
    return all(recorded.get(k) == v for k, v in eval_params.items())


def cmd_protocol(args: argparse.Namespace) -> None:
    """Run a whole comparison protocol in its own store; finished fine-tunes and evaluations with the
    same parameters are kept, so a killed run resumes where it stopped."""
    import json
    import time
    from datetime import datetime, timezone

    from nait_pipeline.defs.assets.loop import EvaluationConfig, FineTuneConfig, finetuned_dir
    from nait_pipeline.defs.resources import pipeline_resource_from_env
    from nait_pipeline.lib import protocol as proto
    from nait_pipeline.lib.lake import read_metadata, write_json
    from nait_pipeline.lib.layout import LakeLayout

    chosen = proto.get_protocol(args.name)
    base = Settings.from_env()
    store = Path(args.store).resolve() if args.store else base.store_dir / "protocols" / chosen.name
    inputs = proto.prepare_inputs(chosen, base.data_dir, store / "input")
    os.environ.update(NAIT_DATA_DIR=str(inputs), NAIT_STORE_DIR=str(store), NAIT_POOL_SAMPLE=str(chosen.slice_rows),
                      DAGSTER_HOME=str(store / "dagster_home"))
    settings = Settings.from_env()
    layout = LakeLayout(settings.lake_dir)
    # Each invocation's stage times are kept (a resumed protocol adds one), written after every stage.
    record_path = store / "protocol_run.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"invocations": []}
    stages: dict[str, float] = {}
    record["protocol"] = chosen.as_dict()
    record["invocations"].append({"started_at": datetime.now(timezone.utc).isoformat(), "stage_seconds": stages})

    def stage(name: str, steps, config: dict | None = None) -> None:
        started = time.perf_counter()
        run_steps(steps, {"ops": config} if config else None)
        stages[name] = round(stages.get(name, 0.0) + time.perf_counter() - started, 1)
        write_json(record, record_path)

    print(f"protocol {chosen.name}: store {store}", flush=True)
    stage("pool_and_targets", [(["base_model", "it_pool"], None)])
    stage("pool_and_targets", [(["target_sets", "target_test_sets"], list(CAPABILITIES))],
          {"target_sets": {"config": {"size": chosen.target_size}}})
    stage("nait_selection", nait_steps(settings)[:-1])
    stage("nait_selection", [(["nait_subsets"], None)],
          {"nait_subsets": {"config": {"budget_ratio": chosen.budget_ratio}}})
    stage("random_and_full", [(["random_subsets"], None)],
          {"random_subsets": {"config": {"budget_ratio": chosen.budget_ratio, "seeds": list(chosen.random_seeds)}}})

    pool_version = read_metadata(layout.pool_examples)["pool_version"]
    versions = proto.compared_subset_versions(layout, pool_version, chosen.budget_ratio, chosen.random_seeds)
    train_params = FineTuneConfig(**chosen.train).train_config().as_dict()
    resource = pipeline_resource_from_env()
    for version in versions:
        if _already_trained(layout, version, train_params, finetuned_dir(resource, version)):
            print(f"==> {version}: fine-tuned model with these parameters exists, kept", flush=True)
        else:
            stage("fine_tune", [(["finetuned_model"], [version])], {"finetuned_model": {"config": chosen.train}})
        if _already_evaluated(layout, version, chosen.evaluation):
            print(f"==> {version}: evaluation with these parameters exists, kept", flush=True)
        else:
            stage("evaluate", [(["evaluation"], [version])],
                  {"evaluation": {"config": EvaluationConfig(**chosen.evaluation).model_dump()}})
    stage("compare", [(["comparison"], None)], {"comparison": {"config": {
        "name": chosen.name, "budget_ratio": chosen.budget_ratio, "random_seeds": list(chosen.random_seeds)}}})
    stage("compare", [(["warehouse"], None)])
    record["subset_versions"] = versions
    write_json(record, record_path)
    print(json.dumps(stages, indent=2))
    print(f"done: see {layout.comparison(chosen.name).with_suffix('.md')}; "
          f"query: NAIT_STORE_DIR={store} nait-pipeline query protocol_comparison --param protocol={chosen.name}")


def cmd_query(args: argparse.Namespace) -> None:
    from nait_pipeline.lib import sql

    params = dict(item.split("=", 1) for item in args.param)
    table = sql.run_query(Settings.from_env().warehouse_path, args.name, params or None)
    import polars as pl

    with pl.Config(tbl_rows=args.limit, tbl_cols=-1, fmt_str_lengths=60):
        print(pl.from_arrow(table))


def cmd_export(args: argparse.Namespace) -> None:
    from nait_pipeline.lib.audit import export_subset
    from nait_pipeline.lib.layout import LakeLayout

    count = export_subset(LakeLayout(Settings.from_env().lake_dir), args.subset_version, args.format, Path(args.out))
    print(f"wrote {count} examples of {args.subset_version} to {args.out} ({args.format})")


def cmd_dump(args: argparse.Namespace) -> None:
    import json

    from nait_pipeline.lib import model_io
    from nait_pipeline.lib.audit import dump_nait_selection
    from nait_pipeline.lib.layout import LakeLayout
    from nait_pipeline.lib.template import ChatTemplate

    layout = LakeLayout(Settings.from_env().lake_dir)
    model = json.loads(layout.model_record.read_text())
    template = ChatTemplate(model_io.load_tokenizer(Path(model["path"])))
    manifest = dump_nait_selection(layout, args.subset_version, Path(args.out), template)
    print(f"wrote {manifest} and the files it lists")


def cmd_subsets(args: argparse.Namespace) -> None:
    from nait_pipeline.lib import sql

    with sql.connect_read_only(Settings.from_env().warehouse_path) as con:
        print(con.sql("SELECT subset_version, method, capability, n_selected, n_pool, created_at "
                      "FROM subset_lineage ORDER BY created_at DESC, subset_version"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nait-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    materialize = commands.add_parser("materialize", help="materialize the pipeline on the configured data and model")
    materialize.add_argument("--stage", choices=["foundation", "all"], default="all",
                             help="foundation: model, pool, targets, warehouse; all: also NAIT (default)")
    materialize.set_defaults(func=cmd_materialize)

    protocol = commands.add_parser("protocol", help="run a comparison protocol end to end in its own store")
    protocol.add_argument("name", nargs="?", default="cpu-2k", help="protocol name (default cpu-2k; smoke: minutes)")
    protocol.add_argument("--store", help="store folder (default $NAIT_STORE_DIR/protocols/NAME)")
    protocol.set_defaults(func=cmd_protocol)

    query = commands.add_parser("query", help="run a named query from sql/queries read-only")
    query.add_argument("name")
    query.add_argument("--param", action="append", default=[], help="NAME=VALUE bound as a query parameter")
    query.add_argument("--limit", type=int, default=25, help="rows to print")
    query.set_defaults(func=cmd_query)

    subsets = commands.add_parser("subsets", help="list subset versions with their lineage")
    subsets.set_defaults(func=cmd_subsets)

    export = commands.add_parser("export", help="export a subset for a training framework")
    export.add_argument("subset_version")
    export.add_argument("--format", choices=["alpaca", "chat", "parquet"], default="alpaca")
    export.add_argument("--out", required=True, help="output file (.jsonl or .parquet)")
    export.set_defaults(func=cmd_export)

    dump = commands.add_parser("dump", help="dump the arrays a NAIT selection consumed and produced, with a manifest")
    dump.add_argument("subset_version")
    dump.add_argument("--out", required=True, help="output folder")
    dump.set_defaults(func=cmd_dump)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
