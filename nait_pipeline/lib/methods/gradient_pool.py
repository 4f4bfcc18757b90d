"""The gradient store as the gradient methods read it, and the one scorer they share.

LESS, BIDS and G2IS differ only after the features (methods.md section 8.2): one warmup, one store of
projected pool and target gradients per checkpoint, and one N x m influence matrix per capability
(:mod:`~nait_pipeline.lib.methods.less_math`). The ``less`` scorer writes it with LESS's capability
score; LESS ranks by the score, BIDS balances over the matrix's columns, and G2IS walks the combined
features (read here too) on the ``gradient_graph``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from nait_pipeline.lib.features.feature_store import stale_shards
from nait_pipeline.lib.features.gradients import WarmupConfig, read_gradient_stores
from nait_pipeline.lib.features.projection import check_same_projection
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.methods import less_math
from nait_pipeline.lib.methods.base import MethodInputError, Scored, Scorer
from nait_pipeline.lib.selection.policies import seeded_random


def read_warmup(layout: LakeLayout) -> dict:
    if not layout.warmup_record.exists():
        raise FileNotFoundError(f"{layout.warmup_record} is missing: materialize warmup_adapter first")
    return json.loads(layout.warmup_record.read_text())


def warmup_rows(ids: Sequence[str], config: WarmupConfig) -> list[int]:
    """Indices of the seeded warmup share of ``ids`` (hash order of seed and id, so it is stable when rows
    are added), in id order."""
    if not 0 < config.share <= 1:
        raise MethodInputError(f"warmup share must be in (0, 1], got {config.share}")
    k = min(len(ids), max(config.min_rows, math.ceil(config.share * len(ids))))
    return sorted(seeded_random(list(ids), k, config.seed), key=lambda i: ids[i])


@dataclass
class GradientPool:
    ids: list[str]
    checkpoints: list[np.ndarray]  # per checkpoint [N, dim] unit rows
    weights: list[float]
    zero_gradient: np.ndarray  # [N] bool
    metadata: dict

    def combined(self) -> np.ndarray:
        return less_math.combined_features(self.checkpoints, self.weights)


def read_gradient_pool(layout: LakeLayout) -> tuple[GradientPool, str]:
    """Every kept shard's pool gradients at every warmup checkpoint, checked to be of the current pool
    rows and of the current warmup adapter."""
    warmup = read_warmup(layout)
    pool_version = read_metadata(layout.pool_examples)["pool_version"]
    shards = layout.kept_shards()
    per_checkpoint, versions = [], []
    for checkpoint in warmup["checkpoints"]:
        epoch = checkpoint["epoch"]
        stale = stale_shards(layout.pool_examples, lambda shard, e=epoch: layout.pool_gradients(shard, e))
        if stale:
            raise MethodInputError(f"pool_gradients is missing or out of date for shard(s) {stale[:5]} at checkpoint "
                                   f"{epoch}: materialize pool_gradients for them")
        stored = read_gradient_stores([layout.pool_gradients(shard, epoch) for shard in shards])
        if stored.metadata["adapter_version"] != warmup["adapter_version"]:
            raise MethodInputError(f"pool_gradients at checkpoint {epoch} were computed with another warmup adapter: "
                                   "re-materialize pool_gradients")
        per_checkpoint.append(stored)
        versions.append(sha256_json([read_metadata(layout.pool_gradients(s, epoch))["store_version"] for s in shards]))
    first = per_checkpoint[0]
    for stored in per_checkpoint[1:]:
        if stored.ids != first.ids:
            raise MethodInputError("pool_gradients of different checkpoints cover different rows")
        check_same_projection(stored.metadata["projection"], first.metadata["projection"], "pool_gradients")
    # Rows in id order, as every scorer writes them.
    order = np.argsort(np.asarray(first.ids, dtype=object), kind="stable")
    zero = np.zeros(len(first.ids), bool)
    for stored in per_checkpoint:
        zero |= stored.zero_gradient
    return GradientPool(
        ids=[first.ids[i] for i in order], checkpoints=[s.vectors[order] for s in per_checkpoint],
        weights=list(warmup["weights"]), zero_gradient=zero[order],
        metadata={"model_id": first.metadata["model_id"], "template_hash": first.metadata["template_hash"],
                  "projection": first.metadata["projection"], "adapter_version": warmup["adapter_version"],
                  "features_version": sha256_json(versions)[:16]},
    ), pool_version


@dataclass
class TargetGradients:
    ids: list[str]
    subtasks: list[str]
    checkpoints: list[np.ndarray]
    projection: dict

    def combined(self, weights) -> np.ndarray:
        return less_math.combined_features(self.checkpoints, weights)


def load_target_gradients(layout: LakeLayout, capability: str, params=None) -> tuple[TargetGradients, dict]:
    """A capability's target gradients at every checkpoint, columns grouped by subtask (the official
    contiguous layout when the subtasks have equal sizes)."""
    warmup = read_warmup(layout)
    paths = [layout.target_gradients(capability, c["epoch"]) for c in warmup["checkpoints"]]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} is missing: materialize target_gradients[{capability}] first")
    stored = [read_gradient_stores([p]) for p in paths]
    for s in stored:
        if s.metadata["adapter_version"] != warmup["adapter_version"]:
            raise MethodInputError(f"target_gradients[{capability}] were computed with another warmup adapter: "
                                   "re-materialize them")
    task_of = dict(zip(*(pq.read_table(layout.target_selection(capability), columns=["example_id", "task"])
                         .column(c).to_pylist() for c in ("example_id", "task"))))
    ids = stored[0].ids
    order = sorted(range(len(ids)), key=lambda i: (task_of.get(ids[i], capability), ids[i]))
    meta = {"model_id": stored[0].metadata["model_id"],
            "version": sha256_json([read_metadata(p)["store_version"] for p in paths])[:16]}
    return TargetGradients(ids=[ids[i] for i in order], subtasks=[task_of.get(ids[i], capability) for i in order],
                           checkpoints=[s.vectors[order] for s in stored],
                           projection=stored[0].metadata["projection"]), meta


@dataclass(frozen=True)
class LessScoreParams:
    """LESS's influence has no free parameters: checkpoints and their weights come from the warmup."""


def _score(pool: GradientPool, target: TargetGradients, params: LessScoreParams) -> Scored:
    check_same_projection(pool.metadata["projection"], target.projection, "pool and target gradients")
    if len(target.checkpoints) != len(pool.checkpoints):
        raise MethodInputError("pool and target gradients cover different checkpoints")
    matrix = less_math.instance_matrix(pool.checkpoints, target.checkpoints, pool.weights)
    score, best, names = less_math.subtask_scores(matrix, target.subtasks)
    return Scored(scores=score, matrix=matrix, matrix_ids=list(target.ids), unscored=pool.zero_gradient,
                  columns={"best_subtask": [names[b] for b in best]},
                  notes={"targets": len(target.ids), "subtasks": len(names),
                         "official_blocks": less_math.official_blocks(target.subtasks),
                         "checkpoint_weights": [round(w, 6) for w in pool.weights],
                         "zero_gradient_rows": int(pool.zero_gradient.sum())})


SCORER = Scorer(
    name="less",
    description="LESS influence of every pool row on the capability's target rows: the learning-rate-weighted "
                "cosine of Adam-preconditioned pool gradients and SGD target gradients over the warmup "
                "checkpoints (the [N, m] matrix is kept), then the mean per subtask and the max over subtasks.",
    params=LessScoreParams, pool_vectors=(), pool_scalars=(), score=_score,
    load_target=load_target_gradients, target_assets=("target_gradients",),
    read_pool=read_gradient_pool, feature_assets=("warmup_adapter", "pool_gradients"), on_demand=True,
)
