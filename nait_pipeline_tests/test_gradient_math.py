"""LESS, BIDS and G2IS arithmetic on small hand-made arrays, each policy against a plain-loop oracle
written from the spec (methods.md sections 2, 5, 7, 11)."""

from __future__ import annotations

import numpy as np
import pytest

from nait_pipeline.lib.methods.gradients import bids_math, g2is_math, less_math


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ---------------------------------------------------------------- LESS

def test_instance_matrix_is_the_weighted_sum_of_cosines():
    pool = [unit([[1, 0], [0, 1], [1, 1]]), unit([[0, 1], [1, 0], [1, -1]])]
    targets = [unit([[1, 0]]), unit([[1, 0]])]
    matrix = less_math.instance_matrix(pool, targets, [0.75, 0.25])
    # cosines with [1, 0]: checkpoint 1 -> 1, 0, 0.7071; checkpoint 2 -> 0, 1, 0.7071
    np.testing.assert_allclose(matrix[:, 0], [0.75, 0.25, 0.70710677], rtol=1e-6)
    with pytest.raises(less_math.LessInputError, match="sum to 1"):
        less_math.instance_matrix(pool, targets, [0.5, 0.2])
    with pytest.raises(less_math.LessInputError, match="one pool and one target matrix per checkpoint"):
        less_math.instance_matrix(pool, targets[:1], [0.5, 0.5])


def test_subtask_scores_average_within_a_subtask_then_take_the_best_even_for_unequal_sizes():
    matrix = np.array([[1.0, 3.0, 0.0, 4.0, 5.0],
                       [2.0, 2.0, 9.0, 0.0, 0.0]])
    subtasks = ["a", "a", "b", "c", "c"]  # sizes 2, 1, 2
    score, best, names = less_math.subtask_scores(matrix, subtasks)
    # row 0: means a=2, b=0, c=4.5 -> 4.5 (c); row 1: a=2, b=9, c=0 -> 9 (b)
    np.testing.assert_allclose(score, [4.5, 9.0])
    assert [names[b] for b in best] == ["c", "b"]
    assert not less_math.official_blocks(subtasks)
    assert less_math.official_blocks(["a", "a", "b", "b"]) and not less_math.official_blocks(["a", "b", "a", "b"])
    # Equal contiguous blocks: the official reshape-mean-max gives the same numbers.
    equal = np.arange(12, dtype=float).reshape(2, 6) % 5
    official = equal.reshape(2, 3, -1).mean(-1).max(-1)
    np.testing.assert_allclose(less_math.subtask_scores(equal, list("aabbcc"))[0], official)


def test_combined_features_dot_is_the_weighted_cosine_sum():
    rng = np.random.default_rng(0)
    pool = [unit(rng.normal(size=(4, 3))) for _ in range(3)]
    target = [unit(rng.normal(size=(2, 3))) for _ in range(3)]
    weights = [0.5, 0.3, 0.2]
    combined = less_math.combined_features(pool, weights) @ less_math.combined_features(target, weights).T
    np.testing.assert_allclose(combined, less_math.instance_matrix(pool, target, weights), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(less_math.combined_features(pool, weights), axis=1), 1.0, rtol=1e-6)


# ---------------------------------------------------------------- BIDS

def naive_bids(normalised: np.ndarray, budget: int, excluded=None) -> list[int]:
    """The O(B N m) loop: every step, every row's utility max_j (An[i, j] - mean over T of An[t, j])."""
    taken = set() if excluded is None else set(np.flatnonzero(excluded).tolist())
    picked: list[int] = []
    for _ in range(budget):
        mean = normalised[picked].mean(axis=0) if picked else np.zeros(normalised.shape[1])
        best, best_row = -np.inf, None
        for i in range(len(normalised)):
            if i in taken:
                continue
            utility = max(float(normalised[i, j]) - float(mean[j]) for j in range(normalised.shape[1]))
            if utility > best:
                best, best_row = utility, i
        picked.append(best_row)
        taken.add(best_row)
    return picked


def test_bids_on_a_hand_example_serves_the_worst_target_next():
    z = np.array([[3.0, -1.0],   # best for target 0
                  [2.5, 0.0],
                  [-1.0, 2.0],   # best for target 1
                  [0.0, 1.0]], np.float32)
    # Step 1: heads 3.0 (row 0) vs 2.0 (row 2) -> row 0. Means (3, -1): gaps 2.5-3=-0.5 vs 2-(-1)=3 -> row 2.
    # Means (1, 0.5): gaps 2.5-1=1.5 (row 1) vs 1-0.5=0.5 (row 3) -> row 1.
    assert bids_math.balanced_greedy(z, 3) == [0, 2, 1]
    assert naive_bids(z, 3) == [0, 2, 1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [5, 25])
def test_bids_pointer_greedy_equals_the_naive_loop(seed, budget):
    """Each column keeps only its first budget + excluded rows: the picks are still the naive loop's."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(60, 7)) * rng.uniform(1, 5, size=7)  # columns of different scales
    if seed % 2:
        matrix = np.round(matrix)  # many ties: the tie rule must agree too
        matrix[:, 0] += np.arange(60) % 3  # keep every column's std > 0
    z = bids_math.column_zscore(matrix, [f"t{j}" for j in range(7)])
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-5)
    excluded = np.zeros(60, bool)
    excluded[[3, 10]] = True
    fast = bids_math.balanced_greedy(z, budget, excluded)
    assert fast == naive_bids(z, budget, excluded)
    assert not {3, 10} & set(fast)


def test_top_rows_is_the_stable_sorts_prefix_ties_included():
    column = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.0, 3.0], np.float32)
    # Stable descending: 3.0 at rows 1, 3, 7; then 2.0 at rows 2, 4, 5; the depth cuts inside the ties.
    for depth, expected in [(2, [1, 3]), (4, [1, 3, 7, 2]), (5, [1, 3, 7, 2, 4]), (8, [1, 3, 7, 2, 4, 5, 0, 6])]:
        assert bids_math.top_rows(column, depth).tolist() == expected


def test_bids_refuses_a_constant_column_and_an_unfillable_budget():
    matrix = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 5.0]])
    with pytest.raises(bids_math.BidsInputError, match=r"\['gsm8k-1'\]"):
        bids_math.column_zscore(matrix, ["gsm8k-1", "gsm8k-2"])
    with pytest.raises(bids_math.BidsInputError, match="exceeds the 1 selectable rows"):
        bids_math.balanced_greedy(np.ones((3, 1), np.float32), 2, np.array([True, True, False]))


def test_bids_task_columns_average_each_tasks_instances():
    z = np.array([[1.0, 3.0, 5.0], [0.0, 2.0, -2.0]], np.float32)
    columns, names = bids_math.task_columns(z, ["x", "y", "x"])
    assert names == ["x", "y"]
    np.testing.assert_allclose(columns, [[3.0, 3.0], [-1.0, 2.0]])


# ---------------------------------------------------------------- G2IS

def test_exact_budgets_apportion_by_largest_remainder():
    budgets = g2is_math.exact_budgets(10, np.array([0.46, 0.34, 0.2]))
    assert budgets.tolist() == [5, 3, 2]  # 4.6, 3.4, 2.0: the one left over goes to the largest remainder
    # Equal remainders (3.375, 3.375, 2.25): the later component, as the official argsort()[::-1] orders them.
    assert g2is_math.exact_budgets(9, np.array([0.375, 0.375, 0.25])).tolist() == [3, 4, 2]
    assert g2is_math.exact_budgets(7, np.array([1 / 3] * 3)).sum() == 7


def test_knn_graph_lists_the_most_similar_rows_first_without_self():
    features = unit([[1, 0], [0.9, 0.1], [0, 1], [0.5, 0.5], [-1, 0]])
    graph = g2is_math.knn_graph(features, 3, block_rows=2)
    sims = features @ features.T
    for i, row in enumerate(graph):
        assert i not in row
        expected = [j for j in np.argsort(-sims[i], kind="stable") if j != i][:3]
        assert row.tolist() == expected


def test_core_knowledge_keeps_half_the_variance_and_fixes_signs_on_request():
    rng = np.random.default_rng(1)
    base = np.zeros((40, 6), np.float32)
    base[:, 0] = rng.normal(0, 5, 40)  # one dominant direction
    base[:, 1:] = rng.normal(0, 1, (40, 5))
    targets = unit(base + np.array([3, 0, 0, 0, 0, 0], np.float32))
    core = g2is_math.core_knowledge(targets, 0.5)
    assert np.isclose(core.weights.sum(), 1.0) and sum(core.explained) >= 0.5
    assert sum(core.explained[:-1]) < 0.5  # the fewest components reaching val_k
    fixed = g2is_math.core_knowledge(targets, 0.5, sign_fix=True)
    mean = targets.mean(axis=0)
    assert all(c @ mean >= 0 for c in fixed.components)
    np.testing.assert_allclose(np.abs(fixed.components), np.abs(core.components), atol=1e-6)
    with pytest.raises(g2is_math.G2isInputError, match="at least 2 rows"):
        g2is_math.core_knowledge(targets[:1])


def official_walk(features, components, weights, graph, ratio, delta):
    """The walk as the official gradient_walk.py describes it, one candidate at a time (methods.md §5.2)."""
    n = len(features)
    budgets = g2is_math.exact_budgets(int(n * ratio), weights)
    excluded, selected = set(), []
    for j, budget in enumerate(budgets):
        if budget <= 0:
            continue
        kv = components[j]
        sims = features @ kv
        candidates = [int(i) for i in np.argsort(-sims, kind="stable") if int(i) not in excluded]
        if not candidates:
            break
        current = [candidates[0]]
        excluded.add(candidates[0])
        total = features[candidates[0]].copy()

        def passes(node, old):
            if node in excluded or np.any(features[current] @ features[node] < 0):
                return False
            new = total + features[node]
            norm = np.linalg.norm(new)
            return (abs((new / norm) @ kv) if norm > 1e-10 else 0.0) >= delta * old

        while len(current) < budget:
            norm = np.linalg.norm(total)
            old = abs((total / norm) @ kv) if norm > 1e-10 else 0.0
            found = next((int(nb) for nb in graph[current[-1]] if passes(int(nb), old)), None)
            if found is None:
                order = [int(i) for i in np.argsort(-sims, kind="stable") if int(i) not in excluded]
                found = next((c for c in order if passes(c, old)), None)
                if found is None:
                    break
            current.append(found)
            excluded.add(found)
            total = total + features[found]
        selected += current
    return selected


@pytest.mark.parametrize("seed", range(5))
def test_gradient_walk_equals_the_official_loop_and_keeps_its_constraints(seed):
    rng = np.random.default_rng(seed)
    clusters = rng.normal(size=(3, 16))
    features = unit(np.concatenate([c + rng.normal(0, 0.8, size=(30, 16)) for c in clusters]))
    targets = unit(clusters[rng.integers(0, 3, 12)] + rng.normal(0, 0.5, size=(12, 16)))
    core = g2is_math.core_knowledge(targets, 0.6)
    graph = g2is_math.knn_graph(features, 10)
    result = g2is_math.gradient_walk(features, core, graph, 0.3, 0.8, chunk=4)
    assert result.selected == official_walk(features, core.components, core.weights, graph, 0.3, 0.8)
    assert len(set(result.selected)) == len(result.selected)
    assert sum(result.filled) == len(result.selected) and result.shortfall == result.target - len(result.selected)
    # No conflict inside a component's set.
    start = 0
    for filled in result.filled:
        members = features[result.selected[start : start + filled]]
        assert (members @ members.T >= 0).all()
        start += filled


def test_gradient_walk_reports_a_shortfall_and_uses_the_fallback():
    # Pairwise conflicting rows (each one's neighbours point the other way): a component's set cannot grow.
    features = unit([[1, 0], [-1, 0.01], [-1, -0.01], [0.99, 0.1]])
    core = g2is_math.CoreKnowledge(components=unit([[1, 0]]), weights=np.array([1.0]), explained=[1.0],
                                   sklearn_version="test")
    graph = np.array([[1, 2, 3], [2, 0, 3], [1, 0, 3], [0, 1, 2]], np.int32)
    result = g2is_math.gradient_walk(features, core, graph, 0.75, 0.8)
    # Anchor row 0; its neighbours 1 and 2 conflict, 3 passes; then nothing is left that does not conflict.
    assert result.selected == [0, 3] and result.target == 3 and result.shortfall == 1
    fallback = g2is_math.gradient_walk(features, core, np.array([[1], [0], [0], [1]], np.int32), 0.5, 0.8)
    assert fallback.selected == [0, 3] and fallback.via_fallback == 1


def test_the_faiss_graph_finds_nearly_every_exact_neighbour():
    rng = np.random.default_rng(3)
    features = unit(rng.normal(size=(300, 8)))
    exact = g2is_math.knn_graph(features, 5)
    approximate = g2is_math.knn_graph_faiss(features, 5, nlist=4, nprobe=4)  # every list: exact up to ties
    assert (approximate >= 0).all() and not (approximate == np.arange(300)[:, None]).any()
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approximate.tolist(), exact.tolist())])
    assert recall >= 0.99


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bids_column_zscores_in_blocks_are_the_whole_matrix_formula_bit_for_bit(dtype):
    rng = np.random.default_rng(5)
    matrix = (rng.normal(size=(3000, 37)) * 3 + 1).astype(dtype)
    whole = ((matrix - matrix.mean(axis=0, dtype=np.float64)) / matrix.std(axis=0, dtype=np.float64)).astype(np.float32)
    assert np.array_equal(bids_math.column_zscore(matrix, [str(j) for j in range(37)], block_columns=5), whole)
    matrix[:, [3, 30]] = 1.0
    with pytest.raises(bids_math.BidsInputError, match=r"\['3', '30'\]"):
        bids_math.column_zscore(matrix, [str(j) for j in range(37)], block_columns=5)
