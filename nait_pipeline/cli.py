"""Command line: `nait-pipeline materialize | query | ...` (see `nait-pipeline --help`)."""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import time
from pathlib import Path

from nait_pipeline.lib.io.settings import PROJECT_ROOT, Settings
from nait_pipeline.lib.io.lake import read_table


def capabilities(settings: Settings) -> list[str]:
    """Register (as Dagster partitions) and return every capability the targets folder defines."""
    from nait_pipeline.defs.partitions import register_capabilities

    return register_capabilities(_instance(), settings.data_dir / "targets")


# What every command needs before any method: the model, the pool, the target and test sets, the warehouse.
FOUNDATION = ("base_model", "it_pool", "target_sets", "target_test_sets", "pool_contamination", "warehouse")


class UsageError(Exception):
    """A command line that cannot be carried out as given."""


# The tags a range run of partitions carries (what a backfill with BackfillPolicy.multi_run sets).
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def _instance():
    import dagster as dg

    os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / "dagster_home"))
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    # A new instance folder (a protocol's own, a user's) gets the project's settings: the concurrency
    # pools that keep model passes one at a time, telemetry off.
    if not (home / "dagster.yaml").exists():
        shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return dg.DagsterInstance.get()


def _all_assets() -> list:
    from nait_pipeline.definitions import defs

    return list(defs().assets or [])


SUMMARY_KEYS = ("row_count", "rows_read", "quarantined", "tokens", "reused", "n_pool", "score_seconds", "shards",
                "recomputed_shards", "executor")


def _summary(result) -> str:
    """A few numbers from what a run materialized, for the one line the console shows per step (a range
    run records one materialization per partition, all with the range's metadata: shown once)."""
    parts = []
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        values = [f"{k}={metadata[k].value}" for k in SUMMARY_KEYS if k in metadata]
        if "subset_versions" in metadata:
            values.append(f"subsets={len(metadata['subset_versions'].value)}")
        part = f"{event.asset_key.to_user_string()}" + (f" ({', '.join(values)})" if values else "")
        if part not in parts:
            parts.append(part)
    return "; ".join(parts)


def run_steps(steps: list[tuple[list[str], list | None]], run_config: dict | None = None) -> None:
    """Materialize each step's assets (once per partition key when the step names keys; a (first, last)
    pair is one run over that range of keys), printing one line per step and a progress line for long
    stages. Dagster's event stream stays in the run logs (`dagster dev` shows them); NAIT_VERBOSE=1 prints
    it here too."""
    import dagster as dg

    from nait_pipeline.defs.recovery import recover_dead_runs
    from nait_pipeline.defs.resources import lake_resource_from_settings
    from nait_pipeline.lib.io.progress import CONSOLE_ENV

    os.environ.setdefault(CONSOLE_ENV, "1")
    log_level = "DEBUG" if os.environ.get("NAIT_VERBOSE") else "WARNING"
    assets = _all_assets()
    instance = _instance()
    for item in recover_dead_runs(instance):
        print(f"==> recovered run {item.run_id}: {item.reason}", flush=True)
    resources = {"pipeline": lake_resource_from_settings(Settings.from_env())}
    for selection, partition_keys in steps:
        # Each step gets the config of its own assets only: Dagster refuses config for ops not in the run.
        ops = {name: value for name, value in (run_config or {}).get("ops", {}).items() if name in selection}
        keys = partition_keys or [None]
        for number, key in enumerate(keys, start=1):
            ranged = isinstance(key, tuple)
            shown = f"{key[0]} .. {key[1]}" if ranged else key
            label = f"{', '.join(selection)}" + (f" [{shown}]" if key else "") + \
                (f" ({number}/{len(keys)})" if len(keys) > 1 else "")
            started = time.perf_counter()
            config = {"loggers": {"console": {"config": {"log_level": log_level}}}, **({"ops": ops} if ops else {})}
            tags = {RANGE_START: key[0], RANGE_END: key[1]} if ranged else None
            result = dg.materialize(assets, selection=selection, partition_key=None if ranged else key,
                                    instance=instance, resources=resources, run_config=config, tags=tags,
                                    raise_on_error=False)
            if not result.success:
                failure = next(iter(result.get_step_failure_events()), None)
                error = failure.step_failure_data.error if failure else None
                while error is not None and error.cause is not None:  # the user's error, not Dagster's wrapper
                    error = error.cause
                reason = error.message.strip() if error else "see `dagster dev`, Runs"
                raise SystemExit(f"==> {label}: failed (run {result.run_id}): {reason}")
            print(f"==> {label}: done in {time.perf_counter() - started:.1f}s  {_summary(result)}", flush=True)


@functools.lru_cache(maxsize=1)
def plan_graph() -> dict:
    """The code location's materializable assets as plain nodes: parents and partitioning."""
    from nait_pipeline.definitions import defs

    return nodes_of(defs().resolve_asset_graph())


def nodes_of(graph) -> dict:
    import dagster as dg

    from nait_pipeline.defs.partitions import capability_partitions, pool_shard_partitions
    from nait_pipeline.lib.features.kinds import CAPABILITY, SHARD, UNPARTITIONED
    from nait_pipeline.lib.io.plan import Node

    def partitioning(partitions) -> str:
        if partitions is None:
            return UNPARTITIONED
        if partitions == pool_shard_partitions:
            return SHARD
        return CAPABILITY if partitions == capability_partitions else partitions.name

    nodes = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_materializable and isinstance(key, dg.AssetKey):
            nodes[key.to_user_string()] = Node(key.to_user_string(), frozenset(p.to_user_string() for p in node.parent_keys),
                                               partitioning(node.partitions_def))
    return nodes


def run_plan(steps, settings: Settings, run_config: dict | None = None) -> None:
    """Run planned steps; a partitioned step's keys are read when it starts (the shards exist once the
    pool is ingested, the capabilities once the targets folder is read)."""
    from nait_pipeline.lib.features.kinds import CAPABILITY, SHARD
    from nait_pipeline.lib.io.pool_view import PoolView

    for step in steps:
        keys = (PoolView.open(settings.layout).shards if step.partitioning == SHARD
                else capabilities(settings) if step.partitioning == CAPABILITY else None)
        if step.partitioning == SHARD and settings.executor == "ray":
            keys = shard_ranges(keys)
        run_steps([(list(step.assets), keys)], run_config)


def shard_ranges(shards: list[str]) -> list[tuple[str, str]]:
    """Shards in runs of up to SHARDS_PER_RUN (as a backfill runs them): Ray workers then load the model once
    per range, not once per shard."""
    from nait_pipeline.defs.assets.features import SHARDS_PER_RUN
    from nait_pipeline.defs.partitions import POOL_SHARDS_NAME
    from nait_pipeline.lib.io.plan import key_ranges

    return key_ranges(shards, _instance().get_dynamic_partitions(POOL_SHARDS_NAME), SHARDS_PER_RUN)


def subsets_asset(method) -> str:
    return f"{method.name}_subsets"


def print_current_subsets(settings: Settings, methods) -> None:
    """One line per method: the subsets its last selection wrote, with their sizes."""


    layout = settings.layout
    for method in methods:
        path = layout.current_subsets(method.name)
        if not path.exists():
            continue
        slots = []
        for row in read_table(path).to_pylist():
            selected = read_table(layout.lineage(row["subset_version"]), columns=["n_selected"]).column(0)[0]
            slots.append(f"{row['capability']}{'/' + row['slot'] if row['slot'] else ''} {selected.as_py()}")
        print(f"    {method.name:<20} {', '.join(slots)}", flush=True)


def cmd_materialize(args: argparse.Namespace) -> None:
    """Plan from the asset graph: the foundation, then the methods that read no slow feature kind (the first
    subsets), then the rest (LP's selector), each step once per shard or capability where partitioned."""
    from nait_pipeline.lib.io.plan import plan, upstream_closure
    from nait_pipeline.lib.methods import METHODS, get_method

    settings = Settings.from_env()
    graph = plan_graph()
    chosen = [get_method(name) for name in args.methods] if args.methods else \
        [m for m in METHODS.values() if not m.on_demand]
    skipped = sorted(name for name, m in METHODS.items() if m.on_demand) if not args.methods else []
    started = time.perf_counter()
    if args.stage == "foundation":
        run_plan(plan(graph, FOUNDATION), settings)
        print(f"done: lake {settings.lake_dir}, warehouse {settings.warehouse_path}")
        return
    phases = [[m for m in chosen if not any(kind.slow for kind in m.kinds)],
              [m for m in chosen if any(kind.slow for kind in m.kinds)]]
    done: set[str] = set()
    for number, phase in enumerate(phases):
        if not phase:
            continue
        if number == 1:
            slow = {kind for m in phase for kind in m.kinds if kind.slow}
            print(f"==> first subsets ready after {time.perf_counter() - started:.0f}s:", flush=True)
            print_current_subsets(settings, phases[0])
            print(f"==> now {', '.join(m.name for m in phase)}, which read the slow feature kind(s) "
                  + "; ".join(f"{kind.name} ({kind.description})" for kind in slow), flush=True)
        targets = [*FOUNDATION, *(subsets_asset(m) for m in phase)]
        run_plan(plan(graph, targets, done=done), settings)
        done |= upstream_closure(graph, targets)
    if skipped:
        print(f"not materialized by default (per-example gradients: hours on a CPU for a whole pool): {skipped}; "
              f"run `nait-pipeline materialize --methods {' '.join(skipped)}`")
    print(f"done in {time.perf_counter() - started:.0f}s: lake {settings.lake_dir}, warehouse {settings.warehouse_path}")


def cmd_protocol(args: argparse.Namespace) -> None:
    """Run a whole comparison protocol in its own store; finished fine-tunes and evaluations with the
    same parameters are kept, so a killed run resumes where it stopped."""
    import dataclasses
    import json
    import time
    from datetime import datetime, timezone


    from nait_pipeline.defs.assets.loop import EvaluationConfig, FineTuneConfig, finetuned_dir
    from nait_pipeline.defs.partitions import register_subset_versions
    from nait_pipeline.defs.resources import lake_resource_from_settings
    from nait_pipeline.lib.evaluation import protocol as proto
    from nait_pipeline.lib.evaluation import runs
    from nait_pipeline.lib.io.lake import write_json
    from nait_pipeline.lib.io.plan import Step, plan, upstream_closure
    from nait_pipeline.lib.methods import get_method

    chosen = proto.get_protocol(args.name)
    base = Settings.from_env()
    store = Path(args.store).resolve() if args.store else base.work_dir / "protocols" / chosen.name
    inputs = proto.prepare_inputs(chosen, base.data_dir, store / "input")
    os.environ.update(NAIT_DATA_DIR=str(inputs), NAIT_STORE_DIR=str(store),
                      NAIT_POOL_SAMPLE=str(chosen.slice_rows) if chosen.slice_rows else "",  # 0: the whole pool
                      DAGSTER_HOME=str(store / "dagster_home"))
    settings = Settings.from_env()
    layout = settings.layout
    # Each invocation's stage times are kept (a resumed protocol adds one), written after every stage.
    record_path = store / "protocol_run.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"invocations": []}
    stages: dict[str, float] = {}
    record["protocol"] = chosen.as_dict()
    record["invocations"].append({"started_at": datetime.now(timezone.utc).isoformat(), "stage_seconds": stages})

    def stage(name: str, steps, config: dict | None = None) -> None:
        """Run steps (planned ones, or (assets, partition keys) pairs) and add their time to the stage's."""
        started = time.perf_counter()
        run_config = {"ops": config} if config else None
        if all(isinstance(step, Step) for step in steps):
            run_plan(steps, settings, run_config)
        else:
            run_steps(steps, run_config)
        stages[name] = round(stages.get(name, 0.0) + time.perf_counter() - started, 1)
        write_json(record, record_path)

    print(f"protocol {chosen.name}: store {store}", flush=True)
    graph = plan_graph()
    compared = [get_method(name) for name in chosen.methods]
    feature_assets = [asset for kind in dict.fromkeys(k for m in compared for k in m.kinds)
                      for asset in kind.asset_names()]
    stage("pool_and_targets", plan(graph, FOUNDATION), {"target_sets": {"config": {"size": chosen.target_size}}})
    stage("features", plan(graph, feature_assets, done=upstream_closure(graph, FOUNDATION)), chosen.features)
    stage("selection", plan(graph, [subsets_asset(m) for m in compared],
                            done=upstream_closure(graph, [*FOUNDATION, *feature_assets])),
          {**chosen.features, **proto.subset_config(chosen)})

    resource = lake_resource_from_settings(settings)
    versions = proto.compared_subset_versions(layout, resource.pool().version, chosen.budget_ratio, chosen.random_seeds,
                                              chosen.methods, chosen.trained_capabilities or None)
    # Training-order replicates of the headline method(s), and the base model as the zero point.
    keys = []
    for version in versions:
        method = read_table(layout.lineage(version), columns=["method"]).column("method")[0].as_py()
        keys += runs.replicate_keys(version, chosen.order_replicates.get(method, 1))
    keys += [runs.BASE] if chosen.evaluate_base else []
    with _instance() as instance:
        register_subset_versions(instance, keys)
    train = FineTuneConfig(**chosen.train)
    for key in keys:
        # The asset adds a replicate's order offset to the configured seed; the kept-check expects the same.
        expected = dataclasses.replace(train.train_config(), seed=runs.run_seed(train.seed, key)).as_dict()
        if key == runs.BASE:
            pass  # evaluated as it is
        elif proto.already_trained(layout, key, expected, finetuned_dir(resource, key)):
            print(f"==> {key}: fine-tuned model with these parameters exists, kept", flush=True)
        else:
            stage("fine_tune", [(["finetuned_model"], [key])], {"finetuned_model": {"config": chosen.train}})
        if proto.already_evaluated(layout, key, chosen.evaluation):
            print(f"==> {key}: evaluation with these parameters exists, kept", flush=True)
        else:
            stage("evaluate", [(["evaluation"], [key])],
                  {"evaluation": {"config": EvaluationConfig(**chosen.evaluation).model_dump()}})
    stage("compare", [(["comparison"], None)], {"comparison": {"config": {
        "name": chosen.name, "budget_ratio": chosen.budget_ratio, "random_seeds": list(chosen.random_seeds),
        "methods": list(chosen.methods), "capabilities": list(chosen.trained_capabilities) or None,
        "random_reference": chosen.random_reference}}})
    stage("compare", [(["warehouse"], None)])
    record["subset_versions"] = versions
    record["run_keys"] = keys
    write_json(record, record_path)
    print(json.dumps(stages, indent=2))
    print(f"done: see {layout.comparison(chosen.name).with_suffix('.md')}; "
          f"query: NAIT_STORE_DIR={store} nait-pipeline query protocol_comparison --param protocol={chosen.name}")


def cmd_query(args: argparse.Namespace) -> None:
    from nait_pipeline.lib.io import sql

    malformed = [item for item in args.param if "=" not in item]
    if malformed:
        raise UsageError(f"--param takes NAME=VALUE, got {malformed[0]!r}")
    params = dict(item.split("=", 1) for item in args.param)
    table = sql.run_query(Settings.from_env().warehouse_path, args.name, params or None)
    import polars as pl

    with pl.Config(tbl_rows=args.limit, tbl_cols=-1, fmt_str_lengths=60):
        print(pl.from_arrow(table))


def cmd_export(args: argparse.Namespace) -> None:
    from nait_pipeline.lib.methods.audit import export_subset

    count = export_subset(Settings.from_env().layout, args.subset_version, args.format, Path(args.out),
                          allow_changed=args.allow_changed)
    print(f"wrote {count} examples of {args.subset_version} to {args.out} ({args.format})")


def cmd_publish(args: argparse.Namespace) -> None:
    from nait_pipeline.lib.evaluation.publish import DATA_FILE, publish

    settings = Settings.from_env()
    out = publish(settings.layout, args.subset_version, Path(args.out), settings.licenses)
    print(f"wrote {out / DATA_FILE} and the dataset card {out / 'README.md'}; "
          f"load it with datasets.load_dataset(\"parquet\", data_dir=\"{out}\")")


def cmd_dump(args: argparse.Namespace) -> None:

    from nait_pipeline.lib.methods.audit import dump_selection
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate

    layout = Settings.from_env().layout
    model = model_io.ModelInfo.read(layout)
    template = ChatTemplate(model_io.load_tokenizer(Path(model.path)))
    manifest = dump_selection(layout, args.subset_version, Path(args.out), template)
    print(f"wrote {manifest} and the files it lists")


def cmd_recover(args: argparse.Namespace) -> None:
    from nait_pipeline.defs.recovery import recover_dead_runs

    recovered = recover_dead_runs(_instance())
    for item in recovered:
        print(f"{item.run_id}: {item.reason}")
    print(f"done: {len(recovered)} run(s) recovered" if recovered else "no dead runs, no stuck slots")


def cmd_migrate_store(args: argparse.Namespace) -> None:
    from nait_pipeline.lib.evaluation.runs import model_folder
    from nait_pipeline.lib.features.feature_store import migrate_store_file

    settings = Settings.from_env()
    layout = settings.layout
    folders = [layout.pool_activations("_").parent, layout.target_activations("_").parent]  # the forward store
    files = sorted(p for folder in folders for p in folder.glob("*.parquet") if not p.name.startswith("_"))
    migrated = 0
    for index, path in enumerate(files, start=1):
        changed = migrate_store_file(path)
        migrated += changed
        print(f"[{index}/{len(files)}] {path.name}: {'rewritten' if changed else 'already current'}", flush=True)
    print(f"done: {migrated} of {len(files)} feature file(s) rewritten in the binary vector layout")
    # Replicate models were once saved in a folder named by the run key itself.
    for old in sorted((settings.models_dir / "finetuned").glob("*@*")):
        new = old.with_name(model_folder(old.name))
        if not new.exists():
            old.rename(new)
            print(f"{old.name}: renamed to {new.name}", flush=True)


def cmd_vacuum(args: argparse.Namespace) -> None:
    from nait_pipeline.lib.io.vacuum import vacuum

    if args.grace_hours < 0:
        raise UsageError(f"--grace-hours must be >= 0, got {args.grace_hours}")
    for report in vacuum(Settings.from_env(), args.grace_hours * 3600, args.dry_run):
        for item in report.deleted:
            print(f"{'would delete' if args.dry_run else 'deleted'} {item}")
        print(report.summary())


def cmd_methods(args: argparse.Namespace) -> None:
    from nait_pipeline.lib.methods import METHODS

    for method in METHODS.values():
        scorer = method.scorer
        columns = {kind: () for kind in method.kinds}
        if scorer is not None:
            columns[scorer.kind] = (*scorer.pool_vectors, *scorer.pool_scalars)
        for kind in method.policy_reads:
            columns[kind] = (*columns[kind], *method.policy_vectors)
        reads = [f"{kind.name} ({', '.join(kind.asset_names())})" + (f": {', '.join(dict.fromkeys(read))}" if read else "")
                 for kind, read in columns.items()]
        print(f"{method.name:<18} features: {'; '.join(reads) or 'none'}\n{'':<18} policy: {method.policy}\n"
              f"{'':<18} source: {method.source}")


def cmd_subsets(args: argparse.Namespace) -> None:
    from nait_pipeline.lib.io import sql

    with sql.connect_read_only(Settings.from_env().warehouse_path) as con:
        print(con.sql("SELECT subset_version, method, capability, n_selected, n_pool, created_at "
                      "FROM subset_lineage ORDER BY created_at DESC, subset_version"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nait-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    materialize = commands.add_parser("materialize", help="materialize the pipeline on the configured data and model")
    materialize.add_argument("--stage", choices=["foundation", "all"], default="all",
                             help="foundation: model, pool, targets, warehouse; all: also features and every "
                                  "method's scores and subsets (default)")
    materialize.add_argument("--methods", nargs="+", metavar="METHOD",
                             help="registered methods to select with (default: all; see `nait-pipeline methods`)")
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

    recover = commands.add_parser("recover", help="mark runs whose process died as failed and free their "
                                                  "concurrency slots (also done before every materialization)")
    recover.set_defaults(func=cmd_recover)

    migrate = commands.add_parser("migrate-store", help="bring a store of earlier versions up to date: feature files "
                                                        "in the binary vector layout (same values), replicate model "
                                                        "folders without '@'")
    migrate.set_defaults(func=cmd_migrate_store)

    vacuum = commands.add_parser("vacuum", help="delete objects no lake file names any more (marked by one vacuum, "
                                                "deleted by a later one after the grace) and killed writers' "
                                                "temporary files")
    vacuum.add_argument("--grace-hours", type=float, default=24.0,
                        help="how long an object stays unreferenced, or a temporary file untouched, before it goes")
    vacuum.add_argument("--dry-run", action="store_true", help="report what would go; change nothing")
    vacuum.set_defaults(func=cmd_vacuum)

    methods = commands.add_parser("methods", help="list the registered selection methods")
    methods.set_defaults(func=cmd_methods)

    subsets = commands.add_parser("subsets", help="list subset versions with their lineage")
    subsets.set_defaults(func=cmd_subsets)

    export = commands.add_parser("export", help="export a subset for a training framework")
    export.add_argument("subset_version")
    export.add_argument("--format", choices=["alpaca", "chat", "parquet"], default="alpaca")
    export.add_argument("--out", required=True, help="output file (.jsonl or .parquet)")
    export.add_argument("--allow-changed", action="store_true",
                        help="export even if selected rows changed text since the selection (their current text)")
    export.set_defaults(func=cmd_export)

    publish = commands.add_parser("publish", help="write a subset as a dataset folder with its dataset card")
    publish.add_argument("subset_version")
    publish.add_argument("--out", required=True, help="output folder (new, or an earlier publication)")
    publish.set_defaults(func=cmd_publish)

    dump = commands.add_parser("dump", help="dump the arrays a selection consumed and produced, with a manifest")
    dump.add_argument("subset_version")
    dump.add_argument("--out", required=True, help="output folder")
    dump.set_defaults(func=cmd_dump)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except Exception as exc:
        expected = (UsageError, ValueError, KeyError, FileNotFoundError, FileExistsError)
        if not isinstance(exc, expected) and not type(exc).__module__.startswith(("duckdb", "_duckdb")):
            raise
        # Expected failures (bad input, a missing asset, a usage error) get one line, not a traceback;
        # NAIT_DEBUG=1 shows the traceback.
        if os.environ.get("NAIT_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"nait-pipeline {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
