"""A fine-tune depends on its own subset only: re-selecting another method leaves a model fresh, and only
a change of its own subset record makes it stale (the real assets, the embedded model, one training step)."""

from __future__ import annotations

import json

import dagster as dg
import pyarrow.parquet as pq
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from nait_pipeline.defs.assets.loop import finetuned_model, subset_version
from nait_pipeline.defs.assets.methods import score_assets, subset_assets
from nait_pipeline.defs.partitions import SUBSET_VERSION_ASSET
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline_tests import synthetic_lake

ASSETS = [*score_assets, *subset_assets, subset_version, finetuned_model]
FINETUNE = {"finetuned_model": {"config": {"max_length": 64, "batch_size": 8}}}


def stale_status(instance, graph, key: str, partition: str) -> StaleStatus:
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                          instance=instance, asset_graph=graph)
    return CachingStaleStatusResolver(instance, graph, loading_context=view).get_status(dg.AssetKey(key), partition)


def test_a_finetune_reads_its_own_subset_version_not_every_method():
    graph = AssetGraph.from_assets(ASSETS)
    assert graph.get(dg.AssetKey("finetuned_model")).parent_keys == {dg.AssetKey("base_model"), SUBSET_VERSION_ASSET}
    assert graph.get(SUBSET_VERSION_ASSET).parent_keys == set()  # its data version is the content hash


def test_reselecting_one_method_marks_only_its_own_models_stale(tmp_path, model_dir):
    layout = synthetic_lake.build(tmp_path / "lake")
    record = json.loads(layout.model_record.read_text())
    layout.model_record.write_text(json.dumps({**record, "path": str(model_dir)}))
    resource = LakeResource(data_dir=str(tmp_path), store_dir=str(tmp_path))
    graph = AssetGraph.from_assets(ASSETS)

    def run(selection, partition=None, config=None):
        result = dg.materialize(ASSETS, selection=selection, partition_key=partition, instance=instance,
                                resources={"pipeline": resource}, run_config={"ops": config or {}})
        assert result.success

    def current(method: str) -> str:
        [version] = pq.read_table(layout.current_subsets(method), columns=["subset_version"]).column(0).to_pylist()
        return version

    with dg.instance_for_test() as instance:
        run(["length_scores"])
        run(["length_subsets"])
        run(["random_subsets"], config={"random_subsets": {"config": {"seeds": [0]}}})
        longest, random_0 = current("length"), current("random")
        # The selections recorded their versions: nothing needs materializing before the fine-tunes.
        assert {longest, random_0} <= instance.get_materialized_partitions(SUBSET_VERSION_ASSET)
        run(["finetuned_model"], longest, FINETUNE)  # one real fine-tune: the length subset's model
        assert stale_status(instance, graph, "finetuned_model", longest) == StaleStatus.FRESH

        run(["random_subsets"], config={"random_subsets": {"config": {"seeds": [1]}}})  # re-selected: a new version
        assert current("random") != random_0
        assert stale_status(instance, graph, "finetuned_model", longest) == StaleStatus.FRESH

        # Re-selecting the length method with the same inputs gives the same version: its model stays fresh.
        run(["length_subsets"])
        assert current("length") == longest
        assert stale_status(instance, graph, "finetuned_model", longest) == StaleStatus.FRESH

        # The recorded subset changes (a stored file re-checked under another version): only its model is stale.
        instance.report_runless_asset_event(dg.AssetMaterialization(
            SUBSET_VERSION_ASSET, partition=longest,
            tags={"dagster/data_version": "changed", "dagster/data_version_is_user_provided": "true"}))
        assert stale_status(instance, graph, "finetuned_model", longest) == StaleStatus.STALE
