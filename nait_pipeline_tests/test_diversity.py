"""k-center and facility location on hand-made points (unit vectors at known angles), then through the
registry on the synthetic lake: untargeted methods whose policy reads a feature kind."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nait_pipeline.lib.methods import get_method
from nait_pipeline.lib.methods.baselines.facility_location import greedy_facility_location
from nait_pipeline.lib.methods.baselines.kcenter import FIRST_CENTER_SCORE, greedy_k_center


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
