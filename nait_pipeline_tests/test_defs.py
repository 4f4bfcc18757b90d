"""The code location loads, validates, and shows the expected asset graph with partitions."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg

from nait_pipeline.definitions import defs
from nait_pipeline.lib.io.settings import PROJECT_ROOT


def test_asset_graph_and_partitions():
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    from nait_pipeline.lib.methods import METHODS, scorers

    assert keys == {"base_model", "it_pool", "pool_contamination", "pool_near_duplicates", "target_sets", "target_test_sets", "warehouse", "pool_activations",
                    "target_activations", "capability_directions", "subset_version", "finetuned_model", "evaluation", "comparison",
                    "subset_diffs", "pool_folder", "template_prefix", "selector_trajectories", "selector_clusters",
                    "warmup_adapter", "pool_gradients", "target_gradients", "gradient_graph",
                    *(f"{name}_scores" for name in scorers()), *(f"{name}_subsets" for name in METHODS)}
    assert {"nait_scores", "nait_c_scores", "rds_scores", "perplexity_scores", "length_scores", "lp_scores",
            "nait_subsets", "nait_c_subsets", "lp_low_subsets", "random_subsets", "full_subsets",
            "random_balanced_subsets", "random_stratified_subsets", "oracle_source_subsets"} <= keys
    assert graph.get(dg.AssetKey("lp_scores")).parent_keys >= {dg.AssetKey("selector_trajectories"),
                                                                 dg.AssetKey("selector_clusters")}
    assert graph.get(dg.AssetKey("pool_activations")).partitions_def.name == "pool_shards"
    # The gradient methods share one scorer on one gradient store; G2IS's policy also reads the graph.
    assert graph.get(dg.AssetKey("pool_gradients")).partitions_def.name == "pool_shards"
    assert graph.get(dg.AssetKey("less_scores")).parent_keys >= {dg.AssetKey("pool_gradients"),
                                                                   dg.AssetKey("target_gradients")}
    assert dg.AssetKey("gradient_graph") in graph.get(dg.AssetKey("g2is_subsets")).parent_keys
    # Every method's candidates leave out contaminated rows: the check is upstream of each subsets asset.
    assert all({dg.AssetKey("pool_contamination"), dg.AssetKey("pool_near_duplicates")} <=
               graph.get(dg.AssetKey(f"{name}_subsets")).parent_keys for name in METHODS)
    assert {s.name for s in definitions.sensors} == {"new_pool_files", "new_target_files", "unfeaturized_pool_shards",
                                                    "dead_run_reaper", "nightly_refresh"}
    assert not definitions.schedules  # the nightly refresh is a declarative condition on it_pool
    assert graph.get(dg.AssetKey("it_pool")).automation_condition is not None
    target_sets = graph.get(dg.AssetKey("target_sets"))
    assert target_sets.partitions_def.name == "capabilities"  # dynamic: registered as target files appear
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.code_version, f"{key} has no code_version"
        assert node.description, f"{key} has no docstring"


def test_dg_check_defs_passes():
    env = {**os.environ, "DAGSTER_HOME": str(PROJECT_ROOT / "dagster_home")}
    dg_cli = os.path.join(os.path.dirname(sys.executable), "dg")
    done = subprocess.run([dg_cli, "check", "defs"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
