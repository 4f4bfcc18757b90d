"""The command line answers usage errors and bad input with one line, not a traceback."""

from __future__ import annotations

import pytest

from nait_pipeline import cli


@pytest.mark.parametrize("argv, message", [
    (["query", "pool_accounting", "--param", "noequals"], "--param takes NAME=VALUE, got 'noequals'"),
    (["export", "../../etc/passwd", "--out", "x.jsonl"], "is not a subset version name"),
    (["query", "no_such_query"], "no query named 'no_such_query'"),
])
def test_usage_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NAIT_STORE_DIR", str(tmp_path))
    monkeypatch.delenv("NAIT_DEBUG", raising=False)
    (tmp_path / "warehouse.duckdb").touch()  # the query command finds a warehouse to open
    import duckdb

    duckdb.connect(str(tmp_path / "w.duckdb")).close()
    (tmp_path / "w.duckdb").replace(tmp_path / "warehouse.duckdb")
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_methods_lists_every_registered_method(capsys):
    from nait_pipeline.lib.methods import METHODS

    cli.main(["methods"])
    out = capsys.readouterr().out
    assert all(name in out for name in METHODS)
    # every method says what it reads, including those on another feature kind than the forward store
    assert "features: \n" not in out
    assert "less               features: gradients (warmup_adapter, pool_gradients, target_gradients)" in out
    assert "kcenter            features: forward (pool_activations, target_activations): rds_embedding" in out


def test_materialize_plans_each_feature_kind_from_the_asset_graph():
    """The order comes from the assets' deps: every feature kind a method reads (by its scorer or its policy),
    run by its partitions, before the scores and subsets that read it."""
    from nait_pipeline.lib.io.plan import Step, plan, upstream_closure

    graph = cli.plan_graph()
    steps = plan(graph, ["nait_subsets", "g2is_subsets", "less_subsets", "lp_low_subsets", "random_subsets"],
                 done=upstream_closure(graph, cli.FOUNDATION))
    assert steps == [
        Step(("selector_trajectories", "warmup_adapter"), "none"),
        Step(("target_activations",), "capability"), Step(("pool_activations",), "shard"),
        Step(("pool_near_duplicates", "selector_clusters"), "none"),
        Step(("capability_directions", "target_gradients"), "capability"),
        Step(("pool_gradients",), "shard"), Step(("gradient_graph", "lp_scores", "random_subsets"), "none"),
        Step(("less_scores", "nait_scores"), "capability"),
        Step(("g2is_subsets", "less_subsets", "lp_low_subsets", "nait_subsets"), "none")]


def test_an_asset_added_upstream_of_a_method_runs_before_it(tmp_path, monkeypatch):
    """A throwaway asset made a dependency of random_subsets is planned and run first: nothing in the CLI
    lists assets, it walks the graph."""
    import dagster as dg

    from nait_pipeline.defs.resources import LakeResource
    from nait_pipeline.lib.io.plan import plan, upstream_closure
    from nait_pipeline.lib.io.settings import Settings
    from nait_pipeline_tests import synthetic_lake

    ran = []

    @dg.asset
    def throwaway():
        ran.append("throwaway")
        return dg.MaterializeResult()

    def with_throwaway(assets_def):
        if assets_def.key != dg.AssetKey("random_subsets"):
            return assets_def
        return assets_def.map_asset_specs(lambda spec: spec.replace_attributes(deps=[*spec.deps, dg.AssetDep("throwaway")]))

    assets = [with_throwaway(a) if isinstance(a, dg.AssetsDefinition) else a for a in cli._all_assets()] + [throwaway]
    monkeypatch.setattr(cli, "_all_assets", lambda: assets)
    cli.plan_graph.cache_clear()
    resources = {"pipeline": LakeResource(data_dir=str(tmp_path), store_dir=str(tmp_path / "store"))}
    monkeypatch.setattr(cli, "plan_graph", lambda: cli.nodes_of(
        dg.Definitions(assets=assets, resources=resources).resolve_asset_graph()))
    monkeypatch.setenv("NAIT_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("NAIT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    settings = Settings.from_env()
    layout = synthetic_lake.build(settings.lake_dir)
    graph = cli.plan_graph()
    # The synthetic lake holds the pool's features already: plan from there.
    steps = plan(graph, ["random_subsets"], done=upstream_closure(graph, [*cli.FOUNDATION, "pool_near_duplicates"]))
    assert [step.assets for step in steps] == [("throwaway",), ("random_subsets",)]
    cli.run_plan(steps, settings, {"ops": {"random_subsets": {"config": {"seeds": [0]}}}})
    assert ran == ["throwaway"] and layout.current_subsets("random").exists()


def test_migrate_store_moves_replicate_models_to_the_folder_the_pipeline_now_reads(tmp_path, monkeypatch, capsys):
    """A replicate's model folder no longer has the run key's "@" (transformers warned about it on every
    load); migrate-store renames an older store's folders so their fine-tunes are kept, not redone."""
    from nait_pipeline.defs.assets.loop import finetuned_dir
    from nait_pipeline.defs.resources import LakeResource

    monkeypatch.setenv("NAIT_STORE_DIR", str(tmp_path))
    old = tmp_path / "models" / "finetuned" / "nait_c-all-abc@order1"
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    (tmp_path / "models" / "finetuned" / "nait_c-all-abc").mkdir()  # the first order: no "@", untouched
    cli.main(["migrate-store"])
    resource = LakeResource(data_dir=str(tmp_path), store_dir=str(tmp_path), model="unused")
    moved = finetuned_dir(resource, "nait_c-all-abc@order1")
    assert "@" not in moved.name and (moved / "config.json").exists() and not old.exists()
    assert finetuned_dir(resource, "nait_c-all-abc").exists()
    assert "nait_c-all-abc@order1: renamed" in capsys.readouterr().out
