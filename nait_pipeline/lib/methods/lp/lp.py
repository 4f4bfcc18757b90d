"""Learning Percentage (Mekala et al. 2024; methods.md sections 6 and 11) on the registry.

Stages: a selector model (small, any local HF model; the embedded one by default) is fine-tuned over a
seeded slice of the pool and records every row's perplexity trajectory (``selector_trajectories``,
:mod:`~nait_pipeline.lib.features.trajectories`); the same rows are clustered by sentence embeddings
(``selector_clusters``, :mod:`~nait_pipeline.lib.features.clusters`); the scorer turns trajectories
into LP(1) or LP_app (:mod:`~nait_pipeline.lib.methods.lp.lp_math`); the policies cut each cluster's
LP order into chunks and keep the hard (low), middle or easy (high) chunk, or a seeded random chunk
per cluster (the stratified baseline). No in-domain set: one score serves every capability.

The pool an LP subset is drawn from is the slice the selector saw (``n_pool`` in lineage), so the
budget is a share of that slice; the selector model is recorded in every subset's parameters beside
the model the subset is meant for (lineage ``model_id``): a small model curating for a larger one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nait_pipeline.lib.features.selector_store import SELECTOR, TrajectoryPool, read_trajectory_pool
from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import PoolView
from nait_pipeline.lib.methods.lp import lp_math
from nait_pipeline.lib.methods.dump import Dump
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, MethodInputError, Scored, Scorer, SelectionInput
from nait_pipeline.lib.selection.policies import seeded_random


def selector_slice(ids: list[str], rows: int, seed: int) -> list[int]:
    """Indices of the seeded slice of ``ids`` the selector trains on (every row when ``rows`` is 0),
    in id order. The slice is a hash order of (seed, id), so adding pool rows keeps most of it."""
    if rows < 0:
        raise MethodInputError(f"slice rows must be >= 0, got {rows}")
    chosen = range(len(ids)) if rows == 0 or rows >= len(ids) else seeded_random(ids, rows, seed)
    return sorted(chosen, key=lambda i: ids[i])


@dataclass(frozen=True)
class LPScoreParams:
    kind: str = "lp1"
    """lp1: (P0 - P1) / (P0 - PE); lp_app: (P0 - P1) / P0 (the one-epoch proxy)."""


def _score(pool: TrajectoryPool, target, params: LPScoreParams) -> Scored:
    lp = lp_math.learning_percentage(pool.perplexities, pool.no_response, params.kind)
    p = pool.perplexities
    scored = ~pool.no_response
    return Scored(
        scores=lp,
        columns={"cluster": pool.clusters, "p0": p[:, 0], "p1": p[:, 1], "p_last": p[:, -1],
                 "no_response": pool.no_response},
        notes={"no_response_rows": int(pool.no_response.sum()),
               "zero_denominator_rows": int((scored & ((p[:, 0] == p[:, -1]) if params.kind == "lp1"
                                                       else np.zeros(len(p), bool))).sum()),
               "negative_lp_rows": int((scored & (lp < 0)).sum()), "epochs": p.shape[1] - 1,
               "clusters": int(len(np.unique(pool.clusters)))},
    )


@dataclass(frozen=True)
class LPParams:
    budget_ratio: float = 0.1
    """Share of the selector's slice: q = round(1 / budget_ratio) chunks per cluster, one kept."""


@dataclass(frozen=True)
class LPRandomParams:
    budget_ratio: float = 0.1
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One subset per seed."""


def _selector_model(inp: SelectionInput) -> str:
    return read_metadata(inp.layout.selector_trajectories)["selector_model_id"]


def _cluster_sizes(clusters: np.ndarray) -> list[int]:
    return np.unique(clusters, return_counts=True)[1].tolist()


def _part(part: str):
    def select(inp: SelectionInput, params: LPParams) -> list[Chosen]:
        clusters = np.asarray(inp.groups["cluster"], np.int64)
        no_response = inp.unscored | np.asarray(inp.groups["no_response"], bool)
        percentage = params.budget_ratio * 100
        indices = lp_math.select_per_cluster(inp.ids, inp.scores[ALL], clusters, no_response, percentage, part)
        if not indices:
            raise MethodInputError(
                f"lp_{part} selects nothing: every cluster has fewer rows than the "
                f"{lp_math.chunks_per_cluster(percentage)} chunks budget_ratio={params.budget_ratio} cuts it into, so "
                "its chunk is empty; materialize selector_clusters with a larger rows_per_cluster or raise the budget")
        # Rank order inside the subset: hardest first (low, mid), easiest first (high); the recorded
        # score is the one that order sorts descending by, as for every other method.
        lp = inp.scores[ALL]
        ranking_score = lp if part == "high" else -lp
        ranked = sorted(indices, key=lambda i: (bool(no_response[i]), -float(ranking_score[i]), inp.ids[i]))
        return [Chosen(ALL, ranked, ranking_score,
                       {"budget_ratio": params.budget_ratio, "part": part,
                        "chunks_per_cluster": lp_math.chunks_per_cluster(percentage),
                        "selector_model_id": _selector_model(inp), "clusters": len(_cluster_sizes(clusters)),
                        "score_versions": {ALL: inp.score_versions[ALL]}},
                       params.budget_ratio,
                       expected_size=lp_math.expected_size(_cluster_sizes(clusters), percentage, part))]
    return select


def _stratified_random(inp: SelectionInput, params: LPRandomParams) -> list[Chosen]:
    clusters = np.asarray(inp.groups["cluster"], np.int64)
    percentage = params.budget_ratio * 100
    return [Chosen(ALL, lp_math.stratified_random(inp.ids, clusters, percentage, seed), None,
                   {"budget_ratio": params.budget_ratio, "seed": seed, "stratified_by": "cluster",
                    "selector_model_id": _selector_model(inp), "score_versions": {ALL: inp.score_versions[ALL]}},
                   params.budget_ratio, slot=f"seed={seed}",
                   expected_size=lp_math.expected_size(_cluster_sizes(clusters), percentage))
            for seed in params.seeds]


def dump_lp_inputs(dump: Dump, layout: LakeLayout, params: dict, capabilities: list[str]) -> dict:
    """LP's inputs as arrays and in the official `subset.py` formats: `dataset.json` (rows in
    `pool_ids.json` order), `clustering.pkl` (row i: {"cluster_num": c}) and `epoch<e>.pkl` (row i's
    perplexity after epoch e; epoch0 before training). The official script reads epoch0..epoch3 and
    ranks by LP(1) with P3 as the last epoch: with E = 3 epochs the files map one to one."""
    pool, _ = read_trajectory_pool(layout)
    dump.json("pool_ids.json", pool.ids, "the selector's slice, sorted by id; row i of every array and of dataset.json")
    dump.array("pool_perplexities.npy", pool.perplexities, "[N, E+1] response perplexity before training, then "
               "after each epoch (0 where no_response)")
    dump.array("pool_no_response.npy", pool.no_response, "[N] bool: no response token survived truncation")
    dump.array("pool_clusters.npy", pool.clusters, "[N] KMeans cluster of each row")
    dump.json("dataset.json", [{k: r[k] for k in ("instruction", "input", "output")}
                               for r in PoolView.open(layout).rows(pool.ids)],
              "official subset.py --dataset: the slice's rows, pool_ids.json order")
    dump.pickle("clustering.pkl", [{"cluster_num": int(c)} for c in pool.clusters],
                "official subset.py --clustering: row i -> {'cluster_num': c}")
    for epoch in range(pool.perplexities.shape[1]):
        dump.pickle(f"epoch{epoch}.pkl", pool.perplexities[:, epoch].tolist(),
                    f"official subset.py --epoch{epoch}: perplexities " + ("before training" if epoch == 0
                                                                          else f"after epoch {epoch}"))
    return {}


SCORER = Scorer(
    name="lp", description="Learning Percentage of every row of the selector's slice: how much of its "
                           "perplexity drop the selector achieved in the first epoch (low: learnt late, hard).",
    params=LPScoreParams, kind=SELECTOR, score=_score, targeted=False, group_columns=("cluster", "no_response"),
    dump_inputs=dump_lp_inputs)

_SOURCE = "Mekala et al. 2024 (methods.md §6, §11)"
_COST = "selector fine-tuning over the slice (E epochs) + E+1 perplexity passes + MiniLM embeddings + KMeans"
_RECIPE = ("per cluster (ascending), row indices sorted by (no_response, LP, id); np.array_split into "
           "q = round(100 / (100 * budget_ratio)) chunks; keep chunk {which}; the union is the subset.")

LOW = Method(name="lp_low", description="Learning Percentage: per cluster, the rows learnt latest (hard).",
             scorer=SCORER, params=LPParams, select=_part("low"),
             policy="per cluster, first of q chunks of the LP order (hardest)", source=_SOURCE, cost=_COST,
             recipe=_RECIPE.format(which="0"))
MID = Method(name="lp_mid", description="Learning Percentage: per cluster, the middle chunk of the LP order.",
             scorer=SCORER, params=LPParams, select=_part("mid"),
             policy="per cluster, chunk q // 2 of the LP order", source=_SOURCE, cost=_COST,
             recipe=_RECIPE.format(which="q // 2"))
HIGH = Method(name="lp_high", description="Learning Percentage: per cluster, the rows learnt first (easy).",
              scorer=SCORER, params=LPParams, select=_part("high"),
              policy="per cluster, last of q chunks of the LP order (easiest)", source=_SOURCE, cost=_COST,
              recipe=_RECIPE.format(which="q - 1"))
CLUSTER_RANDOM = Method(
    name="lp_cluster_random", description="Cluster-stratified random: the LP paper's baseline, on LP's clusters.",
    scorer=SCORER, params=LPRandomParams, select=_stratified_random,
    policy="per cluster, first of q chunks in sha256(seed:id) order", source=_SOURCE, cost=_COST,
    recipe="per cluster, member ids ranked by sha256(f'{seed}:{id}') then id; np.array_split into q chunks; "
           "keep chunk 0.")
METHODS = [LOW, MID, HIGH, CLUSTER_RANDOM]
