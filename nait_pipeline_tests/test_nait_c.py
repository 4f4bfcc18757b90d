"""NAIT-C: each step's math on small hand-made arrays, a planted capability that NAIT-C finds where the
published score ranks by length, and prefix removal checked against a direct forward of the real
model on the content tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from nait_pipeline.lib.features import prefix as pf
from nait_pipeline.lib.methods.nait import nait_c_math as nc
from nait_pipeline.lib.methods.nait import nait_math
from nait_pipeline.lib.methods.nait.nait_c_method import NaitCScoreParams, _score
from nait_pipeline.lib.selection import policies as selection
from nait_pipeline.lib.selection.diagnostics import spearman


def test_common_prefix_is_measured():
    assert pf.common_prefix_length([[1, 2, 3, 9], [1, 2, 3, 4, 5], [1, 2, 7]]) == 2
    assert pf.common_prefix_length([[5, 1], [6, 1]]) == 0  # no shared start: nothing to remove
    assert pf.common_prefix_length([[1, 2]]) == 2 and pf.common_prefix_length([]) == 0


def test_clean_means_recover_the_content_mean_exactly():
    rng = np.random.default_rng(0)
    layers, width, prefix_len = 2, 3, 4
    prefix_states = rng.normal(size=(prefix_len, layers, width)) * 100
    prefix = nc.PrefixStates(prefix_len, prefix_states.sum(0), prefix_states[0])
    lengths = np.array([6, 10, 30])
    content = [rng.normal(size=(k - prefix_len, layers, width)) for k in lengths]
    token_means = np.stack([np.concatenate([prefix_states, c]).mean(0) for c in content])
    cleaned = nc.clean_means(token_means, lengths, prefix)
    np.testing.assert_allclose(cleaned, np.stack([c.mean(0) for c in content]), rtol=1e-5, atol=1e-5)
    with pytest.raises(nc.NaitCInputError, match=r"\['b'\]"):
        nc.clean_means(token_means, np.array([6, 4, 30]), prefix, ["a", "b", "c"])


def test_massive_dims_follow_the_sink_criterion():
    first = np.array([[0.5, -0.2, 3000.0, 0.1], [0.5, 150.0, 0.3, 0.2]])
    # layer 2: 150 > 100 but only 150/0.4 = 375x the median: not massive
    np.testing.assert_array_equal(nc.massive_dims(first), [[False, False, True, False], [False, False, False, False]])
    # against the pool's typical magnitude (0.1 in layer 2) it is
    np.testing.assert_array_equal(nc.massive_dims(first, np.array([1.0, 0.1]))[1], [False, True, False, False])


def test_pool_moments_match_numpy_and_flag_length_tracking_dims():
    rng = np.random.default_rng(1)
    lengths = rng.integers(10, 200, 300)
    x = rng.normal(size=(300, 2, 3))
    x[:, 1, 2] = 50.0 / lengths + rng.normal(scale=1e-3, size=300)  # tracks 1/K
    moments = nc.PoolMoments(2, 3)
    moments.add(x[:100], lengths[:100])
    moments.add(x[100:], lengths[100:])
    np.testing.assert_allclose(moments.mean, x.mean(0))
    np.testing.assert_allclose(moments.sd, x.std(0))
    corr = moments.corr_with_inverse_length()
    assert corr[1, 2] > 0.99 and np.abs(corr[0]).max() < 0.3
    standardise = nc.standardiser(moments, np.zeros((2, 3), bool))
    assert not standardise.keep[1, 2] and standardise.keep[0].all()
    z = standardise(x)
    np.testing.assert_allclose(z[:, 0].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(z[:, 0].std(0), 1, atol=1e-5)
    assert (z[:, 1, 2] == 0).all()


@pytest.mark.parametrize("clean", [True, False])
def test_projections_folded_into_the_stored_means_equal_cleaning_then_standardising(clean):
    rng = np.random.default_rng(4)
    lengths = rng.integers(8, 120, 64)
    means = rng.normal(size=(64, 3, 5)).astype(np.float16)
    prefix = nc.PrefixStates(4, rng.normal(size=(3, 5)) * 4, rng.normal(size=(3, 5)))
    cleaned = nc.clean_means(means, lengths, prefix) if clean else means.astype(np.float32)
    moments = nc.PoolMoments(3, 5)
    moments.add(cleaned, lengths)
    massive = np.zeros((3, 5), bool)
    massive[1, 2] = True  # a dropped dimension contributes nothing either way
    standardise = nc.standardiser(moments, massive)
    directions = rng.normal(size=(2, 3, 5))
    explicit = np.einsum("nld,fld->nfl", standardise(cleaned).astype(np.float64), directions)
    folded = nc.folded_projections(means, lengths, prefix if clean else None, standardise, directions)
    np.testing.assert_allclose(folded, explicit, rtol=1e-4, atol=1e-4)
    in_place = nc.standardised_means(means, lengths, prefix if clean else None, standardise)
    np.testing.assert_allclose(in_place, standardise(cleaned), rtol=1e-4, atol=1e-4)


def test_contrastive_direction_has_its_sign_by_construction():
    # In-domain rows: mean +e1, spread mostly along e2 (the within-set axis PCA would pick).
    z = np.array([[[1.0, 5.0]], [[1.0, -5.0]], [[1.2, 4.0]], [[0.8, -4.0]]], np.float32)
    np.testing.assert_allclose(nc.directions(z, "contrastive")[0], [1.0, 0.0], atol=1e-6)
    flipped = nc.directions(-z, "contrastive")[0]
    np.testing.assert_allclose(flipped, [-1.0, 0.0], atol=1e-6)  # follows the in-domain mean, not a sign rule
    pca = nc.directions(z, "pca")[0]
    assert abs(pca[1]) > 0.99 and pca @ z[:, 0].mean(0) >= 0  # PC1 is the within-set axis, signed by the mean
    rng = np.random.default_rng(2)
    sample = rng.normal(size=(500, 1, 2)) * np.array([1.0, 10.0])  # the pool varies 10x more along e2
    lda = nc.directions(np.array([[[1.0, 1.0]], [[1.0, 1.0]]], np.float32), "lda", sample)[0]
    assert lda[0] > 0.9  # whitening discounts the noisy axis


def test_length_matched_auc_ignores_length_and_sees_content():
    rng = np.random.default_rng(3)
    pool_lengths = rng.integers(20, 400, 2000)
    target_lengths = rng.integers(200, 340, 60)  # longer than the pool on average; windows inside its range
    # A layer that only measures length: the raw AUC is high, the length-matched AUC is chance.
    raw = np.mean([(pool_lengths < t).mean() for t in target_lengths])
    matched = nc.length_matched_auc(target_lengths.astype(float), target_lengths, pool_lengths.astype(float),
                                    pool_lengths)
    assert raw > 0.65 and abs(matched - 0.5) < 0.05
    # A layer where in-domain rows score higher at equal length: separable.
    separable = nc.length_matched_auc(rng.normal(2.0, 1.0, 60), target_lengths, rng.normal(0.0, 1.0, 2000),
                                      pool_lengths)
    assert separable > 0.85
    assert np.isnan(nc.length_matched_auc(np.ones(2), np.array([5000, 6000]), np.ones(3), np.array([10, 20, 30])))
    np.testing.assert_allclose(nc.layer_weights(np.array([0.9, 0.62, 0.58, 0.3, np.nan])), [0.8, 0.24, 0, 0, 0])


def test_no_separable_layer_falls_back_to_equal_weights_and_says_so():
    projections = np.array([[1.0, -1.0], [0.0, 3.0]])
    scores, contributions, fallback = nc.combine(projections, np.zeros(2))
    assert fallback
    np.testing.assert_allclose(scores, [0.0, 1.5])
    scores, contributions, fallback = nc.combine(projections, np.array([0.6, 0.2]))
    assert not fallback
    np.testing.assert_allclose(contributions, [[0.75, -0.25], [0.0, 0.75]])


def test_length_decile_quota_keeps_the_pool_length_profile():
    ids = [f"r{i:03d}" for i in range(100)]
    lengths = np.arange(100, dtype=float)
    scores = lengths.copy()  # a pure length score: plain top-k would take the 10 longest
    chosen = selection.length_decile_quota(ids, scores, lengths, 10)
    assert sorted(int(lengths[i]) // 10 for i in chosen) == list(range(10))  # one per decile
    assert chosen == sorted(chosen, key=lambda i: -scores[i])


@dataclass
class ArrayPool:
    ids: list[str]
    layer_mean: np.ndarray
    scalars: dict
    metadata: dict

    """A pool store held in memory, in 64-row shards with no store version (so no moments are kept)."""

    @property
    def paths(self) -> list[Path]:
        return [Path(f"shard{k}.parquet") for k in range(-(-len(self.ids) // 64))]

    @property
    def shard_metadata(self) -> list[dict]:
        return [{} for _ in self.paths]

    def shard_rows(self, number: int) -> slice:
        return slice(number * 64, min(len(self.ids), (number + 1) * 64))

    def blocks(self, name: str, shards=None):
        for number in range(len(self.paths)) if shards is None else shards:
            yield getattr(self, name)[self.shard_rows(number)]


def _planted(seed: int = 0):
    """A pool with the sink mechanism of selection-quality.md §1.1: every token mean mixes a constant
    prefix (massive first dimension) with content by P/K; 20 of 400 rows carry a capability direction u
    in their content, as do the in-domain rows."""
    rng = np.random.default_rng(seed)
    layers, width, p = 3, 16, 6
    prefix_states = rng.normal(size=(p, layers, width))
    prefix_states[0, :, 0] = 2500.0
    prefix = nc.PrefixStates(p, prefix_states.sum(0), prefix_states[0])
    u = rng.normal(size=width)
    u[0] = 0
    u /= np.linalg.norm(u)

    def rows(n, lengths, planted):
        content = rng.normal(size=(n, layers, width)) + planted[:, None, None] * 2.0 * u
        return (prefix.sums[None] + (lengths - p)[:, None, None] * content) / lengths[:, None, None]

    n = 400
    lengths = rng.integers(p + 8, 300, n)
    planted = np.zeros(n)
    planted[:20] = 1
    pool = ArrayPool([f"p{i:04d}" for i in range(n)], rows(n, lengths, planted).astype(np.float32),
                     {"n_tokens": lengths}, {"model_id": "m"})
    t_lengths = rng.integers(150, 300, 40)  # in-domain rows longer than the pool's average, as GSM8K's
    target = {"ids": [f"t{i}" for i in range(40)], "layer_mean": rows(40, t_lengths, np.ones(40)).astype(np.float32),
              "n_tokens": t_lengths, "prefix": prefix}
    return pool, target, planted.astype(bool)


def test_nait_c_finds_a_planted_capability_where_the_published_score_ranks_by_length():
    pool, target, planted = _planted()
    k = 20
    scored = _score(pool, target, NaitCScoreParams())
    top = selection.top_k(pool.ids, scored.scores, k)
    assert planted[top].mean() >= 0.8
    assert abs(scored.notes["spearman_with_length"]) < 0.3 and not scored.notes["no_separable_layer"]
    # The published score on the same arrays: R2 drift PCA with the sign rule, summed over layers.
    first = np.broadcast_to(target["prefix"].first, target["layer_mean"].shape)
    fitted = nait_math.fit_directions(nait_math.drift(target["layer_mean"], first, None, "R2"))
    published = nait_math.aggregate(nait_math.layer_projections(pool.layer_mean, fitted.vectors))
    assert abs(spearman(published, pool.scalars["n_tokens"].astype(float))) > 0.9
    assert planted[selection.top_k(pool.ids, published, k)].mean() < 0.5
    # Without cleaning, standardisation alone keeps a length term (in-domain rows are longer).
    raw = _score(pool, target, NaitCScoreParams(clean=False))
    assert abs(raw.notes["spearman_with_length"]) > abs(scored.notes["spearman_with_length"]) + 0.1


def test_in_domain_rows_like_the_pool_are_reported_not_selected_silently():
    pool, target, _ = _planted(seed=4)
    rng = np.random.default_rng(5)
    rows = rng.choice(np.arange(20, len(pool.ids)), 40, replace=False)  # unplanted pool rows as "in-domain"
    indistinct = dict(target, layer_mean=pool.layer_mean[rows], n_tokens=pool.scalars["n_tokens"][rows])
    scored = _score(pool, indistinct, NaitCScoreParams())
    assert scored.notes["separable_layers"] == 0 and scored.notes["no_separable_layer"]
    assert np.isfinite(scored.scores).all()


def test_prefix_removal_matches_a_direct_forward_on_content_tokens(model_dir):
    import torch

    from nait_pipeline.lib.features.featurize import FeaturizerSpec, featurize
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate

    model = model_io.load_causal_lm(model_dir).eval()
    template = ChatTemplate(model_io.load_tokenizer(model_dir))
    rows = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {"instruction": "Name a prime number larger than ten.", "input": "", "output": "Eleven is prime."}]
    length = pf.common_prefix_length(pf.prompt_tokens(template, rows, 128))
    assert length > 10  # SmolLM2's chat template renders a system turn before every user turn
    tokens = pf.prompt_tokens(template, rows, 128)[0][:length]
    sums, first = pf.prefix_states(model, tokens)
    features = featurize(model, template, rows, FeaturizerSpec(max_length=128, dtype="float32"), ["a", "b"])
    cleaned = nc.clean_means(features.layer_mean, features.n_tokens, nc.PrefixStates(length, sums, first))
    massive = nc.massive_dims(first, np.median(np.abs(cleaned), axis=(0, 2)))
    assert massive.any()
    for row, example in enumerate(rows):
        ids = template.tokenize(example["instruction"], example["input"], example["output"], 128).input_ids
        with torch.no_grad():
            states = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1:]
        direct = torch.stack([h[0, length:].mean(0) for h in states]).double().numpy()
        np.testing.assert_allclose(cleaned[row][~massive], direct[~massive], rtol=1e-3, atol=2e-3)
        np.testing.assert_allclose(cleaned[row][massive], direct[massive], rtol=2e-2, atol=0.5)


def test_pool_moments_are_kept_per_shard_and_reused_by_the_next_capability(tmp_path, monkeypatch):
    """The first capability computes each shard's moments and keeps them; the next one reads none of them
    again (PoolMoments.add is never called) and its scores equal a run that kept nothing."""
    from nait_pipeline.lib.io.lake import read_metadata, read_table, write_parquet
    from nait_pipeline.lib.io.pool_view import PoolView
    from nait_pipeline.lib.methods import scorers
    from nait_pipeline.lib.methods.run import score_capability
    from nait_pipeline_tests import synthetic_lake

    layout = synthetic_lake.build(tmp_path / "lake", n_pool=48, shard_size=16)
    scorer = scorers()["nait_c"]
    shards = PoolView.open(layout).shards
    first = score_capability(layout, scorer, "math", scorer.params()).table
    assert all(layout.pool_moments(s).exists() for s in shards) and len(shards) == 3
    added = []
    monkeypatch.setattr(nc.PoolMoments, "add", lambda self, *a: added.append(1))
    second = score_capability(layout, scorer, "code", scorer.params()).table
    assert added == []
    monkeypatch.undo()
    for path in layout.root.glob("features/pool_moments/*.npz"):
        path.unlink()
    uncached = score_capability(layout, scorer, "code", scorer.params()).table
    assert second.column("score").to_pylist() == uncached.column("score").to_pylist()
    assert second.column("nearest_targets").to_pylist() == uncached.column("nearest_targets").to_pylist()
    assert first.column("example_id").to_pylist() == second.column("example_id").to_pylist()
    # A shard re-featurized (another store version) has its moments computed again, the others are reused.
    path = layout.pool_activations(shards[1])
    meta = read_metadata(path)
    write_parquet(read_table(path), path, {**meta, "store_version": "refeaturized"})
    added_rows = []
    original_add = nc.PoolMoments.add
    monkeypatch.setattr(nc.PoolMoments, "add", lambda self, clean, n: (added_rows.append(len(clean)),
                                                                       original_add(self, clean, n)))
    again = score_capability(layout, scorer, "code", scorer.params()).table
    assert added_rows == [16]
    assert again.column("score").to_pylist() == uncached.column("score").to_pylist()


def test_nearest_targets_zero_skips_the_explanation_and_keeps_the_scores(tmp_path):
    from nait_pipeline.lib.methods import scorers
    from nait_pipeline.lib.methods.run import score_capability
    from nait_pipeline_tests import synthetic_lake

    layout = synthetic_lake.build(tmp_path / "lake")
    scorer = scorers()["nait_c"]
    full = score_capability(layout, scorer, "math", scorer.params()).table
    bare = score_capability(layout, scorer, "math", scorer.params(nearest_targets=0)).table
    assert bare.column("score").to_pylist() == full.column("score").to_pylist()
    assert set(map(len, bare.column("nearest_targets").to_pylist())) == {0}
    assert set(map(len, full.column("nearest_targets").to_pylist())) == {3}


def test_top_columns_equal_a_stable_sort_of_every_column_even_with_ties():
    from nait_pipeline.lib.methods.nait.nait_c_method import _top_columns

    rng = np.random.default_rng(3)
    similarity = rng.integers(0, 4, size=(200, 12)).astype(np.float32)  # many ties, also at the k-th place
    for k in (1, 3, 12):
        top, values = _top_columns(similarity, k)
        expected = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        assert np.array_equal(top, expected)
        assert np.array_equal(values, np.take_along_axis(similarity, expected, 1))
