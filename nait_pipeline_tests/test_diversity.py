"""k-center and facility location on hand-made points (unit vectors at known angles), then through the
registry on the synthetic lake: untargeted methods whose policy reads a feature kind."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nait_pipeline.lib.methods import get_method
from nait_pipeline.lib.methods.baselines.facility_location import greedy_facility_location
from nait_pipeline.lib.methods.baselines.kcenter import FIRST_CENTER_SCORE, cell_k_center, greedy_k_center, spherical_cells


def at_degrees(*angles: float) -> np.ndarray:
    radians = np.radians(angles)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def chord(degrees: float) -> float:
    return 2 * math.sin(math.radians(degrees) / 2)


def similarity(degrees: float) -> float:
    return (1 + math.cos(math.radians(degrees))) / 2


def test_k_center_is_farthest_first_with_the_covering_distances():
    points = at_degrees(0, 10, 90, 100, 180, 190)
    chosen, scores = greedy_k_center(points, 3, first=0)
    # From 0°: 180° is farthest (a diameter); then 90° is 90° from both centres, every other row 10° from one.
    assert chosen == [0, 4, 2]
    assert scores[0] == FIRST_CENTER_SCORE
    np.testing.assert_allclose(scores[[4, 2]], [chord(180), chord(90)], atol=1e-7)
    np.testing.assert_allclose(scores[[1, 3, 5]], [chord(10)] * 3, atol=1e-7)  # each 10° from its nearest centre
    assert scores[chosen[-1]] >= scores[[1, 3, 5]].max()  # the subset is the top of the recorded score


def test_k_center_ties_go_to_the_lowest_row():
    points = at_degrees(0, 90, -90)  # both 90° from the first centre
    assert greedy_k_center(points, 2, first=0)[0] == [0, 1]


def test_facility_location_greedy_gains_by_hand():
    points = at_degrees(-5, 0, 5, 90, 95)  # a cluster of three, a cluster of two
    chosen, scores, mode = greedy_facility_location(points, 2)
    assert mode == "exact"
    # Alone, 5° represents best: it is in the big cluster and the nearest of it to the small one.
    first_gain = (similarity(10) + similarity(5) + 1) + (similarity(85) + similarity(90))
    assert all(first_gain > sum(similarity(abs(a - c)) for a in (-5, 0, 5, 90, 95)) for c in (-5, 0, 90, 95))
    # Then 90° and 95° add the same to the small cluster: the lower row wins.
    second_gain = (1 - similarity(85)) + (similarity(5) - similarity(90))
    assert chosen == [2, 3]
    np.testing.assert_allclose(scores[chosen], [first_gain, second_gain], atol=1e-9)
    # Unpicked rows record what they would still add: 95° only lifts itself from s(5°) to 1.
    np.testing.assert_allclose(scores[4], 1 - similarity(5), atol=1e-9)
    assert scores[chosen[-1]] >= scores[[0, 1, 4]].max()


def test_stochastic_greedy_matches_exact_when_it_samples_every_row_and_nearly_otherwise():
    points = at_degrees(-5, 0, 5, 90, 95)
    assert greedy_facility_location(points, 2, dense_limit=0)[0] == [2, 3]  # N/k ln(100) > N: every row
    rng = np.random.default_rng(0)
    many = rng.normal(size=(600, 8))
    many /= np.linalg.norm(many, axis=1, keepdims=True)

    def objective(chosen):
        return ((1 + many @ many[chosen].T) / 2).max(axis=1).sum()

    exact, _, _ = greedy_facility_location(many, 30)
    sampled, _, mode = greedy_facility_location(many, 30, dense_limit=100, epsilon=0.3, seed=1)
    assert mode == "stochastic" and len(set(sampled)) == 30
    assert objective(sampled) >= (1 - 1 / math.e - 0.3) * objective(exact)
    assert greedy_facility_location(many, 30, dense_limit=100, epsilon=0.3, seed=1)[0] == sampled  # seeded


@pytest.mark.parametrize("name", ["kcenter", "facility_location"])
def test_diversity_methods_read_the_forward_store_in_their_policy(name):
    method = get_method(name)
    assert method.scorer is None and [kind.name for kind in method.policy_reads] == ["forward"]
    with pytest.raises(ValueError, match="k="):
        (greedy_k_center if name == "kcenter" else greedy_facility_location)(at_degrees(0, 1), 3, 0)


def test_one_cell_is_exact_farthest_first_from_the_row_nearest_its_mean():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(300, 6)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    first = int(np.argmax(points @ points.sum(axis=0)))
    chosen, scores = cell_k_center(points, 40, np.zeros(300, np.int64))
    exact_chosen, exact_scores = greedy_k_center(points, 40, first)
    assert chosen == exact_chosen
    np.testing.assert_allclose(scores, exact_scores)


def test_cells_keep_to_their_own_centers_and_picks_stay_non_increasing():
    # Cell 0: 0°, 10°, 20°; cell 1: 90°, 150°. Each cell starts at the row nearest its mean (10°, then 90°
    # by the lower row on the tie); the next pick is the farthest from its own cell's center: 150°, 60°
    # from 90° (0° and 20° are only 10° from 10°).
    points = at_degrees(0, 10, 20, 90, 150)
    chosen, scores = cell_k_center(points, 3, np.array([0, 0, 0, 1, 1]))
    assert chosen == [1, 3, 4]
    np.testing.assert_allclose(scores[[1, 3]], FIRST_CENTER_SCORE)
    np.testing.assert_allclose(scores[[4, 0, 2]], [chord(60), chord(10), chord(10)], atol=1e-7)
    # The recorded distances are to a center of the row's own cell: an upper bound on the true nearest center.
    true_nearest = np.sqrt(np.clip(2 - 2 * (points @ points[chosen].T).max(axis=1), 0, None))
    unpicked = [0, 2]
    assert np.all(scores[unpicked] >= true_nearest[unpicked] - 1e-7)
    with pytest.raises(ValueError, match="2 non-empty cells"):
        cell_k_center(points, 1, np.array([0, 0, 0, 1, 1]))


def test_spherical_cells_find_separated_clusters_and_are_seeded():
    rng = np.random.default_rng(0)
    axes = np.eye(8, dtype=np.float32)[:4]
    truth = rng.integers(0, 4, 2000)
    points = axes[truth] + rng.normal(scale=0.05, size=(2000, 8)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    cells = spherical_cells(points, 4, seed=1)
    # Every cluster lands in one cell and every cell holds one cluster.
    assert len({(t, c) for t, c in zip(truth.tolist(), cells.tolist())}) == 4
    np.testing.assert_array_equal(cells, spherical_cells(points, 4, seed=1))


def test_cell_restricted_k_center_covers_nearly_as_well_as_exact():
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(24, 96)).astype(np.float32)
    centres = rng.normal(size=(60, 24)).astype(np.float32)
    points = (centres[rng.integers(0, 60, 6000)] + rng.normal(scale=0.5, size=(6000, 24)).astype(np.float32)) @ basis
    points /= np.linalg.norm(points, axis=1, keepdims=True)

    def covering_radius(chosen):
        return float(np.sqrt(np.clip(2 - 2 * (points @ points[chosen].T).max(axis=1), 0, None)).max())

    exact, _ = greedy_k_center(points, 600, 0)
    cells = spherical_cells(points, 6, seed=0)
    approximate, scores = cell_k_center(points, 600, cells)
    assert len(set(approximate)) == 600
    assert covering_radius(approximate) <= scores[approximate[-1]] + 1e-6  # the recorded bound holds
    # Farthest-first is within 2x of the optimum, so of any other traversal: the cells cost well under that.
    assert covering_radius(approximate) <= 1.25 * covering_radius(exact)
