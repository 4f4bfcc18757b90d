"""The method registry on a synthetic lake: NAIT's outputs pinned to the pre-registry code, and one
contract every registered method must keep (determinism, finite scores, budget, lineage) over a pool of
triples and multi-turn conversations."""

from __future__ import annotations

import json
import math
import re

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from nait_pipeline.lib.io.pool_view import PoolView
from nait_pipeline.defs.assets.methods import score_assets, subset_assets, subset_diffs
from nait_pipeline.defs.assets.nait import capability_directions
from nait_pipeline.defs.partitions import CAPABILITIES_NAME
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.methods import METHODS, MethodInputError, scorers
from nait_pipeline.lib.methods.base import make_params
from nait_pipeline.lib.methods.run import run_selection
from nait_pipeline.lib.selection import policies as selection
from nait_pipeline_tests import synthetic_lake

ASSETS = [capability_directions, *score_assets, *subset_assets]

# Produced by the NAIT assets as they were before the registry (commit 13bb6eb) on synthetic_lake.build():
# subset version and selected ids in rank order. The registry must reproduce them exactly.
PRE_REGISTRY_NAIT = {
    "math": ["nait-math-f6aec131de68", ["pool-000014", "pool-000039", "pool-000028", "pool-000005"]],
    "code": ["nait-code-b065c04c9e24", ["pool-000007", "pool-000000", "pool-000031", "pool-000039"]],
    "reasoning": ["nait-reasoning-140343e84ec1", ["pool-000028", "pool-000030", "pool-000027", "pool-000037"]],
    "knowledge": ["nait-knowledge-df72da86aab1", ["pool-000001", "pool-000027", "pool-000000", "pool-000003"]],
    "multilingual": ["nait-multilingual-aaff4e1ba56f", ["pool-000034", "pool-000020", "pool-000009", "pool-000010"]],
    "all": ["nait-all-1085e43bcb3c", ["pool-000000", "pool-000027", "pool-000005", "pool-000039"]],
}


# G2IS's official 1 % of 40 rows is no row: the synthetic lake walks 10 %.
RUN_CONFIG = {"g2is_subsets": {"config": {"budget_ratio": 0.1}}}


def materialize(instance, resource, selection_, partition_key=None):
    result = dg.materialize(ASSETS, selection=selection_, partition_key=partition_key, instance=instance,
                            resources={"pipeline": resource},
                            run_config={"ops": {k: v for k, v in RUN_CONFIG.items() if k in selection_}})
    assert result.success
    return result


@pytest.fixture(scope="module")
def scored_lake(tmp_path_factory):
    """Every scorer materialized on the synthetic lake."""
    store = tmp_path_factory.mktemp("synthetic_store")
    layout = synthetic_lake.build(store / "lake")
    resource = LakeResource(data_dir=str(store), store_dir=str(store))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(CAPABILITIES_NAME, list(synthetic_lake.CAPABILITIES))
        for capability in synthetic_lake.CAPABILITIES:
            materialize(instance, resource, ["capability_directions"], capability)
        for scorer in scorers().values():
            for key in synthetic_lake.CAPABILITIES if scorer.targeted else [None]:
                materialize(instance, resource, [f"{scorer.name}_scores"], key)
        yield instance, resource, layout


def test_nait_through_the_registry_reproduces_the_pre_registry_subsets(scored_lake):
    instance, resource, layout = scored_lake
    result = materialize(instance, resource, ["nait_subsets"])
    versions = result.asset_materializations_for_node("nait_subsets")[0].metadata["subset_versions"].value
    got = {c: [v, pq.read_table(layout.subset(v)).sort_by("rank").column("example_id").to_pylist()]
           for c, v in versions.items()}
    assert got == PRE_REGISTRY_NAIT


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_keeps_the_contract(scored_lake, name):
    instance, resource, layout = scored_lake
    method = METHODS[name]
    assert sum(m is not None for m in PoolView.open(layout).kept(["messages"]).column("messages").to_pylist()) > 10
    first = materialize(instance, resource, [f"{name}_subsets"])
    again = materialize(instance, resource, [f"{name}_subsets"])
    metadata = lambda r: r.asset_materializations_for_node(f"{name}_subsets")[0].metadata  # noqa: E731
    versions = metadata(first)["subset_versions"].value
    assert versions == metadata(again)["subset_versions"].value, "same inputs must give the same subsets"
    checks = {c.check_name: c for c in first.get_asset_check_evaluations()}
    assert checks["budget_respected"].passed
    if name == "length":  # the length control is, by construction, what the warning looks for
        assert not checks["not_a_length_selector"].passed
    diagnostics = [pq.read_table(layout.subset_diagnostics(v)).to_pylist()[0] for v in versions.values()]
    assert all(d["method"] == name and d["n_selected"] > 0 and d["length_ratio"] > 0 for d in diagnostics)
    # LP selects from the selector's slice (30 rows, two clusters of 15): with q = 10 chunks per
    # cluster, np.array_split gives chunks of 2 (the first five) and 1 (the others).
    lp_sizes = {"lp_low": 4, "lp_mid": 2, "lp_high": 2, "lp_cluster_random": 4}
    n_pool = 30 if name in lp_sizes else 40
    for key, version in versions.items():
        subset = pq.read_table(layout.subset(version)).sort_by("rank")
        lineage = pq.read_table(layout.lineage(version)).to_pylist()[0]
        params = json.loads(lineage["params_json"])
        if name == "full":
            expected = n_pool
        elif name in ("less", "bids", "g2is"):  # the official floor; G2IS's walk may stop short (reported)
            expected = math.floor(n_pool * params["budget_ratio"] + 1e-9) - params.get("shortfall", 0)
        else:
            expected = lp_sizes.get(name) or selection.budget(n_pool, params["budget_ratio"])
        assert len(subset) == lineage["n_selected"] == expected
        assert len(set(subset.column("example_id").to_pylist())) == expected
        assert lineage["method"] == name and lineage["n_pool"] == n_pool and lineage["model_id"] == "tiny@0"
        assert subset.column("rank").to_pylist() == list(range(1, expected + 1))
        scores = subset.column("score").to_numpy(zero_copy_only=False)
        if method.scorer is not None and name != "lp_cluster_random":  # a random draw ranks by no score
            assert np.isfinite(scores.astype(float)).all()
    current = pq.read_table(layout.current_subsets(name)).to_pylist()
    assert sorted(r["subset_version"] for r in current) == sorted(versions.values())
    if method.scorer is not None and method.scorer.targeted:
        assert set(versions) == {*synthetic_lake.CAPABILITIES, "all"}


def test_scores_are_finite_and_cover_the_pool(scored_lake):
    _, _, layout = scored_lake
    for scorer in scorers().values():
        for capability in synthetic_lake.CAPABILITIES if scorer.targeted else ["all"]:
            table = pq.read_table(layout.scores(scorer.name, capability))
            assert len(table) == (30 if scorer.name == "lp" else 40)  # LP scores the selector's slice
            assert np.isfinite(table.column("score").drop_null().to_numpy()).all()


def test_rds_round_robin_follows_the_stored_matrix(scored_lake):
    _, _, layout = scored_lake
    with np.load(layout.score_matrix("rds", "math")) as stored:
        matrix, ids = stored["matrix"].astype(np.float64), stored["pool_ids"].tolist()
    expected = selection.round_robin(selection.column_orders(ids, matrix), selection.budget(40, 0.1))
    version = pq.read_table(layout.current_subsets("rds_round_robin")).to_pylist()
    math = next(r["subset_version"] for r in version if r["capability"] == "math")
    assert pq.read_table(layout.subset(math)).sort_by("rank").column("example_id").to_pylist() == \
        [ids[i] for i in expected]


def test_selection_without_scores_names_the_asset_to_materialize(tmp_path):
    layout = synthetic_lake.build(tmp_path / "lake")
    with pytest.raises(FileNotFoundError, match=r"materialize rds_scores\[math\]"):
        run_selection(layout, METHODS["rds_top_b"], make_params(METHODS["rds_top_b"].params, {}), ["math"],
                      synthetic_lake.model_info())


def test_unknown_parameters_are_refused_by_name():
    with pytest.raises(MethodInputError, match="unknown parameter.*'budget'"):
        make_params(METHODS["length"].params, {"budget": 0.2})


def test_a_method_reading_a_feature_the_store_lacks_says_which(tmp_path):
    layout = synthetic_lake.build(tmp_path / "lake")
    path = layout.pool_activations(PoolView.open(layout).shards[0])
    table = pq.read_table(path).drop_columns(["rds_embedding"])
    pq.write_table(table, path)
    from nait_pipeline.lib.methods.run import score_capability

    with pytest.raises(MethodInputError, match="rds_embedding.*re-materialize pool_activations"):
        score_capability(layout, scorers()["rds"], "math", scorers()["rds"].params())


def test_every_registered_method_is_in_the_readme_table():
    from nait_pipeline.lib.io.settings import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text()
    table = readme[readme.index("| method | features read"):].split("\n\n")[0].splitlines()[2:]
    listed = {name for row in table for name in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])}
    assert listed == set(METHODS)


def test_scores_refuse_features_computed_from_rewritten_rows(tmp_path):
    """A pool file rewritten after featurization (same ids, new texts) must not be scored on the old
    activations under the new pool version."""
    import pyarrow as pa

    from nait_pipeline.lib.io.lake import read_metadata, write_parquet
    from nait_pipeline.lib.methods.run import score_capability

    layout = synthetic_lake.build(tmp_path / "lake")
    pool = pq.read_table(layout.pool_examples)
    hashes = pool.column("content_hash").to_pylist()
    hashes[17] = "a new text"
    pool = pool.set_column(pool.schema.get_field_index("content_hash"), "content_hash", pa.array(hashes))
    write_parquet(pool.replace_schema_metadata(None), layout.pool_examples, read_metadata(layout.pool_examples))
    with pytest.raises(MethodInputError, match=r"featurized from other rows or texts.*\['p0-s0001'\]"):
        score_capability(layout, scorers()["length"], "all", scorers()["length"].params())


def _poison(layout, path, example_index: int, layer: int):
    """Write a NaN into one example's layer of a feature file, as a corrupt store would hold."""
    from nait_pipeline.lib.features.feature_store import read_features, write_features
    from nait_pipeline.lib.features.featurize import Features
    from nait_pipeline.lib.io.lake import read_metadata

    meta = read_metadata(path)
    names = ("layer_mean", "first_token", "rds_embedding") + (("last_token",) if "last_token" in pq.read_schema(path).names else ())
    stored = read_features([path], vectors=names, scalars=("response_loss", "n_tokens", "n_response_tokens",
                                                           "full_length", "truncated"))
    layer_mean = stored.vectors["layer_mean"].copy()
    layer_mean[example_index, layer - 1, 0] = np.nan
    features = Features(layer_mean=layer_mean, first_token=stored.vectors["first_token"],
                        last_token=stored.vectors.get("last_token"), rds_embedding=stored.vectors["rds_embedding"],
                        **stored.scalars)
    write_features(path, stored.ids, features, {k: v for k, v in meta.items()
                                                if k not in ("num_layers", "hidden_size", "layers", "vector_dtypes")})
    return stored.ids[example_index]


def test_a_nan_in_a_target_row_names_the_example_capability_and_layer(tmp_path):
    from nait_pipeline.lib.methods.nait.nait_method import target_drifts

    layout = synthetic_lake.build(tmp_path / "lake")
    culprit = _poison(layout, layout.target_activations("code"), 2, layer=3)
    with pytest.raises(ValueError, match=rf"layer_mean in the code in-domain set.*\['{culprit}'\].*layer\(s\) \[3\]"):
        target_drifts(layout, "code", "R2")


def test_a_nan_in_the_pool_under_zscore_names_only_the_culprit(tmp_path):
    from nait_pipeline.lib.features.forward import read_pool_store
    from nait_pipeline.lib.methods.nait.nait_method import NaitScoreParams

    layout = synthetic_lake.build(tmp_path / "lake")
    directions = np.ones((3, 8), np.float32) / np.sqrt(8)
    culprit = _poison(layout, layout.pool_activations(PoolView.open(layout).shards[1]), 4, layer=2)
    pool, _ = read_pool_store(layout, ("layer_mean",))
    with pytest.raises(ValueError, match=rf"1 example\(s\) \['{culprit}'\] in layer\(s\) \[2\]"):
        scorers()["nait"].score(pool, directions, NaitScoreParams(aggregation="zscore"))


def _round_robin_by_hand(orders, k):
    """The official RDS+ round-robin, written again independently of the library for this check."""
    picked, heads = [], [0] * len(orders)
    while len(picked) < k and any(h < len(o) for h, o in zip(heads, orders)):
        for q, order in enumerate(orders):
            if heads[q] < len(order) and len(picked) < k:
                item = order[heads[q]]
                heads[q] += 1
                if item not in picked:
                    picked.append(item)
    return picked


def test_dumps_let_anyone_redo_rds_perplexity_and_random_selections(scored_lake, tmp_path):
    from nait_pipeline.lib.methods.audit import dump_selection

    instance, resource, layout = scored_lake
    for name in ("rds_round_robin", "perplexity_middle", "random_balanced"):
        materialize(instance, resource, [f"{name}_subsets"])
    current = {(r["method"], r["capability"], r["slot"]): r["subset_version"]
               for name in ("rds_round_robin", "perplexity_middle", "random_balanced")
               for r in pq.read_table(layout.current_subsets(name)).to_pylist()}
    k = selection.budget(40, 0.1)

    out = tmp_path / "rds"
    manifest = json.loads(dump_selection(layout, current[("rds_round_robin", "math", "")], out, None).read_text())
    assert manifest["method"] == "rds_round_robin" and set(manifest["files"]) <= {p.name for p in out.iterdir()}
    ids = json.loads((out / "pool_ids.json").read_text())
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosine = unit(np.load(out / "pool_rds_embedding.npy")) @ unit(np.load(out / "target_rds_embedding_math.npy")).T
    np.testing.assert_allclose(cosine, np.load(out / "score_matrix_math.npy"), rtol=1e-5, atol=1e-6)
    orders = [sorted(range(len(ids)), key=lambda i: (-cosine[i, q], ids[i])) for q in range(cosine.shape[1])]
    assert [ids[i] for i in _round_robin_by_hand(orders, k)] == json.loads((out / "selected_ids.json").read_text())

    out = tmp_path / "perplexity"
    dump_selection(layout, current[("perplexity_middle", "all", "")], out, None)
    ids = json.loads((out / "pool_ids.json").read_text())
    perplexity = np.exp(np.load(out / "pool_response_loss.npy"))
    scored = [i for i in range(len(ids)) if np.isfinite(perplexity[i])]  # the recipe: rows with a response token
    assert len(scored) == len(ids) - 1
    order = sorted(scored, key=lambda i: (-perplexity[i], ids[i]))
    start = (len(scored) - k) // 2
    assert [ids[i] for i in order[start:start + k]] == json.loads((out / "selected_ids.json").read_text())

    out = tmp_path / "balanced"
    dump_selection(layout, current[("random_balanced", "all", "seed=0")], out, None)
    sources = json.loads((out / "pool_sources.json").read_text())
    chosen = json.loads((out / "selected_ids.json").read_text())
    per_source = {s: sum(sources[json.loads((out / "pool_ids.json").read_text()).index(i)] == s for i in chosen)
                  for s in set(sources)}
    assert max(per_source.values()) - min(per_source.values()) <= 1


def test_a_kcenter_dump_holds_the_embedding_its_policy_read(scored_lake, tmp_path):
    """The diversity policies read the forward store themselves; their dump holds what they read, in the
    dump's row order, and farthest-first on it gives the subset back."""
    from nait_pipeline.lib.methods.audit import dump_selection
    from nait_pipeline.lib.methods.baselines.kcenter import greedy_k_center

    instance, resource, layout = scored_lake
    materialize(instance, resource, ["kcenter_subsets"])
    [version] = pq.read_table(layout.current_subsets("kcenter"), columns=["subset_version"]).column(0).to_pylist()
    dump_selection(layout, version, tmp_path, None)
    ids = json.loads((tmp_path / "pool_ids.json").read_text())
    embedding = np.load(tmp_path / "pool_rds_embedding.npy")
    chosen, _ = greedy_k_center(embedding / np.linalg.norm(embedding, axis=1, keepdims=True),
                                selection.budget(len(ids), 0.1), selection.seeded_random(ids, 1, 0)[0])
    assert [ids[i] for i in chosen] == json.loads((tmp_path / "selected_ids.json").read_text())


def test_kcenter_above_its_exact_limit_takes_the_cell_restricted_traversal_and_records_it(scored_lake, tmp_path):
    from nait_pipeline.lib.methods.audit import dump_selection
    from nait_pipeline.lib.methods.baselines.kcenter import cell_k_center, spherical_cells

    instance, resource, layout = scored_lake
    config = {"exact_limit": 10, "cell_rows": 8, "neighbour_cells": 1}
    result = dg.materialize(ASSETS, selection=["kcenter_subsets"], instance=instance,
                            resources={"pipeline": resource},
                            run_config={"ops": {"kcenter_subsets": {"config": config}}})
    version = result.asset_materializations_for_node("kcenter_subsets")[0].metadata["subset_versions"].value["all"]
    params = json.loads(pq.read_table(layout.lineage(version)).to_pylist()[0]["params_json"])
    assert params["traversal"] == "cell-restricted" and params["neighbour_cells"] == 1
    dump_selection(layout, version, tmp_path, None)
    ids = json.loads((tmp_path / "pool_ids.json").read_text())
    embedding = np.load(tmp_path / "pool_rds_embedding.npy")
    points = (embedding / np.linalg.norm(embedding, axis=1, keepdims=True)).astype(np.float32)
    k = selection.budget(len(ids), 0.1)
    cells = spherical_cells(points, min(k, -(-len(ids) // 8)), seed=0)
    chosen, _ = cell_k_center(points, k, cells, 1)
    assert [ids[i] for i in chosen] == json.loads((tmp_path / "selected_ids.json").read_text())


def test_a_changed_selection_gets_a_new_version_and_a_diff_that_says_why(scored_lake):
    instance, resource, layout = scored_lake
    config = lambda r: {"ops": {"length_subsets": {"config": {"budget_ratio": r}}}}  # noqa: E731
    first = dg.materialize(ASSETS, selection=["length_subsets"], instance=instance, resources={"pipeline": resource},
                           run_config=config(0.1))
    second = dg.materialize(ASSETS, selection=["length_subsets"], instance=instance, resources={"pipeline": resource},
                            run_config=config(0.2))
    old = first.asset_materializations_for_node("length_subsets")[0].metadata["subset_versions"].value["all"]
    new = second.asset_materializations_for_node("length_subsets")[0].metadata["subset_versions"].value["all"]
    assert old != new
    (slot,) = pq.read_table(layout.current_subsets("length")).to_pylist()
    assert (slot["subset_version"], slot["previous_version"]) == (new, old)
    lineage = pq.read_table(layout.lineage(new)).to_pylist()[0]
    assert lineage["code_commit"]  # the code that made it, beside pool, model, template and parameters
    result = dg.materialize([*ASSETS, subset_diffs], selection=["subset_diffs"], instance=instance,
                            resources={"pipeline": resource})
    metadata = result.asset_materializations_for_node("subset_diffs")[0].metadata
    assert metadata["changed_slots"].value >= 1
    assert "param budget_ratio: 0.1 -> 0.2" in metadata["changes"].value
    rows = pq.read_table(layout.subset_diff(new, old)).to_pylist()
    assert [r["change"] for r in rows].count("added") == 4 and [r["change"] for r in rows].count("kept") == 4
    assert all(r["rank_change"] == 0 for r in rows if r["change"] == "kept")  # longest-k keeps its order
    materialize(instance, resource, ["length_subsets"])  # back to the default budget for the other tests


def test_a_nait_c_selection_is_explained_by_layer_contributions_and_neighbours(scored_lake, tmp_path):
    """explain_selection names, for a row of the all-capability subset, the capability whose turn
    chose it, its per-layer contributions (summing to that capability's score) and its nearest
    in-domain rows."""
    from nait_pipeline.lib.io import sql
    from nait_pipeline.lib.io.contract import ensure_contract_tables

    instance, resource, layout = scored_lake
    result = materialize(instance, resource, ["nait_c_subsets"])
    version = result.asset_materializations_for_node("nait_c_subsets")[0].metadata["subset_versions"].value["all"]
    ensure_contract_tables(layout.root)
    db = tmp_path / "warehouse.duckdb"
    sql.build_warehouse(db, layout.root)
    subset = pq.read_table(layout.subset(version)).sort_by("rank").to_pylist()
    turns = pq.read_table(layout.subset_explanation(version)).to_pylist()
    assert [t["example_id"] for t in turns] == [r["example_id"] for r in subset]
    # Capabilities take turns in name order, each picking its best row not yet taken.
    assert [t["chosen_by"] for t in turns] == sorted(synthetic_lake.CAPABILITIES)[:len(turns)]
    for row in subset[:3]:
        rows = sql.run_query(db, "explain_selection", {"subset_version": version,
                                                       "example_id": row["example_id"]}).to_pylist()
        assert [r["layer"] for r in rows] == [1, 2, 3]  # the synthetic store has 3 layers
        chooser = rows[0]["scored_for"]
        assert chooser == next(t["chosen_by"] for t in turns if t["example_id"] == row["example_id"])
        assert sum(r["contribution"] for r in rows) == pytest.approx(rows[0]["capability_score"], abs=1e-4)
        nearest = rows[0]["nearest_targets"]
        assert len(nearest) == 3 and all(t.startswith(f"{chooser}-") for t in nearest)
        assert rows[0]["nearest_similarity"] == sorted(rows[0]["nearest_similarity"], reverse=True)


def test_the_lda_variant_scores_with_its_own_direction_under_its_own_name(scored_lake):
    """nait_c_lda is NAIT-C with the whitened direction: its scores record lda, nait_c's contrastive, and
    the two rank the synthetic pool differently (the whitening is applied, not just recorded)."""
    from nait_pipeline.lib.io.lake import read_metadata
    from nait_pipeline.lib.methods.nait import nait_c_method

    assert "Σ_LW⁻¹" in nait_c_method.LDA_METHOD.recipe  # its recipe is derived from nait_c's by replacement
    _, _, layout = scored_lake
    for capability in synthetic_lake.CAPABILITIES:
        lda, contrastive = (layout.scores(name, capability) for name in ("nait_c_lda", "nait_c"))
        assert read_metadata(lda)["params"]["direction"] == "lda"
        assert read_metadata(contrastive)["params"]["direction"] == "contrastive"
    differ = [not np.allclose(pq.read_table(layout.scores("nait_c_lda", c)).column("score").to_numpy(),
                              pq.read_table(layout.scores("nait_c", c)).column("score").to_numpy())
              for c in synthetic_lake.CAPABILITIES]
    assert any(differ)


def test_score_metadata_shows_the_top_rows_with_their_instructions(scored_lake):
    instance, resource, layout = scored_lake
    result = materialize(instance, resource, ["length_scores"])
    top = result.asset_materializations_for_node("length_scores")[0].metadata["top_10"].value
    scores = pq.read_table(layout.scores("length", "all")).sort_by([("score", "descending"), ("example_id", "ascending")])
    best = scores.column("example_id")[0].as_py()
    pool = pq.read_table(layout.pool_examples).to_pylist()
    instruction = next(r["instruction"] for r in pool if r["example_id"] == best)
    first_row = top.splitlines()[2]
    assert first_row.startswith(f"| {best} |") and instruction.replace("\n", " ")[:40] in first_row
    assert PoolView.open(layout).instructions([best, "no-such-row"]) == [instruction, ""]
