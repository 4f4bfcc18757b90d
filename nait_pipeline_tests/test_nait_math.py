"""NAIT math against values worked out by hand on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from nait_pipeline.lib.methods.nait import nait_math as nait


def test_drift_variants():
    mean = np.array([[[3.0, 1.0]]])
    first = np.array([[[1.0, 1.0]]])
    last = np.array([[[5.0, 0.0]]])
    assert nait.drift(mean, first, last, "R1").tolist() == [[[4.0, -1.0]]]
    assert nait.drift(mean, first, last, "R2").tolist() == [[[2.0, 0.0]]]
    assert nait.drift(mean, first, last, "R3").tolist() == [[[3.0, 1.0]]]
    with pytest.raises(nait.NaitInputError, match="needs last-token states"):
        nait.drift(mean, first, None, "R1")
    with pytest.raises(nait.NaitInputError, match="drift must be one of"):
        nait.drift(mean, first, last, "R4")


def test_pc1_and_sign_follow_the_mean_drift():
    # Layer 1: points along +x around (4, 0); layer 2: along x around (-4, 1), so PC1 must point to -x.
    drifts = np.array([
        [[2.0, 0.0], [-2.0, 1.0]],
        [[4.0, 0.0], [-4.0, 1.0]],
        [[6.0, 0.0], [-6.0, 1.0]],
    ])
    fitted = nait.fit_directions(drifts)
    np.testing.assert_allclose(fitted.vectors, [[1.0, 0.0], [-1.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(fitted.explained_variance_ratio, [1.0, 1.0])
    assert fitted.n_rows == 3


def test_pc1_of_a_tilted_cloud():
    # Centred points (±1, ±1) scaled along the diagonal: PC1 = (1, 1)/sqrt(2), share of variance 9/(9+1).
    centred = np.array([[3.0, 3.0], [-3.0, -3.0], [1.0, -1.0], [-1.0, 1.0]]) / np.sqrt(2)
    drifts = (centred + np.array([10.0, 10.0]))[:, None, :]
    fitted = nait.fit_directions(drifts)
    np.testing.assert_allclose(fitted.vectors[0], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)
    np.testing.assert_allclose(fitted.explained_variance_ratio[0], 0.9)


def test_too_few_rows_and_no_variance_fail_clearly():
    with pytest.raises(nait.NaitInputError, match="capability 'math' is empty"):
        nait.fit_directions(np.zeros((0, 2, 3)), capability="math")
    with pytest.raises(nait.NaitInputError, match="has 3 row\\(s\\); PCA needs at least 8"):
        nait.fit_directions(np.ones((3, 2, 3)), min_rows=8)
    with pytest.raises(nait.NaitInputError, match="layer 1: every in-domain drift is identical"):
        nait.fit_directions(np.ones((4, 2, 3)))


def test_scores_sum_layer_dot_products():
    layer_mean = np.array([
        [[1.0, 2.0], [3.0, 4.0]],
        [[0.0, 1.0], [2.0, 0.0]],
    ], dtype=np.float32)
    directions = np.array([[1.0, 0.0], [0.0, 1.0]])
    projections = nait.layer_projections(layer_mean, directions)
    np.testing.assert_allclose(projections, [[1.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(nait.aggregate(projections), [5.0, 0.0])
    np.testing.assert_allclose(nait.aggregate(projections, layers=[2]), [4.0, 0.0])
    # zscore: each layer standardised over the pool: layer 1 -> (+1, -1), layer 2 -> (+1, -1).
    np.testing.assert_allclose(nait.aggregate(projections, "zscore"), [2.0, -2.0])
    norms = np.linalg.norm(layer_mean, axis=2)
    np.testing.assert_allclose(nait.aggregate(projections, "cosine", layer_norms=norms),
                               [1 / np.sqrt(5) + 4 / 5, 0.0])
    with pytest.raises(nait.NaitInputError, match="layers must be within 1..2"):
        nait.aggregate(projections, layers=[3])


def test_non_finite_activations_name_the_examples_and_layers():
    values = np.zeros((3, 4, 2))
    values[1, 2, 0] = np.nan
    values[2, 0, 1] = np.inf
    with pytest.raises(nait.NaitInputError, match=r"2 example\(s\) \['b', 'c'\] in layer\(s\) \[1, 3\]"):
        nait.require_finite_layers(values, ["a", "b", "c"], "activations")
    nait.require_finite_layers(np.ones((2, 1)), ["a", "b"], "projections")  # [n, L] finite: passes


def test_sink_alignment_is_the_cosine_with_the_mean_first_token_state():
    directions = np.array([[1.0, 0.0], [0.0, -1.0]])
    first_token = np.array([[[2.0, 0.0], [1.0, 1.0]],
                            [[4.0, 0.0], [1.0, 1.0]]])  # [n=2, L=2, d=2]; means [3, 0] and [1, 1]
    np.testing.assert_allclose(nait.sink_alignment(directions, first_token), [1.0, 1 / np.sqrt(2)])
