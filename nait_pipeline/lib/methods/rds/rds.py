"""RDS+ (methods.md sections 3 and 11): cosine between the stored position-weighted last-layer means
of pool and in-domain examples, then the official round-robin, or a plain top-B by max cosine.

Single capability, round-robin: every in-domain example is a query with its own ranked list; each round
every query pops its head, an item already taken is dropped (that query gives nothing this round).
All capabilities: each capability's score is its max over its queries; capabilities take turns the
same way. Top-B: the best B by max cosine (over every capability's queries for the 'all' subset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.features.feature_store import read_features, row_blocks, to_float32
from nait_pipeline.lib.features.forward import FORWARD, require_store_columns
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.methods.base import (
    ALL,
    Chosen,
    Method,
    MethodInputError,
    Scored,
    Scorer,
    SelectionInput,
)
from nait_pipeline.lib.selection import policies as selection


@dataclass(frozen=True)
class RdsScoreParams:
    """RDS+ has no scoring parameters: the embedding is fixed by the featurizer (last layer,
    position weights k / sum j, L2-normalised here)."""


@dataclass(frozen=True)
class RdsSubsetParams:
    budget_ratio: float = 0.1
    """Share of the pool to keep (ceil(r * N))."""


def unit_rows(vectors: np.ndarray, what: str, ids) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise MethodInputError(f"{what}: zero embedding for {[ids[i] for i in zero[:5]]}: no cosine is defined")
    return (vectors / norms).astype(np.float32, copy=False)


def _load_target(layout: LakeLayout, capability: str, params: RdsScoreParams):
    source = layout.target_activations(capability)
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing: materialize target_activations[{capability}] first")
    require_store_columns(source, ["rds_embedding"], "rds_scores")
    stored = read_features([source], vectors=("rds_embedding",))
    queries = unit_rows(stored.vectors["rds_embedding"], f"{capability} in-domain set", stored.ids)
    return (queries, stored.ids), {**stored.metadata, "version": stored.metadata["store_version"]}


def _score(pool, target, params: RdsScoreParams) -> Scored:
    queries, query_ids = target
    # Shard by shard: only the [N, m] cosines are kept for the whole pool, never its [N, d] embeddings.
    matrix = np.empty((len(pool.ids), len(query_ids)), np.float64)
    for rows, block in row_blocks(pool, "rds_embedding"):
        matrix[rows] = unit_rows(to_float32(block), "pool", pool.ids[rows]) @ queries.T
    return Scored(scores=matrix.max(axis=1), matrix=matrix, matrix_ids=list(query_ids),
                  notes={"queries": len(query_ids)})


def _chosen(inp: SelectionInput, r: float, policy: str, capability: str, indices: list[int],
            scores: np.ndarray) -> Chosen:
    """A subset with the lineage parameters both RDS+ policies record."""
    versions = inp.score_versions if capability == ALL else {capability: inp.score_versions[capability]}
    return Chosen(capability, indices, scores, {"budget_ratio": r, "policy": policy, "score_versions": versions}, r)


def _round_robin(inp: SelectionInput, params: RdsSubsetParams) -> list[Chosen]:
    ids, r = inp.ids, params.budget_ratio
    k = selection.budget(len(ids), r)
    out = [_chosen(inp, r, "round_robin", c, selection.round_robin(selection.column_orders(ids, inp.matrix(c)[0]), k),
                   inp.scores[c]) for c in inp.scores]
    capabilities = sorted(inp.scores)
    orders = [selection.rank_order(ids, inp.scores[c]) for c in capabilities]
    merged = np.max([inp.scores[c] for c in capabilities], axis=0)
    return out + [_chosen(inp, r, "round_robin", ALL, selection.round_robin(orders, k), merged)]


def _top_b(inp: SelectionInput, params: RdsSubsetParams) -> list[Chosen]:
    ids, r = inp.ids, params.budget_ratio
    k = selection.budget(len(ids), r)
    out = [_chosen(inp, r, "top_b", c, selection.top_k(ids, s, k), s) for c, s in inp.scores.items()]
    merged = np.max(list(inp.scores.values()), axis=0)
    return out + [_chosen(inp, r, "top_b", ALL, selection.top_k(ids, merged, k), merged)]


SCORER = Scorer(
    name="rds",
    description="RDS+ cosine between pool and in-domain position-weighted last-layer means; score = max "
                "over the capability's in-domain examples, the [N, m] matrix kept for round-robin.",
    params=RdsScoreParams,
    kind=FORWARD,
    pool_vectors=("rds_embedding",),
    score=_score,
    load_target=_load_target,
)

ROUND_ROBIN = Method(
    name="rds_round_robin",
    description="RDS+ with the official round-robin over in-domain examples (over capabilities for 'all').",
    scorer=SCORER,
    params=RdsSubsetParams,
    select=_round_robin,
    policy="round-robin over queries (capabilities for all); a taken item is dropped for that round",
    source="RDS+ (methods.md §3, §11; automated-instruction-selection)",
    cost="the shared forward store; N×m cosine matrix and one sort per query",
    recipe=("S = normalize(pool_rds_embedding) @ normalize(target_rds_embedding_c).T; per query q the pool "
            "order argsort(-S[:, q]) with ties by ascending id; rounds in which every query pops its head "
            "and an already-selected item is dropped; stop at ceil(budget_ratio * N). For 'all': per "
            "capability max over its queries, capabilities in name order take turns the same way."),
)

TOP_B = Method(
    name="rds_top_b",
    description="RDS+ plain top-B by max cosine over the in-domain examples (the large-pool script).",
    scorer=SCORER,
    params=RdsSubsetParams,
    select=_top_b,
    policy="top ceil(r·N) by max cosine over queries (over all capabilities' queries for all)",
    source="RDS+ large-pool script (methods.md §11)",
    cost="the shared forward store; N×m cosine matrix",
    recipe=("score = max over queries of S; for 'all' the max over capabilities; rank by descending score, "
            "ties by ascending id; keep ceil(budget_ratio * N)."),
)
