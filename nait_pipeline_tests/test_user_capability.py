"""A capability added by dropping a file: registered, given a target set and activations with the real
model, then scored and selected from the stored pool features without any model pass over the pool."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from nait_pipeline.lib.features import forward as forward_module
from nait_pipeline.defs.assets.features import target_activations
from nait_pipeline.defs.assets.methods import score_assets, subset_assets
from nait_pipeline.defs.assets.model import base_model
from nait_pipeline.defs.assets.nait import capability_directions
from nait_pipeline.defs.assets.targets import target_sets, target_test_sets
from nait_pipeline.defs.partitions import CAPABILITIES_NAME, register_capabilities
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.features.feature_store import write_features
from nait_pipeline_tests import synthetic_lake

LEGAL = [{"prompt": f"What does clause {i} of the lease allow?", "answer": f"Clause {i} allows subletting."}
         for i in range(4)] + [{"prompt": "Define lien.", "answer": "A right to keep property.", "split": "test"}]


def test_a_dropped_file_gets_a_target_set_and_activations(model_dir, tmp_path):
    data = tmp_path / "data"
    (data / "targets").mkdir(parents=True)
    (data / "pools").mkdir()
    (data / "targets" / "legal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LEGAL))
    resource = LakeResource(data_dir=str(data), store_dir=str(tmp_path / "store"), model=str(model_dir))
    assets = [base_model, target_sets, target_test_sets, target_activations, capability_directions]
    with dg.instance_for_test() as instance:
        assert register_capabilities(instance, data / "targets") == ["legal"]
        assert dg.materialize(assets, selection=["base_model"], instance=instance,
                              resources={"pipeline": resource}).success
        result = dg.materialize(assets, selection=["target_sets", "target_test_sets", "target_activations",
                                                   "capability_directions"], partition_key="legal",
                                instance=instance, resources={"pipeline": resource})
        assert result.success
    lake = tmp_path / "store" / "lake"
    assert pq.read_table(lake / "targets" / "selection" / "legal.parquet").num_rows == 4
    assert pq.read_table(lake / "targets" / "test" / "legal.parquet").column("prompt").to_pylist() == ["Define lien."]
    assert pq.read_table(lake / "directions" / "legal.parquet").num_rows == 30


def test_a_new_capability_is_selected_from_the_stored_pool_features_alone(tmp_path, monkeypatch):
    store = tmp_path / "store"
    layout = synthetic_lake.build(store / "lake")
    rng = np.random.default_rng(5)
    legal = synthetic_lake._features(rng, 5, 3, 8, shift=2.0, last_token=True)
    write_features(layout.target_activations("legal"), [f"legal-{i}" for i in range(5)], legal,
                   {**synthetic_lake.IDENTITY, "store_version": "target-legal", "stats": legal.stats})

    def no_model(*_args, **_kwargs):
        raise AssertionError("a new capability must be scored without running the model over the pool")

    monkeypatch.setattr(forward_module, "cached_model", no_model)
    resource = LakeResource(data_dir=str(store), store_dir=str(store))
    assets = [capability_directions, *score_assets, *subset_assets]
    capabilities = [*synthetic_lake.CAPABILITIES, "legal"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(CAPABILITIES_NAME, capabilities)
        for capability in capabilities:
            assert dg.materialize(assets, selection=["capability_directions", "nait_scores", "rds_scores"],
                                  partition_key=capability, instance=instance,
                                  resources={"pipeline": resource}).success
        result = dg.materialize(assets, selection=["nait_subsets", "rds_round_robin_subsets"], instance=instance,
                                resources={"pipeline": resource})
    assert result.success
    for asset in ("nait_subsets", "rds_round_robin_subsets"):
        versions = result.asset_materializations_for_node(asset)[0].metadata["subset_versions"].value
        assert set(versions) == {*capabilities, "all"}
        assert pq.read_table(layout.subset(versions["legal"])).num_rows == 4


def test_a_test_file_repeating_an_in_domain_prompt_is_reported_not_dropped(tmp_path):
    from nait_pipeline.lib.io.layout import LakeLayout

    data = tmp_path / "data"
    (data / "targets").mkdir(parents=True)
    (data / "targets" / "legal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LEGAL[:4]))
    held_out = [{"id": "legal-test-0", "prompt": "what does CLAUSE 2 of the lease allow", "answer": "Subletting."},
                {"id": "legal-test-1", "prompt": "Define lien.", "answer": "A right to keep property."}]
    (data / "targets" / "legal.test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    resource = LakeResource(data_dir=str(data), store_dir=str(tmp_path / "store"))
    with dg.instance_for_test() as instance:
        register_capabilities(instance, data / "targets")
        result = dg.materialize([target_sets, target_test_sets], selection=["target_test_sets"], partition_key="legal",
                                instance=instance, resources={"pipeline": resource})
    check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "test_rows_not_in_domain")
    assert not check.passed and check.metadata["overlapping"].value == 1
    [(test_id, in_domain_id)] = check.metadata["pairs (test, in-domain)"].value
    test_rows = pq.read_table(LakeLayout(tmp_path / "store" / "lake").target_test("legal")).to_pylist()
    assert len(test_rows) == 2  # kept: reported, not dropped
    assert next(r for r in test_rows if r["example_id"] == test_id)["prompt"].startswith("what does CLAUSE 2")
