"""NAIT-C as a registered method: NAIT scored on cleaned, standardised features with a contrastive
direction and length-controlled layer weights (the math and its reasons are in
:mod:`nait_pipeline.lib.methods.nait.nait_c_math`). It reads the same forward store as NAIT plus the
`template_prefix` asset (one forward of the constant prefix); no new pass over the pool.

Reads of the store per capability: the pool moments come from each shard's kept sums
(:mod:`~nait_pipeline.lib.methods.nait.pool_moments`; computed by the first capability that needs them),
one read projects every row on the full and per-fold directions, and one more finds each row's nearest
in-domain rows once the layer weights are known (``nearest_targets = 0`` skips it: the scores are the same).

Selection: top ceil(r·N) per capability, unless the score still tracks length
(|Spearman(score, tokens)| above ``length_guard``), in which case each pool length decile gives its
share of the budget; the all-capability subset is a round-robin over the capabilities' rankings
(each takes its turn; a row already taken is skipped), so no capability dominates it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.features.feature_store import PoolStore, read_features, row_blocks, to_float32
from nait_pipeline.lib.features.forward import FORWARD, TEMPLATE_PREFIX
from nait_pipeline.lib.features.reduction import Reducer
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import read_metadata, read_table
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.methods.nait import nait_c_math as nc
from nait_pipeline.lib.methods.nait.pool_moments import MomentCache
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, Scored, Scorer, SelectionInput
from nait_pipeline.lib.selection import policies as selection
from nait_pipeline.lib.selection.diagnostics import spearman

CODE_VERSION = "1"
LDA_SAMPLE = 2048


@dataclass(frozen=True)
class NaitCScoreParams:
    direction: str = "contrastive"
    """contrastive (in-domain mean minus pool mean of z-features) | lda (Ledoit-Wolf whitened) | pca
    (PC1 of the in-domain z-features, contrastive sign)."""
    layer_weights: str = "auc"
    """auc (max(0, 2 AUC - 1) of held-out, length-matched separability) | uniform."""
    clean: bool = True
    """Remove the template prefix exactly and mask massive / length-tracking dimensions (False: raw
    token means, only standardised: the ablation that shows why cleaning matters)."""
    folds: int = 5
    length_tolerance: float = 0.15
    """Held-out in-domain rows are compared with pool rows within this relative length."""
    min_auc: float = 0.6
    """Layers whose held-out AUC is below this weigh 0; none above it: reported, equal weights."""
    nearest_targets: int = 3
    """In-domain rows recorded per pool row as its nearest (the explanation columns). Finding them is a
    second read of the store and a [N, m] similarity: 0 skips it (the scores are the same) for large pools."""


@dataclass(frozen=True)
class NaitCSubsetParams:
    budget_ratio: float = 0.1
    """Share of the pool to keep (ceil(r * N))."""
    length_guard: float = 0.3
    """Above this |Spearman(score, tokens)| a capability selects with per-length-decile quotas (1: off)."""


def load_prefix(layout: LakeLayout) -> tuple[nc.PrefixStates, dict]:
    path = layout.template_prefix
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize template_prefix first")
    table = read_table(path)
    meta = read_metadata(path)
    stack = lambda name: np.stack(table.column(name).to_numpy(zero_copy_only=False)).astype(np.float32)  # noqa: E731
    return nc.PrefixStates(length=int(meta["prefix_tokens"]), sums=stack("prefix_sum"), first=stack("first_state")), meta


def _load_target(layout: LakeLayout, capability: str, params: NaitCScoreParams):
    source = layout.target_activations(capability)
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing: materialize target_activations[{capability}] first")
    stored = read_features([source], vectors=("layer_mean",), scalars=("n_tokens",))
    prefix, prefix_meta = load_prefix(layout)
    if prefix_meta["model_id"] != stored.metadata["model_id"]:
        raise nc.NaitCInputError(f"template_prefix is of {prefix_meta['model_id']}, the {capability} in-domain "
                                 f"features of {stored.metadata['model_id']}: re-materialize template_prefix")
    prefix = reduced_prefix(prefix, stored.metadata.get("reduction"))
    version = sha256_json({"targets": stored.metadata.get("store_version"), "prefix": prefix_meta["prefix_version"],
                           "code": CODE_VERSION})[:16]
    target = {"ids": stored.ids, "layer_mean": stored.vectors["layer_mean"], "n_tokens": stored.scalars["n_tokens"],
              "prefix": prefix, "moment_cache": MomentCache(layout, prefix_meta["prefix_version"])}
    return target, {"version": version, "model_id": stored.metadata["model_id"],
                    "reduction": stored.metadata.get("reduction")}


def reduced_prefix(prefix: nc.PrefixStates, reduction: dict | None) -> nc.PrefixStates:
    """The prefix states in the space a compact store keeps (the same layers, mask and projection): removing
    the prefix from a projected token mean is then as exact as at full width."""
    if not reduction:
        return prefix
    reducer = Reducer.from_metadata(reduction, num_layers=prefix.sums.shape[0])
    return nc.PrefixStates(length=prefix.length, sums=reducer.vectors(prefix.sums[None])[0],
                           first=reducer.vectors(prefix.first[None])[0])


def _clean(block: np.ndarray, n_tokens: np.ndarray, prefix: nc.PrefixStates, clean: bool, ids=(),
           dtype=np.float32) -> np.ndarray:
    return nc.clean_means(block, n_tokens, prefix, ids, dtype) if clean else to_float32(block).astype(dtype)


def _pool_moments(pool: PoolStore, target: dict, params: NaitCScoreParams, n_tokens: np.ndarray
                  ) -> tuple[nc.PoolMoments, np.ndarray | None]:
    """The pool moments of the cleaned features (each shard's from the cache when kept, else computed and
    kept) and, for the LDA direction, a seeded sample of cleaned rows (which reads the shards holding it)."""
    prefix: nc.PrefixStates = target["prefix"]
    cache: MomentCache | None = target.get("moment_cache")
    shards = [path.stem for path in pool.paths]
    versions = [meta.get("store_version") for meta in pool.shard_metadata]
    kept = [cache.get(shard, version, params.clean) if cache else None for shard, version in zip(shards, versions)]
    sample_rows = np.zeros(len(pool.ids), bool)
    if params.direction == "lda":
        sample_rows[selection.seeded_random(pool.ids, min(LDA_SAMPLE, len(pool.ids)), 0)] = True
    to_read = [k for k in range(len(shards)) if kept[k] is None or sample_rows[pool.shard_rows(k)].any()]
    sample = {}
    for number, block in zip(to_read, pool.blocks("layer_mean", to_read)):
        rows = pool.shard_rows(number)
        cleaned = _clean(block, n_tokens[rows], prefix, params.clean, pool.ids[rows], np.float64)
        if kept[number] is None:
            kept[number] = nc.PoolMoments(*prefix.sums.shape)
            kept[number].add(cleaned, n_tokens[rows])
            if cache:
                cache.put(shards[number], versions[number], params.clean, kept[number])
        sample.update({i: cleaned[i - rows.start] for i in np.flatnonzero(sample_rows[rows]) + rows.start})
    moments = nc.PoolMoments(*prefix.sums.shape)
    for shard_moments in kept:  # in shard order: the same float64 sums as one pass over the store
        moments.merge(shard_moments)
    return moments, (np.stack([sample[i] for i in sorted(sample)]) if sample else None)


def _score(pool: PoolStore, target: dict, params: NaitCScoreParams) -> Scored:
    prefix: nc.PrefixStates = target["prefix"]
    n_tokens = pool.scalars["n_tokens"].astype(np.int64)
    layers, width = prefix.sums.shape
    # The pool's moments of the cleaned features: capability-independent, kept per shard.
    moments, sample = _pool_moments(pool, target, params, n_tokens)
    massive = nc.massive_dims(prefix.first, moments.typical_magnitude) if params.clean \
        else np.zeros((layers, width), bool)
    standardise = nc.standardiser(moments, massive, nc.LENGTH_CORR_MAX if params.clean else np.inf)
    z_target = standardise(_clean(target["layer_mean"], target["n_tokens"], prefix, params.clean, target["ids"]))
    z_sample = standardise(sample) if sample is not None else None
    folds = nc.fold_of(target["ids"], params.folds)
    fitted = [nc.directions(z_target, params.direction, z_sample)]
    fitted += [nc.directions(z_target[folds != f], params.direction, z_sample) for f in range(params.folds)]
    stacked = np.stack(fitted)  # [1 + F, L, d]
    # One read: every pool row projected on the full and the per-fold directions.
    projections = np.zeros((len(pool.ids), 1 + params.folds, layers), np.float32)
    # Decoded: with 1 + folds directions, lookups of per-byte tables cost more than decoding (measured 4x).
    for rows, block in row_blocks(pool, "layer_mean"):
        projections[rows] = nc.folded_projections(block, n_tokens[rows], prefix if params.clean else None,
                                                  standardise, stacked)
    aucs = np.full(layers, np.nan)
    if params.layer_weights == "auc":
        by_length = np.argsort(n_tokens, kind="stable")
        per_fold = []
        for f in range(params.folds):
            held = folds == f
            if not held.any():
                continue
            held_scores = np.einsum("nld,ld->nl", z_target[held], stacked[1 + f])
            per_fold.append((held.sum(), [nc.length_matched_auc(held_scores[:, layer], target["n_tokens"][held],
                                                                projections[:, 1 + f, layer], n_tokens,
                                                                params.length_tolerance, by_length)
                                       for layer in range(layers)]))
        counts = np.array([c for c, _ in per_fold], np.float64)
        values = np.array([v for _, v in per_fold])
        with np.errstate(invalid="ignore"):
            aucs = np.nansum(values * counts[:, None], 0) / np.sum(np.isfinite(values) * counts[:, None], 0)
        alpha = nc.layer_weights(aucs, params.min_auc)
    elif params.layer_weights == "uniform":
        alpha = np.ones(layers)
    else:
        raise nc.NaitCInputError(f"layer_weights must be auc or uniform, got {params.layer_weights!r}")
    scores, contributions, fallback = nc.combine(nc.standardise_columns(projections[:, 0].astype(np.float64)), alpha)
    weights = alpha / alpha.sum() if alpha.sum() > 0 else np.full(layers, 1.0 / layers)
    nearest_ids, nearest_sims = _nearest_targets(pool, target, params, standardise, z_target, weights, n_tokens)
    return Scored(
        scores=scores,
        columns={"layer_contributions": contributions.astype(np.float32), "n_tokens": n_tokens,
                 "nearest_targets": nearest_ids, "nearest_similarity": nearest_sims},
        notes={"prefix_tokens": prefix.length, "masked_dims": int((~standardise.keep).sum()),
               "separable_layers": int((alpha > 0).sum()), "no_separable_layer": bool(fallback),
               "best_layer": int(np.nanargmax(aucs)) + 1 if np.isfinite(aucs).any() else 0,
               "best_layer_auc": float(np.nanmax(aucs)) if np.isfinite(aucs).any() else float("nan"),
               "spearman_with_length": float(spearman(scores, n_tokens.astype(np.float64)) or 0.0),
               "layer_auc": [round(float(a), 4) for a in aucs], "layer_weight": [round(float(a), 4) for a in alpha]},
    )


def _nearest_targets(pool: PoolStore, target: dict, params: NaitCScoreParams, standardise: nc.Standardiser,
                     z_target: np.ndarray, weights: np.ndarray, n_tokens: np.ndarray) -> tuple[list, list]:
    """Each pool row's ``nearest_targets`` in-domain rows by the layer-weighted cosine of the z-features (a
    second read of the store, after the layer weights are known). Layers weighing 0 add nothing to the
    cosine, so only the weighted ones are read into it. ``nearest_targets`` 0: empty lists."""
    k = min(params.nearest_targets, len(target["ids"]))
    if k <= 0:
        return [[] for _ in pool.ids], [[] for _ in pool.ids]
    used = np.flatnonzero(weights > 0)
    prefix = target["prefix"] if params.clean else None
    if prefix is not None and len(used) < len(weights):
        prefix = nc.PrefixStates(prefix.length, prefix.sums[used], prefix.first[used])
    layer_standardise = nc.Standardiser(standardise.mean[used], standardise.sd[used], standardise.keep[used])
    target_unit = _unit(z_target[:, used]).reshape(len(z_target), -1).T.copy()  # [L'·d, m]
    ids = np.asarray(target["ids"], dtype=object)
    nearest_ids, nearest_sims = [], []
    for rows, block in row_blocks(pool, "layer_mean"):
        for start in range(0, len(block), nc.CHUNK_ROWS):  # cache-sized: widened, standardised and multiplied
            chunk = block[start : start + nc.CHUNK_ROWS]
            if len(used) < len(weights):
                chunk = chunk[:, used]
            lengths = n_tokens[rows][start : start + nc.CHUNK_ROWS]
            z = nc.standardised_means(chunk, lengths, prefix, layer_standardise)
            norms = np.linalg.norm(z, axis=-1)
            z *= (weights[used][None] / np.where(norms > 0, norms, 1.0)).astype(np.float32)[:, :, None]  # unit, weighted
            top, top_sims = _top_columns(z.reshape(len(z), -1) @ target_unit, k)
            nearest_ids += ids[top].tolist()
            nearest_sims += top_sims.round(4).tolist()
    return nearest_ids, nearest_sims


def _top_columns(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row the k largest columns, largest first, equal values by column (a stable sort of every column's
    order, without sorting every column)."""
    if k >= similarity.shape[1]:
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        return top, np.take_along_axis(similarity, top, 1)
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(similarity, top, 1)
    order = np.lexsort((top, -top_sims), axis=1)
    top, top_sims = np.take_along_axis(top, order, 1), np.take_along_axis(top_sims, order, 1)
    # Where the k-th value is shared with a column left out, the partition may have kept the later column.
    tied = np.flatnonzero((similarity >= top_sims[:, -1:]).sum(1) > k)
    if len(tied):
        top[tied] = np.argsort(-similarity[tied], axis=1, kind="stable")[:, :k]
        top_sims[tied] = np.take_along_axis(similarity[tied], top[tied], 1)
    return top, top_sims


def _unit(z: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(z, axis=-1, keepdims=True)
    return z / np.where(norms > 0, norms, 1.0)


def _length_guarded(ids, scores: np.ndarray, lengths: np.ndarray, k: int, guard: float) -> tuple[list[int], bool]:
    if abs(spearman(scores, lengths) or 0.0) <= guard:
        return selection.top_k(ids, scores, k), False
    return selection.length_decile_quota(ids, scores, lengths, k), True


def _select(inp: SelectionInput, params: NaitCSubsetParams) -> list[Chosen]:
    ids, r = inp.ids, params.budget_ratio
    k = selection.budget(len(ids), r)
    lengths = np.asarray(inp.groups["n_tokens"], np.float64)
    capabilities = sorted(inp.scores)
    chosen, orders = [], {}
    for capability in capabilities:
        indices, guarded = _length_guarded(ids, inp.scores[capability], lengths, k, params.length_guard)
        orders[capability] = indices
        chosen.append(Chosen(capability, indices, inp.scores[capability],
                             {"budget_ratio": r, "length_guard": params.length_guard, "length_quotas": guarded,
                              **inp.score_params[capability], "score_versions": {capability: inp.score_versions[capability]}},
                             r))
    merged, chosen_by = selection.equal_quota_turns(ids, inp.scores, k)
    rank_score = np.zeros(len(ids))
    rank_score[merged] = np.arange(len(merged), 0, -1)  # the turn order, as a score (higher: earlier)
    chosen.append(Chosen(ALL, merged, rank_score, {"budget_ratio": r, "merge": "round_robin",
                                                   "score_versions": inp.score_versions}, r, chosen_by=chosen_by))
    return chosen


SCORER = Scorer(
    name="nait_c",
    description="NAIT-C score: per layer the cleaned, standardised token mean projected on the contrastive "
                "direction of the capability, layers weighted by their held-out length-controlled separability.",
    params=NaitCScoreParams,
    kind=FORWARD,
    pool_vectors=("layer_mean",),
    pool_scalars=("n_tokens",),
    score=_score,
    load_target=_load_target,
    also_reads=(TEMPLATE_PREFIX,),
    code_version=CODE_VERSION,
    group_columns=("n_tokens",),
)

METHOD = Method(
    name="nait_c",
    description="NAIT-C: NAIT on content-only features with a contrastive direction and length-controlled "
                "layer weights; top-r per capability (length-decile quotas if the score still tracks length), "
                "all: round-robin over capabilities.",
    scorer=SCORER,
    params=NaitCSubsetParams,
    select=_select,
    policy="top ceil(r·N) per capability (decile quotas past the length guard); all: round-robin",
    source="selection-quality.md §2.2 (NAIT-C)",
    cost="the NAIT store + one prefix forward; per capability one read of the pool store, one more for the "
         "nearest in-domain rows (nearest_targets = 0 skips it); the pool moments: once, kept per shard",
    code_version=CODE_VERSION,
    recipe=("c = (K·m − S)/(K − P); drop massive and 1/K-tracking dims; z over the pool; w_l = mean of in-domain "
            "z, unit; p_l = z·w_l standardised over the pool; s = Σ α_l p_l / Σ α_l with α_l = max(0, 2·AUC_l − 1) "
            "from 5-fold held-out length-matched AUC; rank by s, ties by id."),
)


@dataclass(frozen=True)
class NaitCLdaScoreParams(NaitCScoreParams):
    direction: str = "lda"
    """lda (Ledoit-Wolf whitened; this variant's default) | contrastive | pca."""


# The variant that passed most offline gates (README, NAIT-C), registered under its own name so the
# protocol trains it beside the default: one scores asset and subset slot per name.
LDA_SCORER = dataclasses.replace(
    SCORER, name="nait_c_lda", params=NaitCLdaScoreParams,
    description="NAIT-C score with the Ledoit-Wolf whitened (LDA) direction instead of the contrastive mean.")
LDA_METHOD = dataclasses.replace(
    METHOD, name="nait_c_lda", scorer=LDA_SCORER,
    description="NAIT-C with the LDA direction (whitened in-domain minus pool mean); same layer weights, "
                "length guard and round-robin as nait_c.",
    recipe=METHOD.recipe.replace("w_l = mean of in-domain z, unit",
                                 "w_l = Σ_LW⁻¹ · mean of in-domain z (Σ_LW: Ledoit-Wolf covariance of pool z), unit"))
