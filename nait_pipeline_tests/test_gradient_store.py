"""The gradient store is read shard by shard: LESS's matrix, G2IS's combined features and the dump's per-checkpoint
arrays equal the whole-array arithmetic, rows in id order even when shards interleave the ids."""

from __future__ import annotations

import numpy as np
import pytest

from nait_pipeline.lib.features import gradients as gr
from nait_pipeline.lib.features.gradient_store import load_target_gradients, read_gradient_pool, read_warmup
from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.lib.io.pool_view import PoolView
from nait_pipeline.lib.methods import scorers
from nait_pipeline.lib.methods.base import MethodInputError
from nait_pipeline.lib.methods.gradients import less_math
from nait_pipeline.lib.methods.run import score_capability
from nait_pipeline_tests import synthetic_lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return synthetic_lake.build(tmp_path_factory.mktemp("gradients") / "lake", n_pool=45, shard_size=8,
                                interleaved=True)


def whole_arrays(layout) -> tuple[list[str], list[np.ndarray]]:
    """Every checkpoint's [N, dim] read in one piece and sorted by id: what the store held before streaming."""
    shards = PoolView.open(layout).shards
    per_checkpoint = []
    for checkpoint in read_warmup(layout)["checkpoints"]:
        stored = gr.read_gradient_stores([layout.pool_gradients(s, checkpoint["epoch"]) for s in shards])
        order = np.argsort(np.asarray(stored.ids, dtype=object), kind="stable")
        ids = [stored.ids[i] for i in order]
        per_checkpoint.append(stored.vectors[order])
    return ids, per_checkpoint


def test_shards_interleave_ids_yet_the_pool_reads_in_id_order(lake):
    pool, _ = read_gradient_pool(lake)
    ids, per_checkpoint = whole_arrays(lake)
    first_shard = pool.shard_positions[0]
    assert len(pool.shard_paths) == 6 and np.any(np.diff(first_shard) != 1)  # the shard is not a run of ids
    assert pool.ids == ids == sorted(ids)
    covered = np.sort(np.concatenate(pool.shard_positions))
    assert np.array_equal(covered, np.arange(len(ids)))  # every row in exactly one shard
    for number, expected in enumerate(per_checkpoint):
        assert np.array_equal(pool.checkpoint(number), expected)
    assert np.array_equal(pool.combined(), less_math.combined_features(per_checkpoint, pool.weights))
    assert pool.zero_gradient.sum() == 1 and pool.zero_gradient[ids.index("pool-000007")]


def test_less_streamed_matrix_equals_the_whole_array_product(lake):
    scorer = scorers()["less"]
    run = score_capability(lake, scorer, "math", scorer.params())
    _, per_checkpoint = whole_arrays(lake)
    target, _ = load_target_gradients(lake, "math")
    expected = less_math.instance_matrix(per_checkpoint, target.checkpoints, read_warmup(lake)["weights"])
    with lake.score_matrix("less", "math").open("rb") as handle, np.load(handle) as stored:
        assert stored["pool_ids"].tolist() == run.table.column("example_id").to_pylist() == whole_arrays(lake)[0]
        np.testing.assert_allclose(stored["matrix"], expected, rtol=0, atol=1e-6)
    score, _, _ = less_math.subtask_scores(expected, target.subtasks)
    kept = ~np.isnan(run.table.column("score").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(run.table.column("score").to_numpy(zero_copy_only=False)[kept], score[kept], atol=1e-6)


def test_checkpoints_covering_other_rows_are_refused_naming_the_file(tmp_path):
    layout = synthetic_lake.build(tmp_path / "lake", n_pool=24, shard_size=8)
    shard = PoolView.open(layout).shards[1]
    path = layout.pool_gradients(shard, 2)
    stored = gr.read_gradient_stores([path])
    meta = read_metadata(path)
    renamed = [f"{i}-other" for i in stored.ids]
    gr.write_gradient_store(path, gr.GradientFeatures(renamed, stored.vectors, stored.zero_gradient,
                                                      np.full(len(renamed), 20), 0.1), meta)
    with pytest.raises(MethodInputError, match=f"cover different rows: {path}"):
        read_gradient_pool(layout)
