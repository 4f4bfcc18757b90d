"""NAIT assets end to end on a small slice of the real pools with the real model: scores, subsets,
lineage, determinism, resuming a killed featurization, and scoring without a model forward."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from nait_pipeline.lib.features import forward as forward_module
from nait_pipeline.defs.assets.features import pool_activations, target_activations
from nait_pipeline.defs.assets.loop import comparison, evaluation, finetuned_model
from nait_pipeline.defs.assets.methods import score_assets, subset_assets
from nait_pipeline.defs.assets.model import base_model
from nait_pipeline.defs.assets.nait import capability_directions
from nait_pipeline.defs.assets.pool import it_pool, pool_contamination
from nait_pipeline.defs.assets.targets import target_sets, target_test_sets
from nait_pipeline.defs.assets.warehouse import warehouse
from nait_pipeline.defs.partitions import register_capabilities
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.io import sql
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.settings import CAPABILITIES

ASSETS = [base_model, it_pool, target_sets, target_test_sets, pool_contamination, warehouse, pool_activations, target_activations,
          capability_directions, *score_assets, *subset_assets, finetuned_model, evaluation, comparison]
SMALL = {"ops": {"target_sets": {"config": {"size": 8}}}}


def run(instance, resource, selection, partition_key=None, run_config=None):
    result = dg.materialize(ASSETS, selection=selection, partition_key=partition_key, instance=instance,
                            resources={"pipeline": resource}, run_config=run_config or {})
    assert result.success
    return result


def shard_keys(layout: LakeLayout) -> list[str]:
    table = pq.read_table(layout.pool_examples, columns=["shard"], filters=[("status", "=", "kept")])
    return sorted(set(table.column("shard").to_pylist()))


@pytest.fixture(scope="module")
def pipeline(shared_data, model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("nait_store")
    resource = LakeResource(data_dir=str(shared_data), store_dir=str(store), model=str(model_dir), pool_sample=6)
    layout = LakeLayout(store / "lake")
    with dg.instance_for_test() as instance:
        register_capabilities(instance, shared_data / "targets")
        run(instance, resource, ["base_model", "it_pool"])
        for capability in CAPABILITIES:
            run(instance, resource, ["target_sets", "target_test_sets"], capability, SMALL)
        run(instance, resource, ["pool_contamination"])
        for shard in shard_keys(layout):
            run(instance, resource, ["pool_activations"], shard)
        for capability in CAPABILITIES:
            run(instance, resource, ["target_activations", "capability_directions", "nait_scores"], capability)
        first = run(instance, resource, ["nait_subsets"])
        run(instance, resource, ["warehouse"])
        yield instance, resource, layout, first


def test_scores_and_subsets_land_in_the_warehouse(pipeline):
    _, resource, layout, first = pipeline
    db = resource.settings.warehouse_path
    with sql.connect_read_only(db) as con:
        assert con.execute("SELECT count(*) FROM pool_examples").fetchone()[0] == 24
        per_capability = dict(con.execute("SELECT capability, count(*) FROM scores GROUP BY ALL").fetchall())
        assert per_capability == dict.fromkeys(CAPABILITIES, 24)
        sizes = con.execute("SELECT capability, count(*) FROM subsets GROUP BY ALL ORDER BY 1").fetchall()
        assert sizes == [(c, 3) for c in sorted([*CAPABILITIES, "all"])]  # ceil(0.1 * 24)
        lineage = con.execute("SELECT method, model_id, template_hash, pool_version, params_json, n_pool "
                              "FROM subset_lineage WHERE capability = 'math'").fetchone()
        assert lineage[0] == "nait" and lineage[1].startswith("SmolLM2-135M-Instruct@") and lineage[5] == 24
        assert '"budget_ratio": 0.1' in lineage[4] and '"aggregation": "sum"' in lineage[4]
        assert '"score_versions": {"math": ' in lineage[4]
    top = sql.run_query(db, "top_subset_examples", {"method": "nait", "capability": "math", "k": 20}).to_pylist()
    assert [r["rank"] for r in top] == [1, 2, 3] and all(r["instruction"] for r in top)
    math_scores = pq.read_table(layout.scores("nait", "math"))
    best = math_scores.sort_by([("score", "descending"), ("example_id", "ascending")]).column("example_id")[:3]
    assert [r["example_id"] for r in top] == best.to_pylist()
    checks = {c.check_name: c for c in first.get_asset_check_evaluations()}
    assert checks["budget_respected"].passed


def test_same_inputs_give_the_same_subsets(pipeline):
    instance, resource, layout, first = pipeline
    again = run(instance, resource, ["nait_subsets"])
    versions = lambda result: result.asset_materializations_for_node("nait_subsets")[0].metadata[  # noqa: E731
        "subset_versions"].value
    assert versions(again) == versions(first)
    assert len(list((layout.root / "subsets").glob("nait-*.parquet"))) == 6


def test_killed_featurization_resumes_only_unfinished_shards(pipeline):
    instance, resource, layout, _ = pipeline
    shards = shard_keys(layout)
    before = pq.read_table(layout.scores("nait", "math")).column("score").to_numpy()
    victim = layout.pool_activations(shards[1])
    victim.unlink()  # a run killed mid-shard leaves no file (writes are temp file + rename) ...
    (victim.parent / f".{victim.name}.abc.parquet.tmp").write_bytes(b"half")  # ... at most a temp file
    reused = {}
    for shard in shards:
        result = run(instance, resource, ["pool_activations"], shard)
        reused[shard] = result.asset_materializations_for_node("pool_activations")[0].metadata["reused"].value
    assert reused == {s: s != shards[1] for s in shards}
    run(instance, resource, ["nait_scores"], "math")
    after = pq.read_table(layout.scores("nait", "math")).column("score").to_numpy()
    np.testing.assert_array_equal(before, after)


def test_scoring_reads_the_store_and_never_runs_the_model(pipeline, monkeypatch):
    instance, resource, layout, _ = pipeline

    def no_model(*_args, **_kwargs):
        raise AssertionError("scoring must not load the model")

    before = pq.read_table(layout.scores("nait", "reasoning")).column("score").to_numpy()
    (layout.root / "scores" / "nait__reasoning.parquet").unlink()
    monkeypatch.setattr(forward_module, "cached_model", no_model)
    result = run(instance, resource, ["capability_directions", "nait_scores"], "reasoning")
    meta = result.asset_materializations_for_node("nait_scores")[0].metadata
    assert meta["row_count"].value == 24
    np.testing.assert_array_equal(pq.read_table(layout.scores("nait", "reasoning")).column("score").to_numpy(), before)


def test_missing_pool_shard_fails_naming_it(pipeline, tmp_path):
    instance, resource, layout, _ = pipeline
    shard = shard_keys(layout)[0]
    path = layout.pool_activations(shard)
    path.rename(tmp_path / "moved.parquet")
    try:
        result = dg.materialize(ASSETS, selection=["nait_scores"], partition_key="math", instance=instance,
                                resources={"pipeline": resource}, raise_on_error=False)
        assert not result.success
        message = result.get_step_failure_events()[0].step_failure_data.error.to_string()
        assert "not featurized yet" in message and shard in message
    finally:
        (tmp_path / "moved.parquet").rename(path)


def test_export_and_dump_let_anyone_redo_the_selection(pipeline, tmp_path):
    import json

    from nait_pipeline.lib.methods.audit import export_subset
    from nait_pipeline.lib.methods.nait.nait_method import dump_nait_selection
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate

    _, resource, layout, first = pipeline
    versions = first.asset_materializations_for_node("nait_subsets")[0].metadata["subset_versions"].value
    for capability in ("math", "all"):
        version = versions[capability]
        out = tmp_path / capability
        template = ChatTemplate(model_io.load_tokenizer(Path(resource.model)))
        manifest = json.loads(dump_nait_selection(layout, version, out, template).read_text())
        assert set(manifest["files"]) <= {p.name for p in out.iterdir()}
        ids = json.loads((out / "pool_ids.json").read_text())
        features = np.load(out / "pool_layer_mean.npy")
        caps = list(CAPABILITIES) if capability == "all" else [capability]
        per_cap = [np.einsum("nld,ld->n", features, np.load(out / f"directions_{c}.npy")) for c in caps]
        for c, recomputed in zip(caps, per_cap):
            np.testing.assert_allclose(recomputed, np.load(out / f"scores_{c}.npy"), rtol=1e-4)
        score = per_cap[0] if capability != "all" else sum((s - s.mean()) / s.std() for s in per_cap)
        order = sorted(range(len(ids)), key=lambda i: (-score[i], ids[i]))
        assert [ids[i] for i in order[:3]] == json.loads((out / "selected_ids.json").read_text())
        texts = [json.loads(line) for line in (out / "pool_texts.jsonl").read_text().splitlines()]
        assert len(texts) == 24 and texts[0]["prompt_text"].startswith("<|im_start|>system")

    exported = tmp_path / "math.jsonl"
    assert export_subset(layout, versions["math"], "alpaca", exported) == 3
    records = [json.loads(line) for line in exported.read_text().splitlines()]
    assert set(records[0]) == {"id", "instruction", "input", "output"}
    chat = tmp_path / "math_chat.jsonl"
    export_subset(layout, versions["math"], "chat", chat)
    assert json.loads(chat.read_text().splitlines()[0])["messages"][1]["role"] == "assistant"
    export_subset(layout, versions["math"], "parquet", tmp_path / "math.parquet")
    assert pq.read_table(tmp_path / "math.parquet").column("rank").to_pylist() == [1, 2, 3]


@pytest.mark.parametrize("config", [{"merge": "pooled", "drift": "R1"}, {"merge": "quota"}])
def test_other_all_capability_merges_make_their_own_versions(pipeline, config):
    instance, resource, layout, first = pipeline
    result = run(instance, resource, ["nait_subsets"], run_config={"ops": {"nait_subsets": {"config": config}}})
    versions = result.asset_materializations_for_node("nait_subsets")[0].metadata["subset_versions"].value
    baseline = first.asset_materializations_for_node("nait_subsets")[0].metadata["subset_versions"].value
    assert versions["math"] == baseline["math"]  # per-capability subsets do not depend on the merge
    lineage = pq.read_table(layout.lineage(versions["all"])).to_pylist()[0]
    assert f'"merge": "{config["merge"]}"' in lineage["params_json"] and lineage["n_selected"] == 3


def test_dump_refuses_a_subset_whose_scores_were_replaced(pipeline, tmp_path):
    from nait_pipeline.lib.methods.nait.nait_method import dump_nait_selection
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate

    instance, resource, layout, _ = pipeline
    old = run(instance, resource, ["nait_subsets"]).asset_materializations_for_node("nait_subsets")[0]
    old_math = old.metadata["subset_versions"].value["math"]
    run(instance, resource, ["nait_scores"], "math", {"ops": {"nait_scores": {"config": {"aggregation": "zscore"}}}})
    try:
        template = ChatTemplate(model_io.load_tokenizer(Path(resource.model)))
        with pytest.raises(ValueError, match="was selected from math score version"):
            dump_nait_selection(layout, old_math, tmp_path / "dump", template)
        mixed = run(instance, resource, ["nait_subsets"]).asset_materializations_for_node("nait_subsets")[0]
        versions = mixed.metadata["subset_versions"].value
        math_params = pq.read_table(layout.lineage(versions["math"])).column("params_json")[0].as_py()
        all_params = pq.read_table(layout.lineage(versions["all"])).column("params_json")[0].as_py()
        assert '"aggregation": "zscore"' in math_params
        assert '"math": {"aggregation": "zscore"' in all_params and '"code": {"aggregation": "sum"' in all_params
    finally:
        run(instance, resource, ["nait_scores"], "math")


def test_random_subsets_and_full_pool_reference(pipeline):
    instance, resource, layout, _ = pipeline
    first = run(instance, resource, ["random_subsets", "full_subsets"])
    again = run(instance, resource, ["random_subsets"])
    versions = first.asset_materializations_for_node("random_subsets")[0].metadata["subset_versions"].value
    assert versions == again.asset_materializations_for_node("random_subsets")[0].metadata["subset_versions"].value
    assert list(versions) == ["all/seed=0", "all/seed=1", "all/seed=2"]
    random_sets = [set(pq.read_table(layout.subset(v)).column("example_id").to_pylist()) for v in versions.values()]
    assert all(len(s) == 3 for s in random_sets)
    assert len({frozenset(s) for s in random_sets}) > 1  # seeds differ
    full = first.asset_materializations_for_node("full_subsets")[0].metadata["subset_versions"].value["all"]
    assert pq.read_table(layout.subset(full)).num_rows == 24


def train_and_evaluate(instance, resource, version):
    """A one-step fine-tune and a two-row evaluation: the evaluation run's result."""
    run(instance, resource, ["finetuned_model"], version,
        {"ops": {"finetuned_model": {"config": {"epochs": 1, "batch_size": 3}}}})
    return run(instance, resource, ["evaluation"], version,
               {"ops": {"evaluation": {"config": {"sample_size": 2, "max_new_tokens": 16, "items_per_capability": 4}}}})


def test_fine_tune_and_evaluate_a_subset_version(pipeline):
    instance, resource, layout, first = pipeline
    version = first.asset_materializations_for_node("nait_subsets")[0].metadata["subset_versions"].value["math"]
    assert instance.has_dynamic_partition("subset_versions", version)
    result = train_and_evaluate(instance, resource, version)
    assert result.asset_materializations_for_node("evaluation")[0].metadata["row_count"].value >= 8
    run(instance, resource, ["warehouse"])
    with sql.connect_read_only(resource.settings.warehouse_path) as con:
        steps, examples = con.execute("SELECT steps, examples FROM finetune_runs WHERE subset_version = ?",
                                      [version]).fetchone()
        assert (steps, examples) == (1, 3)
        metrics = {row[0] for row in con.execute("SELECT capability || ':' || metric FROM evaluations "
                                                 "WHERE subset_version = ?", [version]).fetchall()}
    assert {"math:gsm8k_exact_match", "knowledge:mmlu_accuracy", "reasoning:bbh_exact_match",
            "code:mbpp_pass@1", "code:humaneval_pass@1", "math:answer_nll"} <= metrics
    # Per-item rows behind the forward-only aggregates (items_per_capability = 4).
    with sql.connect_read_only(resource.settings.warehouse_path) as con:
        per_item = con.execute("SELECT capability, metric, status, count(*) FROM evaluation_items "
                               "WHERE subset_version = ? GROUP BY ALL", [version]).fetchall()
        aggregates = dict(con.execute("SELECT capability || ':' || metric, n FROM evaluations WHERE subset_version = ? "
                                      "AND metric LIKE '%logprob%'", [version]).fetchall())
    counts = {(c, m, s): n for c, m, s, n in per_item}
    assert counts[("math", "gold_logprob_per_token", "ok")] == 4
    assert counts[("code", "gold_logprob_per_token", "ok")] == 4  # 3 MBPP + 1 HumanEval
    assert sum(n for (c, _, _), n in counts.items() if c == "reasoning") == 4  # one item of 4 BBH tasks
    assert aggregates["math:gsm8k_gold_logprob_per_token"] == 4
    assert aggregates["reasoning:bbh_option_logprob"] == counts[("reasoning", "option_logprob", "ok")]
    table = sql.run_query(resource.settings.warehouse_path, "evaluation_by_method").to_pylist()
    assert {r["method"] for r in table} == {"nait"}


def test_comparison_sets_a_method_against_random_and_the_full_pool(pipeline):
    instance, resource, layout, first = pipeline
    # Earlier tests selected math with zscore too (a newer version); re-selecting with the defaults makes
    # the first math version the pipeline's current one again, and the comparison must follow that.
    current = run(instance, resource, ["nait_subsets"]).asset_materializations_for_node("nait_subsets")[0]
    nait_math = current.metadata["subset_versions"].value["math"]
    assert nait_math == first.asset_materializations_for_node("nait_subsets")[0].metadata["subset_versions"].value["math"]
    references = run(instance, resource, ["random_subsets", "full_subsets"])
    random_0 = references.asset_materializations_for_node("random_subsets")[0].metadata["subset_versions"].value[
        "all/seed=0"]
    full = references.asset_materializations_for_node("full_subsets")[0].metadata["subset_versions"].value["all"]
    for version in (random_0, full) if layout.evaluation(nait_math).exists() else (random_0, full, nait_math):
        train_and_evaluate(instance, resource, version)
    result = run(instance, resource, ["comparison"], None,
                 {"ops": {"comparison": {"config": {"name": "tiny", "random_seeds": [0]}}}})
    metadata = result.asset_materializations_for_node("comparison")[0].metadata
    assert metadata["runs"].value == 3
    assert len(metadata["not_evaluated"].value) == 5  # NAIT for the other four capabilities and for all
    assert layout.comparison("tiny").with_suffix(".png").exists()
    assert "| nait:math |" in layout.comparison("tiny").with_suffix(".md").read_text()
    run(instance, resource, ["warehouse"])
    rows = sql.run_query(resource.settings.warehouse_path, "protocol_comparison", {"protocol": "tiny"}).to_pylist()
    assert {r["method"] for r in rows} == {"nait:math", "random", "full"}
    with sql.connect_read_only(resource.settings.warehouse_path) as con:
        random_nll, full_nll = (con.execute(
            "SELECT value FROM evaluations WHERE subset_version = ? AND capability = 'math' "
            "AND metric = 'answer_nll'", [v]).fetchone()[0] for v in (random_0, full))
    nait_row = next(r for r in rows if r["method"] == "nait:math" and r["eval_capability"] == "math"
                    and r["metric"] == "answer_nll")
    assert nait_row["random_mean"] == pytest.approx(random_nll, abs=1e-4)
    assert nait_row["full_pool"] == pytest.approx(full_nll, abs=1e-4)
    assert nait_row["selection_tokens"] > 0 and nait_row["selection_s"] > 0
