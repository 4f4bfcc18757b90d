"""NAIT as a registered method (methods.md sections 4 and 11): per-layer capability directions
(the `capability_directions` asset), pool scores by projection, top-r subsets and the
all-capability merges. The math lives in :mod:`nait_pipeline.lib.methods.nait_math`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from nait_pipeline.lib.features.feature_store import read_features
from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.methods import nait_math as nait
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, Scored, Scorer, SelectionInput, read_pool_store
from nait_pipeline.lib.selection import policies as selection

CODE_VERSION = "1"


@dataclass(frozen=True)
class NaitScoreParams:
    aggregation: str = "sum"
    """sum (published: sum over layers of a_l . v_l) | zscore (per-layer z-score first) | cosine."""
    layers: list[int] | None = None
    """1-based layers to sum over; None means every layer."""


@dataclass(frozen=True)
class NaitSubsetParams:
    budget_ratio: float = 0.1
    """Share of the pool to keep (top ceil(r * N))."""
    merge: str = "zsum"
    """All-capability subset: zsum (z-normalized sum) | quota (capabilities take turns) | pooled (one
    direction per layer fitted on the pooled in-domain sets)."""
    drift: str = "R2"
    """Drift used by the pooled merge."""


def load_directions(layout: LakeLayout, capability: str) -> tuple[np.ndarray, dict]:
    path = layout.directions(capability)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize capability_directions[{capability}] first")
    table = pq.read_table(path)
    meta = read_metadata(path)
    vectors = np.stack(table.column("direction").to_numpy(zero_copy_only=False)).astype(np.float32)
    return vectors, {**meta, "version": meta["directions_version"]}


def target_drifts(layout: LakeLayout, capability: str, drift: str) -> tuple[np.ndarray, dict]:
    """The in-domain activation drifts of one capability, and its store's metadata."""
    source = layout.target_activations(capability)
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing: materialize target_activations[{capability}] first")
    vectors = ("layer_mean", "first_token") + (("last_token",) if drift == "R1" else ())
    stored = read_features([source], vectors=vectors)
    for name in vectors:
        nait.require_finite_layers(stored.vectors[name], stored.ids, f"{name} in the {capability} in-domain set")
    drifts = nait.drift(stored.vectors["layer_mean"], stored.vectors["first_token"],
                        stored.vectors.get("last_token"), drift)
    return drifts, stored.metadata


def _load_target(layout: LakeLayout, capability: str, params: NaitScoreParams):
    return load_directions(layout, capability)


def _score(pool, directions: np.ndarray, params: NaitScoreParams) -> Scored:
    # Shard by shard in the stored dtype: only [N, L] projections are kept for the whole pool.
    projections, norms = [], []
    for block in pool.blocks("layer_mean"):
        projections.append(nait.layer_projections(block, directions))
        if params.aggregation == "cosine":
            norms.append(nait.layer_norms(block))
    projections = np.concatenate(projections)
    nait.require_finite_layers(projections, pool.ids, "pool activations (projection on the direction)")
    scores = nait.aggregate(projections, params.aggregation, params.layers,
                            np.concatenate(norms) if norms else None)
    return Scored(scores=scores, columns={"layer_projections": projections.astype(np.float32)})


def _pooled_scores(layout: LakeLayout, capabilities: list[str], drift: str) -> tuple[np.ndarray, list[str]]:
    """Merge (b): one direction per layer fitted on all capabilities' in-domain sets together."""
    drifts = [target_drifts(layout, capability, drift)[0] for capability in capabilities]
    fitted = nait.fit_directions(np.concatenate(drifts), capability="all (pooled)")
    pool, _ = read_pool_store(layout, ("layer_mean",))
    projections = np.concatenate([nait.layer_projections(b, fitted.vectors) for b in pool.blocks("layer_mean")])
    return nait.aggregate(projections), pool.ids


def _select(inp: SelectionInput, params: NaitSubsetParams) -> list[Chosen]:
    ids, r = inp.ids, params.budget_ratio
    k = selection.budget(len(ids), r)
    capabilities = list(inp.scores)
    chosen = [Chosen(capability=c, indices=selection.top_k(ids, inp.scores[c], k), scores=inp.scores[c],
                     params={"budget_ratio": r, **inp.score_params[c], "score_versions": {c: inp.score_versions[c]}},
                     budget_ratio=r)
              for c in capabilities]
    # Scoring parameters shared by every capability are recorded flat, differing ones per capability.
    first = inp.score_params[capabilities[0]]
    shared = first if all(p == first for p in inp.score_params.values()) else {"score_params": inp.score_params}
    merge_params = {"budget_ratio": r, "merge": params.merge, **shared, "score_versions": inp.score_versions}
    if params.merge == "zsum":
        merged = selection.zsum_scores(inp.scores)
        indices = selection.top_k(ids, merged, k)
    elif params.merge == "quota":
        merged = selection.zsum_scores(inp.scores)
        indices = selection.equal_quota(ids, inp.scores, k)
    elif params.merge == "pooled":
        merged, pooled_ids = _pooled_scores(inp.layout, capabilities, params.drift)
        if pooled_ids != ids:
            raise ValueError("pool activations changed since nait_scores ran: re-materialize nait_scores")
        merge_params["drift"] = params.drift
        indices = selection.top_k(ids, merged, k)
    else:
        raise ValueError(f"merge must be one of {selection.MERGES}, got {params.merge!r}")
    return chosen + [Chosen(capability=ALL, indices=indices, scores=merged, params=merge_params, budget_ratio=r)]


SCORER = Scorer(
    name="nait",
    description="NAIT score: sum over layers of the projection of the pool example's token-mean activation "
                "on the capability's direction (PC1 of the in-domain activation drift).",
    params=NaitScoreParams,
    pool_vectors=("layer_mean",),
    pool_scalars=(),
    score=_score,
    load_target=_load_target,
    target_assets=("capability_directions",),
    version_key="directions",
    code_version=CODE_VERSION,
)

METHOD = Method(
    name="nait",
    description="Top-r pool examples by NAIT score per capability; the all-capability subset merges "
                "capabilities by z-normalized sum (or quota / pooled).",
    scorer=SCORER,
    params=NaitSubsetParams,
    select=_select,
    policy="top ceil(r·N) per capability; all: z-sum (quota, pooled)",
    source="NAIT (methods.md §4, §11)",
    cost="one forward pass over pool and targets (shared store); PCA per layer; N×L×d projection",
    code_version=CODE_VERSION,
    recipe=("score_c = sum over layers l of pool_layer_mean[:, l] @ directions_c[l] (aggregation 'sum'); "
            "for capability 'all' with merge 'zsum': sum over capabilities of (score_c - mean) / std; "
            "rank by descending score, ties by ascending id; keep the first ceil(budget_ratio * N)."),
)
