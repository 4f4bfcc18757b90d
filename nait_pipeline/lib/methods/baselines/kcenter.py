"""Greedy k-center on the stored RDS+ embedding: a diversity baseline (the core-set selection of Sener and
Savarese 2018, used as a data-selection baseline since), untargeted and reading features in its policy.

Farthest-first traversal: the first center is the row first in the seeded hash order (as ``random``
draws); each next center is the row farthest from every center chosen so far, ties by ascending id.
Distance: Euclidean between L2-normalised embeddings (``sqrt(2 - 2 cos)``), so it orders as cosine does.
The greedy set is a 2-approximation of the k-center optimum (Gonzalez 1985). Each row's recorded score
is its distance to the nearest earlier center when it was picked (2, the largest possible, for the first
center) and, for rows never picked, its distance to the nearest center: picks are non-increasing, so the
subset is the top of that score. Cost: k passes over the pool's [N, d] embedding, O(k·N·d).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.features.forward import FORWARD
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, MethodInputError, SelectionInput
from nait_pipeline.lib.methods.dump import Dump
from nait_pipeline.lib.methods.rds.rds import unit_rows
from nait_pipeline.lib.selection import policies as selection

EMBEDDING = "rds_embedding"
FIRST_CENTER_SCORE = 2.0  # the diameter of the unit sphere: above every later pick's distance


@dataclass(frozen=True)
class KCenterParams:
    budget_ratio: float = 0.1
    """Share of the pool to keep (ceil(r * N))."""
    seed: int = 0
    """Which row is the first center: the first in sha256(seed:id) order."""


def greedy_k_center(points: np.ndarray, k: int, first: int) -> tuple[list[int], np.ndarray]:
    """Farthest-first traversal of ``points`` (unit rows) from ``first``: (the k picks in order, each row's
    score as the module docstring defines it). Ties go to the lowest row index."""
    n = len(points)
    if not 0 < k <= n:
        raise MethodInputError(f"k-center needs 1 <= k <= {n} rows, got k={k}")
    chosen = [first]
    scores = np.empty(n, np.float64)
    scores[first] = FIRST_CENTER_SCORE
    nearest = _distances(points, points[first])
    nearest[first] = -1.0  # a center is never picked again
    for _ in range(k - 1):
        pick = int(np.argmax(nearest))  # the first maximum: the lowest index among ties
        scores[pick] = nearest[pick]
        chosen.append(pick)
        nearest = np.minimum(nearest, _distances(points, points[pick]))
        nearest[chosen] = -1.0
    rest = np.ones(n, bool)
    rest[chosen] = False
    scores[rest] = nearest[rest]
    return chosen, scores


def _distances(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    cosine = (points @ center).astype(np.float64)
    return np.sqrt(np.clip(2.0 - 2.0 * cosine, 0.0, None))


def dump_embedding(dump: Dump, layout: LakeLayout, params: dict, capabilities: list[str]) -> dict:
    """The embedding the policy read, read as the policy reads it: rows in the dump's ``pool_ids.json`` order
    (sorted kept ids), with the same pool-version and coverage checks."""
    from nait_pipeline.lib.methods.run import selection_input

    inp = selection_input(layout, METHOD, [])
    dump.array(f"pool_{EMBEDDING}.npy", inp.pool_vectors(FORWARD, EMBEDDING, "the dump"),
               f"[N, d] {EMBEDDING} of every pool example (pool_ids.json order), from the store")
    return {}


def _select(inp: SelectionInput, params: KCenterParams) -> list[Chosen]:
    points = unit_rows(inp.pool_vectors(FORWARD, EMBEDDING, METHOD.name), "pool", inp.ids)
    k = selection.budget(len(inp.ids), params.budget_ratio)
    first = selection.seeded_random(inp.ids, 1, params.seed)[0]
    chosen, scores = greedy_k_center(points, k, first)
    radius = float(scores[chosen[-1]]) if k > 1 else FIRST_CENTER_SCORE
    return [Chosen(ALL, chosen, scores, {"budget_ratio": params.budget_ratio, "seed": params.seed,
                                         "embedding": EMBEDDING, "distance": "euclidean on unit rows",
                                         "covering_radius": round(radius, 6)}, params.budget_ratio)]


METHOD = Method(
    name="kcenter",
    description="Greedy k-center (farthest-first traversal) on the stored RDS+ embedding: the most spread-out "
                "rows, a diversity baseline with no target.",
    scorer=None,
    params=KCenterParams,
    select=_select,
    policy="farthest-first: each pick the row farthest from every earlier pick (first: seeded)",
    source="core-set k-center (Sener & Savarese 2018; Gonzalez 1985), a diversity baseline",
    cost="the shared forward store (RDS+ embedding); k passes over [N, d]",
    recipe=("X = normalize(pool_rds_embedding); first = the id first in sha256(f'{seed}:{id}') order; then "
            "repeatedly the row with the largest min over centers of ||x - c|| (ties: the lowest id); keep "
            "ceil(budget_ratio * N) picks, in pick order."),
    policy_reads=(FORWARD,),
    policy_vectors=(EMBEDDING,),
    dump_extra=dump_embedding,
)
