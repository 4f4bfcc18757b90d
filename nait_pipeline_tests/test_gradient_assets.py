"""The gradient methods end to end on a small slice of the real pools with the real model: warmup,
pool and target gradients, LESS scores, LESS / BIDS / G2IS subsets with lineage, resume by checkpoint,
and a projection mismatch refused."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from nait_pipeline.lib.io.pool_view import PoolView
from nait_pipeline.defs.assets.gradients import gradient_graph, pool_gradients, target_gradients, warmup_adapter
from nait_pipeline.defs.assets.methods import score_assets, subset_assets
from nait_pipeline.defs.assets.model import base_model
from nait_pipeline.defs.assets.pool import it_pool, pool_contamination
from nait_pipeline.defs.assets.targets import target_sets, target_test_sets
from nait_pipeline.defs.partitions import CAPABILITIES_NAME
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.features.projection import ProjectionMismatchError
from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.methods.gradients import less_math

ASSETS = [base_model, it_pool, target_sets, target_test_sets, pool_contamination, warmup_adapter, pool_gradients, target_gradients,
          gradient_graph, *score_assets, *subset_assets]
CAPABILITIES = ["math", "knowledge"]  # knowledge: MMLU, one subtask per subject
GRADIENTS = {"config": {"dim": 64, "max_length": 256}}
CONFIG = {"ops": {"target_sets": {"config": {"size": 6}},
                  "warmup_adapter": {"config": {"epochs": 2, "min_rows": 6, "max_length": 128, "lora_r": 4,
                                                "lora_alpha": 16, "batch_size": 3, "learning_rate": 1e-4}},
                  "pool_gradients": GRADIENTS, "target_gradients": GRADIENTS,
                  "gradient_graph": {"config": {"k": 8}},
                  "less_subsets": {"config": {"budget_ratio": 0.25}},
                  "bids_subsets": {"config": {"budget_ratio": 0.25}},
                  "g2is_subsets": {"config": {"budget_ratio": 0.25, "delta": 0.5}}}}


def run(instance, resource, selection, partition_key=None, run_config=None):
    # Dagster refuses config for assets outside the run.
    ops = {k: v for k, v in (run_config or CONFIG)["ops"].items() if k in selection}
    result = dg.materialize(ASSETS, selection=selection, partition_key=partition_key, instance=instance,
                            resources={"pipeline": resource}, run_config={"ops": ops})
    assert result.success
    return result


@pytest.fixture(scope="module")
def pipeline(shared_data, model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("gradient_store")
    resource = LakeResource(data_dir=str(shared_data), store_dir=str(store), model=str(model_dir), pool_sample=4)
    layout = LakeLayout(store / "lake")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(CAPABILITIES_NAME, CAPABILITIES)
        run(instance, resource, ["base_model", "it_pool", "warmup_adapter"])
        for capability in CAPABILITIES:
            run(instance, resource, ["target_sets", "target_test_sets", "target_gradients"], capability)
        shards = PoolView.open(layout).shards
        for shard in shards:
            run(instance, resource, ["pool_gradients"], shard)
        for capability in CAPABILITIES:
            run(instance, resource, ["less_scores"], capability)
        run(instance, resource, ["gradient_graph"])
        run(instance, resource, ["pool_contamination"])
        subsets = run(instance, resource, ["less_subsets", "bids_subsets", "g2is_subsets"])
        yield instance, resource, layout, subsets


def versions_of(result, method):
    return result.asset_materializations_for_node(f"{method}_subsets")[0].metadata["subset_versions"].value


def test_subsets_of_every_gradient_method_with_lineage(pipeline):
    _, _, layout, result = pipeline
    n = 16
    for method in ("less", "bids", "g2is"):
        versions = versions_of(result, method)
        assert set(versions) == {*CAPABILITIES, "all"}
        for capability, version in versions.items():
            subset = pq.read_table(layout.subset(version))
            lineage = pq.read_table(layout.lineage(version)).to_pylist()[0]
            assert lineage["method"] == method and lineage["n_pool"] == n
            params = json.loads(lineage["params_json"])
            if method == "g2is":
                assert len(subset) == int(n * 0.25) - params["shortfall"]
                assert params["sklearn_version"] and sum(params["component_budgets"]) == int(n * 0.25)
            else:
                assert len(subset) == 4  # floor(0.25 * 16)
    # LESS's math subset is the top of the stored LESS scores.
    scores = pq.read_table(layout.scores("less", "math")).to_pylist()
    ranked = sorted((r for r in scores if r["score"] is not None), key=lambda r: (-r["score"], r["example_id"]))
    subset = pq.read_table(layout.subset(versions_of(result, "less")["math"])).column("example_id").to_pylist()
    assert subset == [r["example_id"] for r in ranked[:4]]


def test_less_scores_are_the_weighted_cosines_of_the_stored_gradients(pipeline):
    _, _, layout, _ = pipeline
    warmup = json.loads(layout.warmup_record.read_text())
    assert len(warmup["checkpoints"]) == 2 and np.isclose(sum(warmup["weights"]), 1.0)
    with np.load(layout.score_matrix("less", "knowledge")) as stored:
        matrix, pool_ids, target_ids = stored["matrix"], stored["pool_ids"].tolist(), stored["target_ids"].tolist()
    recomputed = 0.0
    for weight, checkpoint in zip(warmup["weights"], warmup["checkpoints"]):
        pool = {}
        for shard in PoolView.open(layout).shards:
            table = pq.read_table(layout.pool_gradients(shard, checkpoint["epoch"]))
            raw = table.column("gradient").combine_chunks()
            vectors = np.frombuffer(raw.buffers()[1], np.float32).reshape(len(table), -1)
            pool.update(zip(table.column("example_id").to_pylist(), vectors))
        target_table = pq.read_table(layout.target_gradients("knowledge", checkpoint["epoch"]))
        raw = target_table.column("gradient").combine_chunks()
        target = dict(zip(target_table.column("example_id").to_pylist(),
                          np.frombuffer(raw.buffers()[1], np.float32).reshape(len(target_table), -1)))
        recomputed = recomputed + weight * np.stack([pool[i] for i in pool_ids]) @ np.stack([target[t] for t in
                                                                                              target_ids]).T
    np.testing.assert_allclose(matrix, recomputed, rtol=1e-5, atol=1e-6)
    for vectors in pool.values():
        assert np.isclose(np.linalg.norm(vectors), 1.0, atol=1e-5)
    tasks = dict(zip(*(pq.read_table(layout.target_selection("knowledge")).column(c).to_pylist()
                       for c in ("example_id", "task"))))
    expected, _, _ = less_math.subtask_scores(matrix, [tasks[t] for t in target_ids])
    stored = {r["example_id"]: r["score"] for r in pq.read_table(layout.scores("less", "knowledge")).to_pylist()}
    np.testing.assert_allclose([stored[i] for i in pool_ids], expected, rtol=1e-6)


def test_a_finished_checkpoint_is_kept_and_a_changed_projection_is_refused(pipeline):
    instance, resource, layout, _ = pipeline
    shard = PoolView.open(layout).shards[0]
    first = layout.pool_gradients(shard, 1)
    before = read_metadata(first)["store_version"]
    stamp = first.stat().st_mtime_ns
    again = run(instance, resource, ["pool_gradients"], shard)
    assert again.asset_materializations_for_node("pool_gradients")[0].metadata["recomputed"].value == 0
    assert first.stat().st_mtime_ns == stamp and read_metadata(first)["store_version"] == before
    # Targets projected with another seed cannot be compared with the pool.
    other = {"ops": {**CONFIG["ops"], "target_gradients": {"config": {"dim": 64, "max_length": 256, "seed": 7}}}}
    run(instance, resource, ["target_gradients"], "math", other)
    with pytest.raises(ProjectionMismatchError, match="projections differ"):
        dg.materialize(ASSETS, selection=["less_scores"], partition_key="math", instance=instance,
                       resources={"pipeline": resource}, run_config={"ops": {}}, raise_on_error=True)
    run(instance, resource, ["target_gradients"], "math")  # back to the pool's projection


def test_dumps_rerun_with_the_official_semantics_give_the_same_ids(pipeline, model_dir, tmp_path):
    import torch

    from nait_pipeline.lib.methods.audit import dump_selection
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate
    from nait_pipeline_tests.test_gradient_math import official_walk

    _, _, layout, result = pipeline
    template = ChatTemplate(model_io.load_tokenizer(model_dir))
    # LESS: matching.py (sum of weighted products, reshape by subtask, mean, max), then the top int(p * N).
    version = versions_of(result, "less")["math"]
    manifest = json.loads(dump_selection(layout, version, tmp_path / "less", template).read_text())
    out = tmp_path / "less"
    ids = json.loads((out / "pool_ids.json").read_text())
    warmup = json.loads(layout.warmup_record.read_text())
    weights = [w / sum(warmup["weights"]) for w in warmup["weights"]]
    influence = sum(w * torch.load(out / f"less/ckpt{c['epoch']}/pool.pt").float() @
                    torch.load(out / f"less/ckpt{c['epoch']}/math.pt").float().T
                    for w, c in zip(weights, warmup["checkpoints"]))
    assert manifest["official"]["less_subtasks"]["math"]["official_blocks"]
    n_subtasks = manifest["official"]["less_subtasks"]["math"]["n_subtasks"]
    score = influence.reshape(influence.shape[0], n_subtasks, -1).mean(-1).max(-1)[0]
    top = torch.sort(score, descending=True)[1][: int(0.25 * len(ids))].tolist()
    assert [ids[i] for i in top] == json.loads((out / "selected_ids.json").read_text())
    # G2IS: gradient_walk.py's steps on the dumped files (sklearn PCA at val_k, normalisation, the walk).
    from sklearn.decomposition import PCA

    version = versions_of(result, "g2is")["all"]
    manifest = json.loads(dump_selection(layout, version, tmp_path / "g2is", template).read_text())
    out = tmp_path / "g2is"
    params = manifest["params"]
    train = torch.load(out / "g2is/train_gradients.pt").numpy()
    validation = torch.load(out / "g2is/validation_gradients.pt").numpy()
    pca = PCA(n_components=params["val_k"]).fit(validation)
    components = pca.components_ / np.linalg.norm(pca.components_, axis=1, keepdims=True)
    weights = pca.explained_variance_ratio_ / pca.explained_variance_ratio_.sum()
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    walked = official_walk(train, components, weights, np.load(out / "g2is/graph.npy"), params["budget_ratio"],
                           params["delta"])
    ids = json.loads((out / "pool_ids.json").read_text())
    assert [ids[i] for i in walked] == json.loads((out / "selected_ids.json").read_text())
    assert "gradient_walk.py" in manifest["official"]["g2is_walk"]


class Killed(Exception):
    pass


def test_a_killed_gradient_run_resumes_per_checkpoint_with_identical_results(pipeline, monkeypatch):
    from nait_pipeline.lib.features import gradients as gr

    instance, resource, layout, _ = pipeline
    shard = PoolView.open(layout).shards[1]
    paths = [layout.pool_gradients(shard, epoch) for epoch in (1, 2)]
    before = [gr.read_gradient_stores([p]).vectors.copy() for p in paths]
    for path in paths:
        path.unlink()
    real = gr.gradient_features
    calls = []

    def killed_at_the_second_checkpoint(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(gr, "gradient_features", killed_at_the_second_checkpoint)
    result = dg.materialize(ASSETS, selection=["pool_gradients"], partition_key=shard, instance=instance,
                            resources={"pipeline": resource}, raise_on_error=False,
                            run_config={"ops": {"pool_gradients": GRADIENTS}})
    assert not result.success
    assert paths[0].exists() and not paths[1].exists()
    monkeypatch.setattr(gr, "gradient_features", real)
    resumed = run(instance, resource, ["pool_gradients"], shard)
    assert resumed.asset_materializations_for_node("pool_gradients")[0].metadata["recomputed"].value == 1
    for path, vectors in zip(paths, before):
        np.testing.assert_array_equal(gr.read_gradient_stores([path]).vectors, vectors)


def test_ray_workers_compute_the_gradient_stores_of_the_run(pipeline, local_ray):
    """The gradient kind on the Ray executor: every shard's checkpoints recomputed by two workers (each loads
    the LoRA model once for all its shards and checkpoints) give the same stores as the run's own process."""
    from nait_pipeline.lib.features import gradients as gr

    instance, resource, layout, _ = pipeline
    shards = PoolView.open(layout).shards
    paths = [layout.pool_gradients(shard, epoch) for shard in shards for epoch in (1, 2)]
    before = {p: (read_metadata(p)["store_version"], gr.read_gradient_stores([p]).vectors.copy()) for p in paths}
    for path in paths:
        path.unlink()
    on_ray = LakeResource(**{**resource.model_dump(), "executor": "ray", "ray_gpus_per_worker": 0.5})
    tags = {"dagster/asset_partition_range_start": shards[0], "dagster/asset_partition_range_end": shards[-1]}
    result = dg.materialize(ASSETS, selection=["pool_gradients"], instance=instance, tags=tags,
                            resources={"pipeline": on_ray}, run_config={"ops": {"pool_gradients": GRADIENTS}})
    metadata = result.asset_materializations_for_node("pool_gradients")[0].metadata
    assert metadata["executor"].value.startswith("ray") and metadata["recomputed"].value == len(paths)
    assert len({line.split("|")[2].strip() for line in metadata["checkpoints"].value.splitlines()[2:]}) == 2
    for path, (version, vectors) in before.items():
        assert read_metadata(path)["store_version"] == version
        # One thread per worker against the run's two: the same values up to float32 summation order, which
        # through 30 layers moves entries of these unit rows (~0.03) by up to ~5e-6 on some CPUs (AVX-512).
        np.testing.assert_allclose(gr.read_gradient_stores([path]).vectors, vectors, rtol=1e-4, atol=2e-5)
