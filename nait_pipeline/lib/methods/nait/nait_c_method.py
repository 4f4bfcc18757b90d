"""NAIT-C as a registered method: NAIT scored on cleaned, standardised features with a contrastive
direction and length-controlled layer weights (the math and its reasons are in
:mod:`nait_pipeline.lib.methods.nait.nait_c_math`). It reads the same forward store as NAIT plus the
`template_prefix` asset (one forward of the constant prefix); no new pass over the pool.

Selection: top ceil(r·N) per capability, unless the score still tracks length
(|Spearman(score, tokens)| above ``length_guard``), in which case each pool length decile gives its
share of the budget; the all-capability subset is a round-robin over the capabilities' rankings
(each takes its turn; a row already taken is skipped), so no capability dominates it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.features.feature_store import read_features, row_blocks, to_float32
from nait_pipeline.lib.features.forward import FORWARD, TEMPLATE_PREFIX
from nait_pipeline.lib.features.reduction import Reducer
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import read_metadata, read_table
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.methods.nait import nait_c_math as nc
from nait_pipeline.lib.methods.base import ALL, Chosen, Method, Scored, Scorer, SelectionInput
from nait_pipeline.lib.selection import policies as selection
from nait_pipeline.lib.selection.diagnostics import spearman

CODE_VERSION = "1"
LDA_SAMPLE = 2048
NEAREST = 3  # in-domain neighbours recorded per pool row


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
              "prefix": prefix}
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


def _score(pool, target: dict, params: NaitCScoreParams) -> Scored:
    prefix: nc.PrefixStates = target["prefix"]
    n_tokens = pool.scalars["n_tokens"].astype(np.int64)
    layers, width = prefix.sums.shape
    # Pass 1: pool moments of the cleaned features (and a seeded sample for LDA).
    moments = nc.PoolMoments(layers, width)
    sample_rows = set(selection.seeded_random(pool.ids, min(LDA_SAMPLE, len(pool.ids)), 0)) \
        if params.direction == "lda" else set()
    sample = []
    for rows, block in row_blocks(pool, "layer_mean"):
        cleaned = _clean(block, n_tokens[rows], prefix, params.clean, pool.ids[rows], np.float64)
        moments.add(cleaned, n_tokens[rows])
        sample += [cleaned[i - rows.start] for i in range(rows.start, rows.stop) if i in sample_rows]
    massive = nc.massive_dims(prefix.first, moments.typical_magnitude) if params.clean \
        else np.zeros((layers, width), bool)
    standardise = nc.standardiser(moments, massive, nc.LENGTH_CORR_MAX if params.clean else np.inf)
    z_target = standardise(_clean(target["layer_mean"], target["n_tokens"], prefix, params.clean, target["ids"]))
    z_sample = standardise(np.stack(sample)) if sample else None
    folds = nc.fold_of(target["ids"], params.folds)
    fitted = [nc.directions(z_target, params.direction, z_sample)]
    fitted += [nc.directions(z_target[folds != f], params.direction, z_sample) for f in range(params.folds)]
    stacked = np.stack(fitted)  # [1 + F, L, d]
    # Pass 2: every pool row projected on the full and the per-fold directions.
    projections = np.zeros((len(pool.ids), 1 + params.folds, layers), np.float32)
    for rows, block in row_blocks(pool, "layer_mean"):
        projections[rows] = nc.folded_projections(block, n_tokens[rows], prefix if params.clean else None,
                                                  standardise, stacked)
    aucs = np.full(layers, np.nan)
    if params.layer_weights == "auc":
        per_fold = []
        for f in range(params.folds):
            held = folds == f
            if not held.any():
                continue
            held_scores = np.einsum("nld,ld->nl", z_target[held], stacked[1 + f])
            per_fold.append((held.sum(), [nc.length_matched_auc(held_scores[:, layer], target["n_tokens"][held],
                                                                projections[:, 1 + f, layer], n_tokens,
                                                                params.length_tolerance) for layer in range(layers)]))
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
    # Pass 3: each pool row's nearest in-domain rows (layer-weighted cosine of the z-features), to explain it.
    weights = alpha / alpha.sum() if alpha.sum() > 0 else np.full(layers, 1.0 / layers)
    target_unit = _unit(z_target)
    nearest_ids, nearest_sims = [], []
    for rows, block in row_blocks(pool, "layer_mean"):
        z = nc.standardised_means(block, n_tokens[rows], prefix if params.clean else None, standardise)
        norms = np.linalg.norm(z, axis=-1)
        z *= (weights[None] / np.where(norms > 0, norms, 1.0)).astype(np.float32)[:, :, None]  # unit, weighted
        similarity = z.reshape(len(z), -1) @ target_unit.reshape(len(target_unit), -1).T
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :NEAREST]
        nearest_ids += [[target["ids"][t] for t in row] for row in top]
        nearest_sims += [np.take_along_axis(similarity, top, 1)[i].round(4).tolist() for i in range(len(top))]
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
    cost="the NAIT store + one prefix forward; two reads of the pool store per capability",
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
