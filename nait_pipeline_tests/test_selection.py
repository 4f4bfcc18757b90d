"""Selection policies: budget, determinism, tie-breaking, merges."""

from __future__ import annotations

import numpy as np
import pytest

from nait_pipeline.lib.selection import policies as selection
from nait_pipeline.lib.selection.policies import NonFiniteScoreError


def test_budget_is_ceil_of_ratio():
    assert selection.budget(100, 0.1) == 10
    assert selection.budget(101, 0.1) == 11
    assert selection.budget(5, 1.0) == 5
    with pytest.raises(ValueError, match="budget ratio"):
        selection.budget(10, 0.0)


def test_ties_are_broken_by_id_regardless_of_input_order():
    ids = ["d", "b", "a", "c"]
    scores = np.array([1.0, 2.0, 2.0, 0.5])
    assert [ids[i] for i in selection.top_k(ids, scores, 3)] == ["a", "b", "d"]
    shuffled = [2, 0, 3, 1]
    ids2 = [ids[i] for i in shuffled]
    assert [ids2[i] for i in selection.top_k(ids2, scores[shuffled], 3)] == ["a", "b", "d"]


def test_nan_scores_fail_loudly():
    with pytest.raises(NonFiniteScoreError, match=r"\['b'\]"):
        selection.top_k(["a", "b"], np.array([1.0, np.nan]), 1)


def test_zsum_and_equal_quota():
    ids = ["a", "b", "c", "d"]
    per = {"math": np.array([4.0, 3.0, 2.0, 1.0]), "code": np.array([10.0, 40.0, 30.0, 20.0])}
    merged = selection.zsum_scores(per)
    # z(math) = (1.342, .447, -.447, -1.342); z(code) = (-1.342, 1.342, .447, -.447)
    np.testing.assert_allclose(merged, [0.0, 1.78885, 0.0, -1.78885], atol=1e-5)
    # code first (sorted names), then math: b (code), a (math), c (code), d (math)
    assert [ids[i] for i in selection.equal_quota(ids, per, 4)] == ["b", "a", "c", "d"]
    assert [ids[i] for i in selection.equal_quota(ids, per, 3)] == ["b", "a", "c"]


def test_selected_ids_hash_ignores_order():
    assert selection.selected_ids_sha256(["b", "a"]) == selection.selected_ids_sha256(["a", "b"])
    assert selection.selected_ids_sha256(["a"]) != selection.selected_ids_sha256(["a", "b"])


def test_seeded_random_is_uniform_reproducible_and_order_free():
    ids = [f"id{i}" for i in range(200)]
    first = {ids[i] for i in selection.seeded_random(ids, 20, seed=0)}
    reversed_ids = ids[::-1]
    assert {reversed_ids[i] for i in selection.seeded_random(reversed_ids, 20, seed=0)} == first
    assert len(first) == 20 and first != {ids[i] for i in selection.seeded_random(ids, 20, seed=1)}
    # Uniform: over many seeds every id is picked about k/N = 10 % of the time.
    counts = dict.fromkeys(ids, 0)
    for seed in range(300):
        for i in selection.seeded_random(ids, 20, seed):
            counts[ids[i]] += 1
    assert min(counts.values()) >= 10 and max(counts.values()) <= 55


def test_round_robin_drops_an_already_taken_item_for_that_round():
    # Worked by hand. Query A ranks [0, 1, 2, 3], query B ranks [0, 2, 1, 3].
    # Round 1: A pops 0 (taken); B pops 0, already taken: dropped, B gives nothing this round.
    # Round 2: A pops 1; B pops 2.  Round 3: A pops 2 (taken by B: dropped); B pops 1 (dropped).
    # Round 4: A pops 3.
    orders = [np.array([0, 1, 2, 3]), np.array([0, 2, 1, 3])]
    assert selection.round_robin(orders, 4) == [0, 1, 2, 3]
    assert selection.round_robin(orders, 3) == [0, 1, 2]
    # A "skip to the next untaken" reading would give B item 2 in round 1: [0, 2, 1]. The official one does not.
    assert selection.round_robin(orders, 2) == [0, 1]


def test_round_robin_stops_when_every_list_is_exhausted():
    assert selection.round_robin([np.array([1]), np.array([1])], 5) == [1]


def test_column_orders_break_score_ties_by_id():
    ids = ["c", "a", "b"]
    matrix = np.array([[0.5, 0.1], [0.5, 0.9], [0.2, 0.9]])  # column 0: c and a tie; column 1: a and b tie
    orders = selection.column_orders(ids, matrix)
    assert [ids[i] for i in orders[0]] == ["a", "c", "b"]
    assert [ids[i] for i in orders[1]] == ["a", "b", "c"]
    # Round 1: column 0 pops a; column 1 pops a, taken, dropped. Round 2: column 0 pops c, column 1 pops b.
    assert [ids[i] for i in selection.round_robin(orders, 2)] == ["a", "c"]
    assert [ids[i] for i in selection.round_robin(orders, 3)] == ["a", "c", "b"]


def test_perplexity_bands_top_middle_bottom():
    ids = [f"x{i}" for i in range(7)]
    scores = np.array([7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])  # descending already: x0 highest
    assert selection.band(ids, scores, 3, "top") == [0, 1, 2]
    assert selection.band(ids, scores, 3, "bottom") == [6, 5, 4]
    assert selection.band(ids, scores, 3, "middle") == [2, 3, 4]  # start floor((7 - 3) / 2) = 2
    assert selection.band(ids, scores, 2, "middle") == [2, 3]  # start floor(5 / 2) = 2
    with pytest.raises(ValueError, match="band must be one of"):
        selection.band(ids, scores, 2, "upper")


def test_balanced_random_gives_each_source_its_share():
    ids = [f"r{i:03d}" for i in range(30)]
    groups = ["big"] * 24 + ["mid"] * 4 + ["tiny"] * 2
    chosen = selection.balanced_random(ids, groups, 9, seed=0)
    counts = {g: sum(groups[i] == g for i in chosen) for g in set(groups)}
    # 9 over 3 sources is 3 each; tiny has only 2, so its missing one goes to the others (big or mid).
    assert counts["tiny"] == 2 and counts["big"] + counts["mid"] == 7 and min(counts["big"], counts["mid"]) >= 3
    assert len(set(chosen)) == 9
    assert selection.balanced_random(ids, groups, 9, seed=0) == chosen
    assert selection.balanced_random(ids, groups, 9, seed=1) != chosen
    reordered = list(reversed(range(30)))
    again = selection.balanced_random([ids[i] for i in reordered], [groups[i] for i in reordered], 9, seed=0)
    assert sorted(ids[reordered[i]] for i in again) == sorted(ids[i] for i in chosen)


def test_spearman_matches_hand_computed_ranks():
    from nait_pipeline.lib.selection.diagnostics import spearman

    # x ranks 0,1,2,3; y ranks 0,2,1,3 -> d^2 = 0+1+1+0 = 2 -> rho = 1 - 6*2/(4*15) = 0.8
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 30.0, 20.0, 40.0])) == pytest.approx(0.8)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0])) is None  # constant: undefined


def test_diagnostics_of_a_length_selector_and_of_a_balanced_subset():
    from nait_pipeline.lib.selection.diagnostics import diagnose

    ids = [f"r{i}" for i in range(10)]
    lengths = np.arange(1, 11, dtype=float) * 10  # r9 longest
    sources = ["a"] * 5 + ["b"] * 5
    longest = diagnose(ids, lengths, sources, [9, 8], scores=lengths)
    assert longest.overlap_longest == 1.0 and longest.spearman_length == 1.0
    assert longest.length_ratio == pytest.approx(95 / 55, rel=1e-3) and not longest.passes_length_gates()
    assert longest.composition == {"b": 1.0} and longest.enrichment == {"a": 0.0, "b": 2.0}
    middle = diagnose(ids, lengths, sources, [4, 5], scores=-np.abs(lengths - 55))
    assert middle.length_ratio == pytest.approx(1.0) and middle.passes_length_gates()
    assert middle.overlap_longest == 0.0 and middle.enrichment == {"a": 1.0, "b": 1.0}


def test_proportional_random_keeps_each_stratum_share():
    from nait_pipeline.lib.selection.policies import length_quintiles, proportional_random

    ids = [f"r{i:03d}" for i in range(100)]
    strata = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    picked = proportional_random(ids, strata, 10, seed=0)
    assert sorted(strata[i] for i in picked) == ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    assert picked == proportional_random(ids, strata, 10, seed=0) != proportional_random(ids, strata, 10, seed=1)
    # 7 of 100 rows: exact shares 3.5, 2.1, 1.4 -> 3, 2, 1 plus one for the largest remainder (a)
    assert sorted(strata[i] for i in proportional_random(ids, strata, 7, seed=2)) == ["a"] * 4 + ["b"] * 2 + ["c"]
    assert length_quintiles([5, 1, 4, 2, 3, 9, 8, 7, 6, 0]) == [2, 0, 2, 1, 1, 4, 4, 3, 3, 0]
