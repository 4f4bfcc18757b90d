"""The one scorer the gradient methods share, on the gradient feature kind, and its dump.

LESS, BIDS and G2IS differ only after the features (methods.md section 8.2): one warmup, one store of
projected pool and target gradients per checkpoint, and one N x m influence matrix per capability
(:mod:`~nait_pipeline.lib.methods.gradients.less_math`). The ``less`` scorer writes it with LESS's capability
score; LESS ranks by the score, BIDS balances over the matrix's columns, and G2IS walks the combined
features on the ``gradient_graph``. The store's reader is :mod:`~nait_pipeline.lib.features.gradient_store`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.data.conversation import example_record
from nait_pipeline.lib.features.gradient_store import (
    GRADIENTS,
    GradientPool,
    TargetGradients,
    load_target_gradients,
    read_gradient_pool,
)
from nait_pipeline.lib.features.gradients import WarmupConfig
from nait_pipeline.lib.features.projection import check_same_projection
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import PoolView
from nait_pipeline.lib.methods.gradients import less_math
from nait_pipeline.lib.methods.base import MethodInputError, Scored, Scorer
from nait_pipeline.lib.methods.dump import Dump, torch_file
from nait_pipeline.lib.selection.policies import seeded_random

SCORER_NAME = "less"  # the scores and influence matrices LESS, BIDS and G2IS select from


def warmup_rows(ids: Sequence[str], config: WarmupConfig) -> list[int]:
    """Indices of the seeded warmup share of ``ids`` (hash order of seed and id, so it is stable when rows
    are added), in id order."""
    if not 0 < config.share <= 1:
        raise MethodInputError(f"warmup share must be in (0, 1], got {config.share}")
    k = min(len(ids), max(config.min_rows, math.ceil(config.share * len(ids))))
    return sorted(seeded_random(list(ids), k, config.seed), key=lambda i: ids[i])


@dataclass(frozen=True)
class LessScoreParams:
    """LESS's influence has no free parameters: checkpoints and their weights come from the warmup."""


def _score(pool: GradientPool, target: TargetGradients, params: LessScoreParams) -> Scored:
    check_same_projection(pool.metadata["projection"], target.projection, "pool and target gradients")
    if len(target.checkpoints) != len(pool.weights):
        raise MethodInputError("pool and target gradients cover different checkpoints")
    matrix = np.empty((len(pool.ids), len(target.ids)), np.float32)
    for positions, per_checkpoint in pool.blocks():  # shard by shard: only the [N, m] matrix is whole
        matrix[positions] = less_math.instance_matrix(per_checkpoint, target.checkpoints, pool.weights)
    score, best, names = less_math.subtask_scores(matrix, target.subtasks)
    return Scored(scores=score, matrix=matrix, matrix_ids=list(target.ids), unscored=pool.zero_gradient,
                  columns={"best_subtask": [names[b] for b in best]},
                  notes={"targets": len(target.ids), "subtasks": len(names),
                         "official_blocks": less_math.official_blocks(target.subtasks),
                         "checkpoint_weights": [round(w, 6) for w in pool.weights],
                         "zero_gradient_rows": int(pool.zero_gradient.sum())})


def dump_gradient_inputs(dump: Dump, layout: LakeLayout, params: dict, capabilities: list[str]) -> dict:
    """The gradient store as the official scripts read it, rows in ``pool_ids.json`` order:

    - ``less/ckpt<e>/pool.pt`` [N, dim] (Adam features) and ``less/ckpt<e>/<capability>.pt`` [m, dim] (SGD
      features, each subtask's rows contiguous): LESS's ``matching.py`` with
      ``--gradient_path less/ckpt{}/{}.pt --validation_gradient_path less/ckpt{}/{}.pt --train_file_names pool``;
    - ``train.jsonl``: the pool rows for ``--train_files`` / ``--train_data_dir``;
    - the influence matrices (``score_matrix_<capability>.npy``) BIDS starts from.
    Returns the commands and the conditions under which they reproduce the subset."""
    pool, _ = read_gradient_pool(layout)
    epochs = [c["epoch"] for c in json.loads(layout.warmup_record.read_text())["checkpoints"]]
    dump.json("pool_ids.json", pool.ids, "pool example ids; row i of every pool array and of train.jsonl")
    rows = PoolView.open(layout).rows(pool.ids)
    dump.jsonl("train.jsonl", [{"id": i, **example_record(r)} for i, r in zip(pool.ids, rows)],
               "the pool rows (triples, or `messages` for conversations), pool_ids.json order")
    dump.array("pool_zero_gradient.npy", pool.zero_gradient, "[N] bool: rows without a response token (never picked)")
    for number, epoch in enumerate(epochs):
        torch_file(dump, f"less/ckpt{epoch}/pool.pt", pool.checkpoint(number),
                   f"pool Adam gradient features at checkpoint {epoch}")
    subtasks = {}
    for capability in capabilities:
        target, _ = load_target_gradients(layout, capability)
        subtasks[capability] = {"n_subtasks": len(less_math.subtask_order(target.subtasks)),
                                "official_blocks": less_math.official_blocks(target.subtasks)}
        for epoch, vectors in zip(epochs, target.checkpoints):
            torch_file(dump, f"less/ckpt{epoch}/{capability}.pt", vectors,
                       f"{capability} target SGD gradient features at checkpoint {epoch}, subtasks contiguous")
        dump.json(f"target_ids_{capability}.json", target.ids, f"{capability} target ids, row order of its files")
        dump.json(f"target_subtasks_{capability}.json", target.subtasks, f"the subtask of each {capability} target row")
        with layout.score_matrix(SCORER_NAME, capability).open("rb") as handle, np.load(handle) as stored:
            dump.array(f"score_matrix_{capability}.npy", stored["matrix"],
                       f"[N, m] LESS influence of each pool row on each {capability} target row (BIDS's input)")
    weights = " ".join(f"{w:.10g}" for w in pool.weights)
    notes = {
        "row_order": "every pool file's rows are pool_ids.json; official indices are row numbers in it",
        "less_matching": (f"python -m less.data_selection.matching --gradient_path 'less/ckpt{{}}/{{}}.pt' "
                          f"--train_file_names pool --ckpts {' '.join(map(str, epochs))} --checkpoint_weights "
                          f"{weights} --target_task_names {' '.join(capabilities)} --validation_gradient_path "
                          "'less/ckpt{}/{}.pt' --output_path selected_data; then write_selected_data.py "
                          "--train_file_names pool --train_files train.jsonl --target_task_names <capability> "
                          f"--percentage {params.get('budget_ratio')}"),
        "less_subtasks": subtasks,
        "less_conditions": "matching.py's N_SUBTASKS needs each capability name with its n_subtasks (above); its "
                           "reshape reproduces our per-subtask means only where official_blocks is true. The 'all' "
                           "subset is the max over capabilities of their scores.",
        "zero_gradient_rows": int(pool.zero_gradient.sum()),
    }
    return notes


SCORER = Scorer(
    name=SCORER_NAME,
    description="LESS influence of every pool row on the capability's target rows: the learning-rate-weighted "
                "cosine of Adam-preconditioned pool gradients and SGD target gradients over the warmup "
                "checkpoints (the [N, m] matrix is kept), then the mean per subtask and the max over subtasks.",
    params=LessScoreParams, kind=GRADIENTS, score=_score, load_target=load_target_gradients,
    dump_inputs=dump_gradient_inputs,
)
